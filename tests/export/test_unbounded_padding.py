"""int8 files of a model that pads with "minus infinity" before a max pool (keras-hub's
pre-activation ResNet pads with the lowest float): the pad's calibrated range reached
-3.4e38, its int8 step 1e36, and both formats' files answered zeros (SQNR 0 dB). With
the pad given its input's range, they answer as int8 files do."""

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


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_unbounded_padding_keeps_the_int8_file_answering(resnet_v2, fmt, tmp_path):
    model, rows = resnet_v2
    export_to = {"tflite": to_tflite, "onnx": to_onnx}[fmt]
    path = tmp_path / f"v2.{fmt}"
    result = export_to(model, path, quantize=QuantizationOptions("int8", calibration=rows),
                       latency_batch=None)
    (score,) = result.evaluation
    # random weights, 13 held-out rows of uniform noise: 29 to 30 dB measured; 0 dB
    # (every output zero) before the fix
    assert score.sqnr_db > 20, score
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        steps = [d["quantization"][0] for d in Interpreter(str(path)).get_tensor_details()
                 if d["dtype"] == np.int8 and d["quantization"][0]]
        assert max(steps) < 1, max(steps)  # no activation with a 1e36 step
