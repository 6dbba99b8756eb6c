"""The TFLite quantization modes on a model trained here (scikit-learn's digits): what
each mode changes in the file (tensor types, size) and in the answers, with real
TensorFlow's converter and LiteRT."""

import numpy as np
import pytest
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import keras_bn
from keras_bn import export
from export.quantization import MODES, dequantize, quantize
from export.tflite import tensor_types
import digits_models


@pytest.fixture(scope="module")
def trained():
    """A digits MLP with BN, trained 5 epochs (held-out accuracy ~0.9), and its data."""
    return digits_models.trained_classifier()


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    model, calibration, held_out, labels = trained
    folder = tmp_path_factory.mktemp("modes")
    made = {}
    for mode in MODES:
        path = folder / f"{mode}.tflite"
        made[mode] = (path, export.to_tflite(model, path, quantize=mode,
                                             representative_data=calibration,
                                             samples=held_out, labels=labels,
                                             latency_batch=None))
    return made


def _io_types(path):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return ([d["dtype"] for d in runner.get_input_details().values()],
            [d["dtype"] for d in runner.get_output_details().values()])


def test_each_mode_stores_what_it_says(files):
    types = {mode: tensor_types(path.read_bytes()) for mode, (path, _) in files.items()}
    assert types[None] == {"FLOAT32"}
    assert types["float16"] >= {"FLOAT16", "FLOAT32"} and "INT8" not in types["float16"]
    assert types["dynamic"] == {"FLOAT32", "INT8"}  # int8 weights, float activations
    assert {"INT8", "INT32"} <= types["int8"] and "FLOAT32" in types["int8"]  # float I/O
    assert "FLOAT32" not in types["int8-io"]  # nothing float is left
    assert _io_types(files["int8"][0]) == ([np.float32], [np.float32])
    assert _io_types(files["int8-io"][0]) == ([np.int8], [np.int8])
    assert {mode: result.format for mode, (_, result) in files.items()} == {
        None: "tflite", "dynamic": "tflite-dynamic", "float16": "tflite-float16",
        "int8": "tflite-int8", "int8-io": "tflite-int8-io"}


def test_quantized_modes_are_smaller_and_measured_not_checked(files):
    size = {mode: result.size_bytes for mode, (_, result) in files.items()}
    assert size["float16"] < 0.6 * size[None]
    for mode in ("dynamic", "int8", "int8-io"):
        assert size[mode] < 0.5 * size[None], (mode, size)
    for mode, (_, result) in files.items():
        if mode is None:
            assert result.tolerance is not None and result.max_error < result.tolerance
        else:  # a quantized file's error is what it is: reported, with its accuracy
            assert result.tolerance is None and result.max_error > 0, mode
    # the float model's held-out accuracy ~0.9: each mode keeps it within 3 points here
    for mode, (_, result) in files.items():
        assert abs(result.accuracy - result.keras_accuracy) <= 0.03, (mode, result.accuracy)


def test_int8_io_verification_quantizes_inputs_and_dequantizes_outputs(files, trained):
    """The int8-io file computes what the int8 file computes once its inputs are
    quantized with its own scale and zero point: verification feeding it float inputs
    cast to int8 (or reading its int8 outputs as values) would be off by O(1)."""
    _, _, held_out, _ = trained
    int8, io = files["int8"][1], files["int8-io"][1]
    assert io.max_error == pytest.approx(int8.max_error, rel=1e-6)
    assert io.accuracy == int8.accuracy
    runner = Interpreter(model_path=str(files["int8-io"][0])).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    (out, out_detail), = runner.get_output_details().items()
    got = runner(**{name: quantize(held_out, *detail["quantization"], np.int8)})[out]
    float_file = Interpreter(model_path=str(files["int8"][0])).get_signature_runner()
    (fname, _), = float_file.get_input_details().items()
    want = list(float_file(**{fname: held_out}).values())[0]
    np.testing.assert_array_equal(dequantize(got, *out_detail["quantization"]), want)


def test_quantize_rounds_halves_away_from_zero_and_saturates():
    x = np.array([-300.0, -2.5, -0.5, 0.49, 0.5, 1.5, 2.5, 300.0])
    q = quantize(x, 1.0, 0, np.int8)
    assert q.dtype == np.int8 and q.tolist() == [-128, -3, -1, 0, 1, 2, 3, 127]
    assert quantize([0.0], 0.5, -3, np.int8).tolist() == [-3]
    np.testing.assert_allclose(dequantize(quantize(x[1:-1], 0.1, 5, np.int8), 0.1, 5),
                               x[1:-1], atol=0.05 + 1e-7)


def test_unknown_mode_names_the_modes(trained, tmp_path):
    with pytest.raises(ValueError, match="quantize='int4'.*'dynamic', 'float16', 'int8', "
                                         "'int8-io'"):
        export.to_tflite(trained[0], tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="quantize='int8-io'.*needs representative_data"):
        export.to_tflite(trained[0], tmp_path / "m.tflite", quantize="int8-io")
