"""Integer files of a quantization-aware model (keras_bn.quantization.quantize_aware),
written from its learned weights and ranges without calibration data: run in LiteRT and
onnxruntime, they compute the model's simulated forward within one step of the output's
int8 grid, on the very grids the model learned; options that would change what was
trained are one line. Keras 3 on JAX too (a subprocess)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.export import to_onnx, to_tflite
from keras_bn.quantization import QuantizationOptions, quantize_aware
from keras_bn.quantization.fake_quant import activation_grid
from keras_bn.quantization.inference import inference_model, state

FLAVOURS = {"keras3": (keras, keras.layers.BatchNormalization),
            "tf_keras": (tf_keras, keras_bn.BatchNormalization)}
EXPORTS = {"tflite": (to_tflite, ".tflite"), "onnx": (to_onnx, ".onnx")}


def _trained(flavour, head=None):
    """A small residual net (conv -> BN -> ReLU, separable -> BN, an Add, a max pool,
    dense with the `head` activation: logits or "softmax") made quantization-aware on
    64 rows and trained a few steps, so that its weights and ranges are the QAT model's
    own, not the float model's. Returns `(QAT model, rows, float model)`."""
    k, bn = FLAVOURS[flavour]
    k.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    inputs = k.Input((12, 12, 3))
    x = k.layers.ReLU()(bn()(k.layers.Conv2D(8, 3, padding="same")(inputs)))
    y = bn()(k.layers.SeparableConv2D(8, 3, padding="same")(x))
    x = k.layers.ReLU()(k.layers.Add()([x, y]))
    x = k.layers.Flatten()(k.layers.MaxPooling2D()(x))
    outputs = k.layers.Dense(4, activation=head)(x)
    model = k.Model(inputs, outputs)
    data = rs.uniform(-1, 1, (64, 12, 12, 3)).astype("float32")
    labels = rs.randint(0, 4, 64)
    aware = quantize_aware(model, data, freeze_after=4)
    loss = k.losses.SparseCategoricalCrossentropy(from_logits=head is None)
    aware.compile("adam", loss)
    aware.fit(data, labels, batch_size=16, epochs=2, verbose=0)
    return aware, data, model


@pytest.mark.parametrize("fmt", EXPORTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int8_files_compute_what_was_trained(flavour, fmt, tmp_path):
    aware, data, _ = _trained(flavour)
    assert state(aware).learned
    export_to, suffix = EXPORTS[fmt]
    result = export_to(aware, tmp_path / f"q{suffix}", quantize="int8", samples=data)
    # The same grids, integer kernels: a value the simulation puts within a hair of the
    # middle of two steps may land on the other one (the exporter checks that 99 % of
    # the values are within a step, as a flip moves what is computed from it too; this
    # seed's nets stay within one everywhere).
    assert result.steps_off is not None and result.steps_off <= 1.0 + 1e-3, result
    assert result.steps_within == 1.0
    assert result.evaluation[0].agreement >= 0.95, result.evaluation
    if fmt == "tflite":
        _assert_integer_tflite(result.path, aware)
    else:
        _assert_integer_onnx(result.path)


def test_a_strided_pointwise_shortcut_is_one_strided_conv_in_the_file(tmp_path):
    """The subsampling a QAT model trains a strided 1x1 conv as (oneDNN's crash; here a
    downsampling shortcut conv -> BN, fused unstrided) is not in the file: one strided
    CONV_2D, no MAX_POOL_2D, integer throughout, and the exporter's check that the file
    is the simulated forward within a step on 95 % of the values passes."""
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    shortcut = keras.layers.BatchNormalization()(
        keras.layers.Conv2D(8, 1, strides=2, use_bias=False, name="shortcut")(x))
    main = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, strides=2,
                                                                 padding="same")(x))
    x = keras.layers.Add()([shortcut, keras.layers.ReLU()(main)])
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(x)))
    data = rs.uniform(-1, 1, (64, 12, 12, 3)).astype("float32")
    aware = quantize_aware(model, data, freeze_after=4)
    assert type(aware.get_layer("shortcut_subsample")).__name__ == "MaxPooling2D"
    aware.compile("adam", "mse")
    aware.fit(data, rs.randn(64, 4), batch_size=16, epochs=2, verbose=0)
    result = to_tflite(aware, tmp_path / "q.tflite", quantize="int8", samples=data)
    assert result.steps_within >= 0.95, result
    ops = [op["op_name"] for op in Interpreter(model_path=result.path)._get_ops_details()]
    assert "MAX_POOL_2D" not in ops and ops.count("CONV_2D") == 3, ops
    _assert_integer_tflite(result.path, aware)


def _plain_net(k, rs):
    """A net whose every weight layer has no BN: conv (ReLU fused), conv, dense (ReLU6
    fused), dense logits; trained a few epochs in float so its weights are a trained
    net's (wider per-channel ranges than at initialization)."""
    inputs = k.Input((10, 10, 2))
    x = k.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = k.layers.Conv2D(6, 3, strides=2, name="conv_linear_out")(x)
    x = k.layers.Flatten()(k.layers.ReLU()(x))
    x = k.layers.Dense(16, activation="relu6", name="hidden")(x)
    model = k.Model(inputs, k.layers.Dense(3, name="logits")(x))
    data = rs.uniform(-1, 1, (128, 10, 10, 2)).astype("float32")
    labels = (data[:, :5, :, 0].mean((1, 2)) > data[:, 5:, :, 1].mean((1, 2))).astype(int)
    labels += (data[:, :, :, 0].std((1, 2)) > 0.58).astype(int)
    model.compile(k.optimizers.Adam(0.01), k.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(data, labels, batch_size=32, epochs=15, verbose=0)
    return model, data, labels


@pytest.mark.parametrize("fmt", EXPORTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_layers_without_a_bn_train_on_the_weights_the_file_holds(flavour, fmt, tmp_path):
    """Every conv and dense layer without a BN is a QuantizedConvBN without one (its
    fused ReLU/ReLU6 an Activation after it), so the QAT model computes the int8
    kernels the file holds and the file equals its simulated forward within a step
    everywhere. On the code before (float weights there), 1.6-12.5 % of these nets'
    output values came out 2-3 steps off."""
    k, _ = FLAVOURS[flavour]
    k.utils.set_random_seed(1)
    rs = np.random.RandomState(1)
    model, data, labels = _plain_net(k, rs)
    aware, plan = quantize_aware(model, data[:64], return_plan=True)
    # a fused activation became an Activation named as the layer; the layer is "_linear"
    assert sorted(plan.plain) == ["conv_linear", "conv_linear_out", "hidden_linear",
                                  "logits"], plan
    assert {type(aware.get_layer(n)).__name__ for n in plan.plain} == {"QuantizedConvBN"}
    aware.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    aware.fit(data, labels, batch_size=32, epochs=2, verbose=0)
    lowered = inference_model(aware)
    for name in plan.plain:  # per output channel on a grid of 255 steps
        kernel = lowered.get_layer(name).get_weights()[0]
        step = np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1))) / 127
        np.testing.assert_allclose(kernel / step, np.round(kernel / step), atol=1e-3)
    export_to, suffix = EXPORTS[fmt]
    result = export_to(aware, tmp_path / f"q{suffix}", quantize="int8", samples=data)
    assert result.steps_within == 1.0 and result.steps_off <= 1.0 + 1e-3, result


def _assert_integer_tflite(path, aware):
    """No op but the input's QUANTIZE and the output's DEQUANTIZE writes a float tensor
    (int8 activations; int32 shapes), and each learned range is the scale and zero point of a tensor of the
    file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        types = {details[i]["dtype"].__name__ for i in op["outputs"]}
        assert not types & {"float32", "float16"}, (op["op_name"], types)
    grids = [(float(d["quantization"][0]), int(d["quantization"][1]))
             for d in details.values() if d["dtype"].__name__ == "int8"]
    for name, (low, high) in state(aware).ranges.items():
        scale, zero_point = activation_grid(low, high)
        assert any(z == zero_point and abs(s - scale) <= 1e-6 * scale  # float32 scales
                   for s, z in grids), (name, scale, zero_point, grids)


def _assert_integer_onnx(path):
    """Every Conv, Gemm and MatMul reads DequantizeLinear outputs only (the QDQ form
    that runtimes run as integer kernels)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    compute = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert compute
    for node in compute:
        assert all(made_by.get(i) == "DequantizeLinear" for i in node.input if i), node.name


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int8_io_file_of_a_softmax_model(flavour, tmp_path):
    """int8 inputs and outputs; the softmax's output on its fixed [0, 1) grid, which
    the integer kernel computes with a table: within two steps here."""
    aware, data, _ = _trained(flavour, "softmax")
    result = to_tflite(aware, tmp_path / "q.tflite", quantize=QuantizationOptions(
        "int8-io", calibration=data))
    assert result.steps_off <= 2.0 + 1e-3 and "calibration rows (64)" in result.steps_on
    assert result.steps_within == 1.0


def test_options_that_change_what_was_trained_are_one_line(tmp_path):
    aware, data, _ = _trained("keras3")
    cases = [
        ("float16", "export it with mode 'int8' or 'int8-io', not 'float16'; for a "
                    "float16 file export keras_bn.quantization.inference_model"),
        (QuantizationOptions("int8", calibration=data, bias_correction=True),
         "bias_correction would change the weights or ranges training learned"),
        (QuantizationOptions("int8", calibration=data, ranges="mse"),
         "ranges='mse' estimates new ones; leave ranges out"),
    ]
    for quantize, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(
                ")", r"\)")) as error:
            to_tflite(aware, tmp_path / "q.tflite", quantize=quantize)
        assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="export it with mode 'int8', not 'int16x8'"):
        to_onnx(aware, tmp_path / "q.onnx", quantize=QuantizationOptions(
            "int16x8", calibration=data))


def test_float_file_of_the_trained_weights(tmp_path):
    """`inference_model(..., activations=False)` is the float model training left; its
    float file matches it as any float export."""
    aware, data, _ = _trained("tf_keras")
    plain = inference_model(aware, activations=False)
    assert not state(plain).aware
    result = to_onnx(plain, tmp_path / "f.onnx", samples=data)
    assert result.max_error <= result.tolerance


def test_a_reference_scores_the_file_against_the_float_model(tmp_path):
    """`QuantizationOptions(reference=float model)`: the QAT model's file is scored
    against the float model it was made from (the file run here in LiteRT, row by row,
    scored alike: the same figures to float32 rounding), not against the QAT model's
    simulated forward, which the file matches far more closely. A reference with other
    outputs is one line."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_bn.quantization import scoring

    aware, data, model = _trained("tf_keras", "softmax")
    own = to_tflite(aware, tmp_path / "own.tflite",
                    quantize=QuantizationOptions("int8", evaluation=data))
    result = to_tflite(aware, tmp_path / "q.tflite", quantize=QuantizationOptions(
        "int8", evaluation=data, reference=model))
    interpreter = Interpreter(str(result.path))
    interpreter.allocate_tensors()
    feed, fetch = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for row in data:
        interpreter.set_tensor(feed["index"], row[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(fetch["index"])[0])
    want = scoring.score(["out"], [model.predict(data, verbose=0)], [np.array(got)])[0]
    scored = result.evaluation[0]
    assert scored.agreement == want.agreement
    assert scored.sqnr_db == pytest.approx(want.sqnr_db, abs=0.01)
    assert own.evaluation[0].sqnr_db > scored.sqnr_db + 10, (own.evaluation, scored)
    other = tf_keras.Sequential([tf_keras.Input((12, 12, 3)), tf_keras.layers.Flatten(),
                                 tf_keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"reference for '.*': \[\(3,\)\] does not give "
                                         r"the model's outputs \[\(4,\)\]"):
        to_tflite(aware, tmp_path / "bad.tflite", quantize=QuantizationOptions(
            "int8", evaluation=data, reference=other))


def test_the_keras3_cases_pass_on_jax():
    """The Keras 3 int8 cases with the model on JAX: converted in a TensorFlow process,
    checked here against the JAX model's simulated forward."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", __file__, "-k",
                          "compute_what_was_trained and keras3"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:]
