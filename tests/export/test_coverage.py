"""What tf2onnx cannot convert by itself, exported anyway: function calls TensorFlow keeps
(tf-keras's grouped convolution, a custom layer's compiled functions, nested), the exact
GELU's Erfc, and outputs returned as a dict or a nested structure, named in both files."""

import numpy as np
import onnx
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn import export
from helpers import randomize_bn

L = tf_keras.layers
FORMATS = {"onnx": (export.to_onnx, {}), "tflite": (export.to_tflite, {}),
           "float16": (export.to_tflite, {"quantize": "float16"})}


def _exported(model, tmp_path, fmt):
    exporter, options = FORMATS[fmt]
    suffix = ".onnx" if fmt == "onnx" else ".tflite"
    return exporter(model, tmp_path / f"{fmt}{suffix}", **options)


class CompiledScale(L.Layer):
    """A custom layer whose call is two nested compiled functions reading its variable:
    its graph holds a StatefulPartitionedCall inside a StatefulPartitionedCall, both
    marked not to be inlined (jit_compile), like keras-hub's MobileNetV3 blocks."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer=tf_keras.initializers.RandomUniform(1, 2))

    @tf.function(jit_compile=True)
    def _inner(self, x):
        return x * self.scale

    @tf.function(jit_compile=True)
    def _outer(self, x):
        return self._inner(x) + 1.0

    def call(self, x):
        return self._outer(x)


def _calls_model():
    inputs = tf_keras.Input((8, 8, 4))
    x = keras_bn.BatchNormalization()(L.Conv2D(8, 3, groups=2, name="grouped")(inputs))
    x = CompiledScale(name="compiled")(x)
    x = L.Dense(3)(L.GlobalAveragePooling2D()(x))
    return randomize_bn(tf_keras.Model(inputs, x))


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_function_calls_tensorflow_keeps_are_inlined(tmp_path, fmt):
    """The grouped convolution (a jit-compiled tf.function in tf-keras) and a custom
    layer's nested compiled functions convert to plain ops; the files match Keras
    (each exporter's float32 tolerance, 1e-4 of the output scale)."""
    model = _calls_model()
    result = _exported(model, tmp_path, fmt)
    assert result.max_error <= result.tolerance, result
    assert not {"PartitionedCall", "StatefulPartitionedCall"} & set(result.op_counts)
    assert result.fold_plan.folded and not result.fold_plan.kept
    if fmt == "onnx":
        conv = [n for n in onnx.load(result.path).graph.node if n.op_type == "Conv"]
        assert [a.i for n in conv for a in n.attribute if a.name == "group"] == [2]


def test_exact_gelu_converts_to_onnx(tmp_path):
    """tf.nn.gelu(approximate=False) traces to Erfc, which ONNX lacks: it becomes 1 - Erf,
    within the float32 tolerance; the tanh approximation is a different function and
    would miss it by ~1e-3 on these inputs."""
    inputs = tf_keras.Input((16,))
    x = L.Dense(32, activation=tf_keras.activations.gelu)(inputs)  # exact by default
    x = L.Dense(4)(keras_bn.BatchNormalization()(L.Dense(32)(x)))
    model = randomize_bn(tf_keras.Model(inputs, x))
    samples = 3 * np.random.RandomState(2).randn(64, 16).astype("float32")  # erfc's tails
    result = export.to_onnx(model, tmp_path / "gelu.onnx", samples=samples)
    assert result.op_counts.get("Erf") == 1 and "Erfc" not in result.op_counts
    assert result.max_error <= result.tolerance


def _dict_model(keras, bn):
    """Outputs as a dict with a nested list, keys not in sorted order."""
    inputs = keras.Input((6,), name="features")
    x = bn.BatchNormalization()(keras.layers.Dense(8, name="trunk")(inputs))
    zeta = keras.layers.Dense(2, name="zeta_head")(x)
    alpha = keras.layers.Dense(3, name="alpha_head")(x)
    pair = [keras.layers.Dense(1, name="first")(x), keras.layers.Dense(4, name="second")(x)]
    model = keras.Model(inputs, {"zeta": zeta, "alpha": alpha, "pair": pair})
    return randomize_bn(model) if keras is tf_keras else model


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "float16"])
def test_dict_outputs_keep_their_names(flavour, tmp_path, fmt):
    """A dict output's keys (nested: key and position) name the file's outputs, each
    carrying its own tensor (the shapes differ), in ONNX, TFLite and float16 TFLite."""
    model = _dict_model(*flavour)
    result = _exported(model, tmp_path, fmt)
    want = {"alpha": 3, "pair_0": 1, "pair_1": 4, "zeta": 2}
    if fmt == "onnx":
        graph = onnx.load(result.path).graph
        got = {o.name: o.type.tensor_type.shape.dim[-1].dim_value for o in graph.output}
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=result.path)
        runner = interpreter.get_signature_runner()
        details = runner.get_output_details()
        got = {name: int(d["shape"][-1]) for name, d in details.items()}
    assert got == want
    if fmt != "float16":
        assert result.max_error <= result.tolerance, result
