"""Synchronized BN across tf.distribute replicas, and the Keras 3 layers under Keras 3's
distribution API on JAX, equal one device on the global batch."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import assert_close

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_bn.py")
# float32 sums over 64 elements per replica, then across replicas in another order.
RTOL = 1e-5


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _parse(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def _run(mode, layer, sync):
    done = subprocess.run([sys.executable, SCRIPT, mode, layer, sync], capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return _parse(done.stdout)


def _assert_same(got, want):
    for step, (g, w) in enumerate(zip(got["steps"], want["steps"])):
        for key in ("y", "dx", "dgamma", "dbeta"):
            assert_close(g[key], w[key], RTOL, f"step {step} {key}")
    for key in ("moving_mean", "moving_variance"):
        assert_close(got[key], want[key], RTOL, key)


@pytest.mark.parametrize("layer", ["bn", "brn"])
def test_mirrored_sync_equals_single_device_on_the_global_batch(layer):
    _assert_same(_run("mirrored", layer, "sync"), _run("single", layer, "sync"))


def test_mirrored_without_sync_uses_local_statistics():
    local, single = _run("mirrored", "bn", "local"), _run("single", "bn", "local")
    difference = np.max(np.abs(np.array(local["steps"][0]["y"]) -
                               np.array(single["steps"][0]["y"])))
    assert difference > 0.1  # the halves differ in distribution, so their statistics do
    # Read across replicas the moving means average to the global mean (equal halves), but
    # the average of the local variances misses the spread between the halves.
    assert_close(local["moving_mean"], single["moving_mean"], RTOL)
    assert np.all(np.array(local["moving_variance"]) < np.array(single["moving_variance"]))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.parametrize("layer", ["bn", "brn"])
def test_multi_worker_sync_equals_single_device(layer):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    try:
        for index in range(2):
            config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            processes.append(subprocess.Popen(
                [sys.executable, SCRIPT, "worker", layer, "sync"], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=_env(TF_CONFIG=json.dumps(config))))
        deadline = time.monotonic() + 240
        outputs = [p.communicate(timeout=max(1, deadline - time.monotonic()))
                   for p in processes]
    finally:
        for p in processes:  # always cleaned up, also on timeout or failure
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    first, second = (_parse(out) for out, _ in outputs)
    merged = {"steps": [], "moving_mean": first["moving_mean"],
              "moving_variance": first["moving_variance"]}
    for a, b in zip(first["steps"], second["steps"]):
        merged["steps"].append({"y": a["y"] + b["y"], "dx": a["dx"] + b["dx"],
                                "dgamma": a["dgamma"], "dbeta": a["dbeta"]})
        assert_close(a["dgamma"], b["dgamma"], 0, "both workers reduce the same gradient")
    assert_close(first["moving_variance"], second["moving_variance"], 0)
    _assert_same(merged, _run("single", layer, "sync"))


def test_keras3_data_parallel_on_jax_equals_one_device(tmp_path):
    """`keras.distribution.DataParallel` over 4 virtual CPU devices (JAX): outputs,
    gradients (one SGD step with learning rate 1) and moving statistics as on one
    device, so the statistics are the global batch's; recalibrate runs under it and is
    exact."""
    script = os.path.join(os.path.dirname(SCRIPT), "data_parallel.py")
    env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = tmp_path / "data_parallel.json"
    run = subprocess.run([sys.executable, "-W", "ignore", script, str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "'batch': 4" in result.pop("variables_sharded")
    assert all(error <= RTOL for error in result.values()), result
