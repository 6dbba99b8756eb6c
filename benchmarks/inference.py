"""Inference latency of unfolded, folded and BN-free-twin models in three runtimes."""

import os

import numpy as np
import tensorflow as tf

import keras_bn
from keras_bn import export
from keras_bn.folding import without_batch_norm

VARIANTS = ("unfolded", "folded", "twin", "twin, control")


def variants(model):
    """name -> model: the original, its fold, the same architecture without BN, and a
    second copy of that twin (the control row: identical work, so its ratio is noise)."""
    twin = without_batch_norm(model)
    return {"unfolded": model, "folded": keras_bn.fold(model), "twin": twin,
            "twin, control": without_batch_norm(model)}


def keras_runner(model, x):
    call = tf.function(lambda t: model(t, training=False))
    x = tf.constant(x)
    return lambda: call(x).numpy()


def onnx_runner(model, x, path):
    import onnxruntime

    export.to_onnx(model, path, fold=False, verify=False, latency_batch=None)
    options = onnxruntime.SessionOptions()
    # Idle worker threads spin by default and would bill their CPU to whichever session
    # runs next in the interleaved order.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def tflite_runner(model, x, path):
    from ai_edge_litert.interpreter import Interpreter

    export.to_tflite(model, path, fold=False, verify=False, latency_batch=None)
    interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]["index"]

    def run():
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return run


RUNTIMES = {"keras": keras_runner, "onnxruntime": onnx_runner, "litert": tflite_runner}
SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}


def contenders(models, runtime, batch, workdir):
    """`"<runtime> <variant>" -> run` for one runtime and batch size."""
    shape = (batch,) + tuple(models["unfolded"].inputs[0].shape[1:])
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    made = {}
    for name in VARIANTS:
        make = RUNTIMES[runtime]
        args = (models[name], x) if runtime == "keras" else (
            models[name], x,
            os.path.join(workdir, name.replace(", ", "_") + SUFFIX[runtime]))
        made[f"{runtime} {name}"] = make(*args)
    return made
