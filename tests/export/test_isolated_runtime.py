"""Exported files run in a child process: a runtime that dies is a verification failure
naming the file, never the death of the caller."""

import os
import signal

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn import export
from keras_bn.errors import VerificationError
from keras_bn.export.isolated import IsolatedRuntime


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("isolated")
    inputs = tf_keras.Input((6,), name="x")
    model = tf_keras.Model(inputs, keras_bn.BatchNormalization()(tf_keras.layers.Dense(3)(inputs)))
    export.to_tflite(model, folder / "m.tflite", latency_batch=None)
    export.to_onnx(model, folder / "m.onnx", latency_batch=None)
    return folder


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_outputs_match_the_runtime_in_process(files, kind):
    feed = {"x": np.random.default_rng(0).normal(size=(5, 6)).astype("float32")}
    with IsolatedRuntime(kind, files / f"m.{kind}") as runtime:
        got = runtime(feed)
        assert runtime.seconds > 0 and [name for name, _ in runtime.inputs] == ["x"]
    if kind == "onnx":
        import onnxruntime

        expected = onnxruntime.InferenceSession(str(files / "m.onnx")).run(None, feed)[0]
    else:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(files / "m.tflite")).get_signature_runner()
        expected = next(iter(runner(**feed).values()))
    np.testing.assert_array_equal(next(iter(got.values())), expected)


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_a_runtime_killed_by_a_signal_is_a_verification_error(files, kind):
    runtime = IsolatedRuntime(kind, files / f"m.{kind}")
    os.kill(runtime._child.pid, signal.SIGABRT)  # what LiteRT does when it aborts
    with pytest.raises(VerificationError, match=rf"crashed running .*m\.{kind} "
                                                r"\(killed by SIGABRT\)"):
        runtime({"x": np.zeros((1, 6), "float32")})
    runtime.close()


def test_a_file_the_runtime_cannot_load_is_a_verification_error(tmp_path):
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(VerificationError, match="LiteRT failed loading .*bad.tflite"):
        IsolatedRuntime("tflite", tmp_path / "bad.tflite")
