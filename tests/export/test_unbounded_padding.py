"""int8 files of a model that pads with "minus infinity" before a max pool (keras-hub's
pre-activation ResNet pads with the lowest float): the pad's calibrated range reached
-3.4e38, its int8 step 1e36, and both formats' files answered zeros (SQNR 0 dB). With
the pad given its input's range, they answer as int8 files do. TFLite's int16x8 quantizer
left the padding value a float32 constant beside an int16 input, which LiteRT refused to
run ("PADV2 input INT16 != constant FLOAT32"): the value is now an int16 constant."""

import numpy as np
import pytest

from keras_bn.export import QuantizationOptions, to_onnx, to_tflite


@pytest.fixture(scope="module")
def resnet_v2():
    import keras

    from benchmarks import hub_models

    keras.utils.set_random_seed(0)
    model = hub_models.resnet_v2()
    rows = np.random.RandomState(0).rand(64, *hub_models.IMAGE).astype("float32")
    return model, rows


#: SQNR floors on 13 held-out rows of uniform noise, random weights: int8 measured 29 to
#: 30 dB (0 dB, every output zero, before the fix), int16x8 31 dB (TFLite: no file
#: before the fix).
FLOORS = {"int8": 20, "int16x8": 25}


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["int8", "int16x8"])
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_unbounded_padding_keeps_the_integer_file_answering(resnet_v2, fmt, mode, tmp_path):
    model, rows = resnet_v2
    export_to = {"tflite": to_tflite, "onnx": to_onnx}[fmt]
    path = tmp_path / f"v2.{fmt}"
    result = export_to(model, path, quantize=QuantizationOptions(mode, calibration=rows),
                       latency_batch=None)
    (score,) = result.evaluation
    assert score.sqnr_db > FLOORS[mode], score
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        dtype = {"int8": np.int8, "int16x8": np.int16}[mode]
        details = Interpreter(str(path)).get_tensor_details()
        steps = [d["quantization"][0] for d in details
                 if d["dtype"] == dtype and d["quantization"][0]]
        assert max(steps) < 1, max(steps)  # no activation with a 1e36 step
        pads = [d for d in details if d["name"].endswith("constant_values/quantized")]
        assert mode == "int8" or [d["dtype"] for d in pads] == [np.int16], pads


def test_padding_values_land_on_the_input_grid_and_saturate():
    from keras_bn.export.tflite_padding import padding_value

    lowest = float(np.finfo(np.float32).min)
    assert padding_value(lowest, 4.9e-5, 0, np.int16) == -32768
    assert padding_value(float("-inf"), 0.1, -3, np.int8) == -128
    assert padding_value(float("inf"), 0.1, -3, np.int8) == 127
    assert padding_value(0.5, 0.25, 0, np.int16) == 2
    assert padding_value(0.0, 0.1, -3, np.int8) == -3  # zero padding: the zero point
    assert padding_value(100.0, 0.1, 0, np.int8) == 127


def test_an_op_int16x8_cannot_quantize_is_one_line_naming_it(tmp_path):
    """TFLite's 16x8 quantizer has no HARD_SWISH (MobileNetV3's activation): a one-line
    InputError naming the op and the ways out, instead of the converter's RuntimeError
    repeated once per op; no file is left."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Activation("hard_swish")(x)
    model = keras.Model(inputs, outputs)
    rows = np.random.RandomState(0).rand(32, 8, 8, 3).astype("float32")
    with pytest.raises(ValueError) as caught:
        to_tflite(model, tmp_path / "m.tflite",
                  quantize=QuantizationOptions("int16x8", calibration=rows))
    message = str(caught.value)
    assert "\n" not in message and "'HARD_SWISH'" in message, message
    assert "quantize it to int8, or export ONNX int16x8" in message, message
    assert not list(tmp_path.iterdir())


@pytest.mark.heavy
def test_a_file_litert_cannot_prepare_names_the_op_and_its_tensor(resnet_v2, tmp_path):
    """The converter's own int16x8 file (before the padding value is made an int16
    constant): LiteRT refuses it, and the error names the op and the tensor it writes."""
    from keras_bn.errors import VerificationError
    from keras_bn.export import tflite
    from keras_bn.export.isolated import IsolatedRuntime
    from keras_bn.quantization.options import prepared

    model, rows = resnet_v2
    ready = prepared(QuantizationOptions("int16x8", calibration=rows), model, "tflite",
                     True, None)
    path = tmp_path / "refused.tflite"
    path.write_bytes(tflite._run_converter(model, model, ready.options, False))
    with pytest.raises(VerificationError) as caught:
        with IsolatedRuntime("tflite", path) as runtime:
            runtime({runtime.inputs[0][0]: rows[:1]})
    message = str(caught.value)
    assert "\n" not in message and "(PADV2) failed to prepare" in message, message
    assert "the PADV2 op writing '" in message and "PadV2'" in message, message
