"""The keras-bn command line, run as a subprocess like a user runs it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.walk import is_batch_norm
from conftest import randomize_bn

L = tf_keras.layers


def keras_bn_cli(*args, cwd=None):
    """Runs `keras-bn ARGS` with this interpreter; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    inputs = tf_keras.Input((8, 8, 3))
    x = L.ReLU()(keras_bn.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="conv1")(inputs)))
    x = keras_bn.BatchRenormalization(name="brn2")(L.Conv2D(4, 3, name="conv2")(x))
    x = L.Dense(3, name="head")(L.Flatten()(L.ReLU()(x)))
    path = tmp_path_factory.mktemp("models") / "model.keras"
    randomize_bn(tf_keras.Model(inputs, x)).save(path)
    return path


def test_help_has_examples_for_every_command():
    result = keras_bn_cli("--help")
    assert result.returncode == 0 and "examples:" in result.stdout
    for command in ("fold", "export", "inspect", "demo"):
        sub = keras_bn_cli(command, "--help")
        assert sub.returncode == 0 and f"keras-bn {command}" in sub.stdout.split("examples:")[1]


def test_fold_writes_a_folded_model(model_file, tmp_path):
    out = tmp_path / "folded.keras"
    result = keras_bn_cli("fold", model_file, out)
    assert result.returncode == 0, result.stderr
    assert "2 folded, 0 kept" in result.stdout and "[3/3] save" in result.stderr
    folded = tf_keras.models.load_model(out)
    assert not any(map(is_batch_norm, folded.layers))
    assert [p for p in os.listdir(tmp_path)] == ["folded.keras"]


def test_export_onnx_and_tflite(model_file, tmp_path):
    result = keras_bn_cli("export", model_file, "--onnx", tmp_path / "m.onnx",
                          "--tflite", tmp_path / "m.tflite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.tflite").exists()
    assert "onnx" in result.stdout and "tflite" in result.stdout
    assert "max abs error" in result.stdout


def test_export_int8_with_calibration_data(model_file, tmp_path):
    np.save(tmp_path / "data.npy", np.random.RandomState(0).rand(32, 8, 8, 3).astype("f4"))
    result = keras_bn_cli("export", model_file, "--tflite", tmp_path / "q.tflite",
                          "--int8", tmp_path / "data.npy")
    assert result.returncode == 0, result.stderr
    assert "tflite-int8" in result.stdout


def test_inspect_prints_the_bn_table(model_file):
    result = keras_bn_cli("inspect", model_file)
    assert result.returncode == 0, result.stderr
    assert "bn1" in result.stdout and "brn2" in result.stdout
    assert "conv1 (after)" in result.stdout and "momentum" in result.stdout


@pytest.mark.parametrize("args,message", [
    (("fold", "missing.keras", "out.keras"), "missing.keras: no such file"),
    (("fold", "{model}", "out.onnx"), "OUT must end in .keras or .h5"),
    (("export", "{model}"), "nothing to export"),
    (("export", "{model}", "--onnx", "m.onnx", "--int8", "d.npy"), "--int8 quantizes the TFLite"),
    (("export", "{model}", "--tflite", "m.tflite", "--int8", "missing.npy"),
     "missing.npy: cannot read"),
    (("inspect", "not_a_model.txt"), "not a tf-keras model file"),
])
def test_bad_input_exits_2_with_one_line(model_file, tmp_path, args, message):
    (tmp_path / "not_a_model.txt").write_text("hello")
    args = [a.format(model=model_file) for a in args]
    result = keras_bn_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-bn")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.keras").exists()


def test_lambda_layer_needs_unsafe(tmp_path):
    inputs = tf_keras.Input((4,))
    x = L.Lambda(lambda t: t * 2.0, name="double")(L.BatchNormalization()(L.Dense(3)(inputs)))
    path = tmp_path / "lambda.keras"
    tf_keras.Model(inputs, x).save(path)
    refused = keras_bn_cli("inspect", path)
    assert refused.returncode == 2 and "layer 'double': a Lambda layer" in refused.stderr
    assert "--unsafe" in refused.stderr and "Traceback" not in refused.stderr
    allowed = keras_bn_cli("inspect", path, "--unsafe")
    assert allowed.returncode == 0, allowed.stderr
    # The user's choice carries into the fold's rebuild of the model (and only there).
    folded = keras_bn_cli("fold", path, tmp_path / "folded.keras", "--unsafe")
    assert folded.returncode == 0, folded.stderr
    model = tf_keras.models.load_model(tmp_path / "folded.keras", safe_mode=False)
    assert not any(map(is_batch_norm, model.layers))


def test_lambda_in_h5_is_refused_too(tmp_path):
    inputs = tf_keras.Input((4,))
    path = tmp_path / "lambda.h5"
    tf_keras.Model(inputs, L.Lambda(lambda t: t + 1.0, name="plus")(inputs)).save(path)
    refused = keras_bn_cli("fold", path, tmp_path / "o.keras")
    assert refused.returncode == 2 and "'plus'" in refused.stderr


def test_demo_runs_and_prints_the_table(tmp_path):
    result = keras_bn_cli("demo", "--epochs", "2", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    for fmt in ("keras (folded)", "onnx", "tflite ", "tflite-int8"):
        assert fmt in result.stdout
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    assert sorted(os.listdir(tmp_path / "demo")) == [
        "demo.png", "digits.onnx", "digits.tflite", "digits_int8.tflite"]
