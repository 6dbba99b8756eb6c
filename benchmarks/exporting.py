"""Export and fold time for one model: keras_bn.export.to_onnx against tf2onnx alone.

Every timed call gets a model object of its own, loaded before the clock starts: a user
converts a model once, and converting the same object again is faster (its traced
functions are reused), which would flatter whichever contender came second.
"""

import os
import tracemalloc

import tf2onnx

import keras_bn
from keras_bn.verification import check_outputs, verification_batches
from keras_bn.export import to_onnx
from keras_bn.export._prepare import input_signature


def fresh_copies(model, count):
    """`count` independent copies of `model` (same config and weights)."""
    weights = model.get_weights()
    copies = []
    for _ in range(count):
        copy = type(model).from_config(model.get_config())
        copy.set_weights(weights)
        copies.append(copy)
    return copies


def contenders(model, workdir, calls):
    """name -> run: our export (fold + convert, no verification), tf2onnx on the unfolded
    model, and the fold alone; each run takes the next of `calls` fresh copies."""
    path = os.path.join(workdir, "export.onnx")
    signature = input_signature(model)
    pools = {name: fresh_copies(model, calls) for name in ("ours", "tf2onnx", "fold")}
    return {
        "keras_bn to_onnx (fold + convert)": lambda: to_onnx(
            pools["ours"].pop(), path, verify=False, latency_batch=None),
        "tf2onnx from_keras (unfolded)": lambda: tf2onnx.convert.from_keras(
            pools["tf2onnx"].pop(), input_signature=signature),
        "keras_bn fold": lambda: keras_bn.fold(pools["fold"].pop(), verify=False),
    }


def verification_seconds(model, workdir):
    """Seconds of the parity check `to_onnx` runs after writing the file (timed apart)."""
    import time

    import onnxruntime

    path = os.path.join(workdir, "verify.onnx")
    to_onnx(model, path, verify=False, latency_batch=None)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    run = lambda inputs: session.run(None, dict(zip(names, inputs)))
    start = time.perf_counter()
    batches, _ = verification_batches(model, None)
    check_outputs(model, run, batches, 1e-4, 1e-5, "benchmark")  # the noise included
    return time.perf_counter() - start


def fold_peak_memory_mib(model):
    """Peak Python-heap allocation (tracemalloc: numpy arrays included) of one fold."""
    tracemalloc.start()
    try:
        keras_bn.fold(model, verify=False)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
