"""int8 activation range estimators (keras_bn/quantization/ranges.py): the pure
estimators on histograms, TFLite's calibrate-then-quantize route
(export/tflite_ranges.py) against the converter's own file, and the ranges landing in
the files LiteRT and onnxruntime run."""

import numpy as np
import pytest
import tf_keras

from keras_bn.errors import InputError
from keras_bn.export import QuantizationOptions, tflite_ranges, to_onnx, to_tflite
from keras_bn.export.tflite import _convert
from keras_bn.quantization import ranges
from keras_bn.quantization.technique import Technique

L = tf_keras.layers


def _histogram(values, bins=ranges.BINS):
    low, high = float(values.min()), float(values.max())
    return np.histogram(values, bins, (low, high))[0], low, high


def test_percentile_leaves_a_rare_outlier_out_and_keeps_zero():
    """A ReLU-like activation (half zeros, a half-normal bulk) and one value at 40:
    min/max spends 90 % of the int8 grid above the bulk; the percentile range ends near
    the bulk's 99.99th percentile, with zero inside, also for an activation above zero."""
    rs = np.random.RandomState(0)
    values = np.concatenate([np.zeros(50_000), np.abs(rs.randn(50_000)), [40.0]])
    low, high = ranges.percentile_range(*_histogram(values))
    assert low == 0.0 and 3 < high < 5
    low, high = ranges.percentile_range(*_histogram(rs.randn(10_000) + 8))  # all > 0
    assert low == 0.0 and high > 10


def test_mse_clips_a_heavy_tail_where_that_lowers_the_expected_error():
    """On a Laplace tail the MSE range ends below the max, at the grid's least expected
    error (rounding inside, clipping outside), below min/max's; on a uniform
    activation, where clipping only costs, it keeps the whole range."""
    rs = np.random.RandomState(0)
    values = np.concatenate([np.zeros(50_000), np.abs(rs.laplace(size=50_000))])
    counts, low, high = _histogram(values)
    m_low, m_high = ranges.mse_range(counts, low, high)
    at = lambda lo, hi: ranges.quantization_mse(counts, low, high, lo, hi)
    assert m_low == 0.0 and m_high < 0.97 * high
    assert at(m_low, m_high) < 0.95 * at(low, high)
    assert at(m_low, m_high) == min(at(f * low, f * high) for f in ranges.FACTORS)
    lo, hi = ranges.mse_range(*_histogram(rs.uniform(-1, 1, 100_000)))
    assert lo < -0.99 and hi > 0.99


def _model():
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((12, 12, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same")(inputs))
    x = L.ReLU()(L.DepthwiseConv2D(3, padding="same")(x))
    x = L.GlobalAveragePooling2D()(L.Conv2D(6, 1)(x))
    return tf_keras.Model(inputs, L.Dense(4)(x))


def _run(content, x):
    """The file's first output on `x` in LiteRT, quantizing an int8 input as it says."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    return list(runner(**{name: x}).values())[0]


@pytest.mark.parametrize("quantize", ["int8", "int8-io"])
def test_the_calibrate_then_quantize_route_is_the_converters_file(quantize, monkeypatch):
    """Calibrated only, the recorded ranges written back unchanged, quantized by
    `mlir_quantize`: the file computes exactly what the converter's own file
    (`convert()`) computes, so what another estimator (or the padding check, which the
    int8 modes now always run through this route) changes is the ranges alone."""
    import keras_bn.export.tflite as tflite

    model = _model()
    rows = [np.random.RandomState(1).rand(64, 12, 12, 3).astype("float32")]
    options = QuantizationOptions(quantize, calibration=rows)
    direct, none = _convert(model, model, options, calibrate_only=False)  # convert()
    assert none == []
    default, none = _convert(model, model, options)  # the int8 modes' route
    assert none == []

    def unchanged(content, feeds, estimator):
        kept = {i: (lo, hi)
                for i, (_, lo, hi) in tflite_ranges.recorded_ranges(content).items()}
        assert kept and sum(len(next(iter(f.values()))) for f in feeds) == 64
        return kept, Technique("ranges (unchanged)")

    monkeypatch.setattr(tflite.tflite_ranges, "estimate", unchanged)
    routed, records = _convert(model, model, QuantizationOptions(quantize, calibration=rows,
                                                                 ranges="mse"))
    assert [r.name for r in records] == ["ranges (unchanged)"]
    x = np.random.RandomState(2).rand(8, 12, 12, 3).astype("float32")
    np.testing.assert_array_equal(_run(direct, x), _run(routed, x))
    np.testing.assert_array_equal(_run(direct, x), _run(default, x))


def test_mse_ranges_land_in_the_file(mobilenet, tmp_path):
    """On the trained MobileNet-style net, ranges="mse" narrows activation ranges inside
    the model: in the written file each such tensor's int8 scale is below min/max's; the
    record says how much; the file still agrees with the float model on held-out rows
    (98 %: what int8 keeps, see docs/quantization.md); outside the int8 modes, or with an
    unknown estimator, it is the user's error."""
    from ai_edge_litert.interpreter import Interpreter

    folded, calibration, held_out = mobilenet
    files = {}
    for estimator in ("mse", "minmax"):
        files[estimator] = to_tflite(folded, tmp_path / f"{estimator}.tflite",
                                     quantize=QuantizationOptions(
                                         "int8", calibration=calibration,
                                         evaluation=held_out, ranges=estimator),
                                     latency_batch=None)
    record = files["mse"].post_training[-1]
    assert record.name == "ranges (mse)" and record.changed and "of min/max" in record.detail
    assert files["mse"].evaluation[0].agreement >= 0.98
    scales = {}
    for estimator in files:
        details = Interpreter(str(tmp_path / f"{estimator}.tflite")).get_tensor_details()
        scales[estimator] = {d["name"]: d["quantization"][0] for d in details
                             if d["dtype"] == np.int8 and d["quantization"][0]}
    shared = [n for n in record.changed if n in scales["mse"] and n in scales["minmax"]]
    narrower = [n for n in shared if scales["mse"][n] < scales["minmax"][n] * (1 - 1e-3)]
    assert shared and len(narrower) >= len(shared) // 2, (record.changed, scales)
    model = _model()
    rows = np.random.RandomState(1).rand(64, 12, 12, 3).astype("float32")
    with pytest.raises(InputError, match="ranges='mse' estimates int8 activation ranges"):
        to_tflite(model, tmp_path / "f.tflite",
                  quantize=QuantizationOptions("float16", ranges="mse"))
    with pytest.raises(InputError, match="ranges='median'"):
        to_tflite(model, tmp_path / "f.tflite",
                  quantize=QuantizationOptions("int8", calibration=rows, ranges="median"))
    assert not (tmp_path / "f.tflite").exists()
