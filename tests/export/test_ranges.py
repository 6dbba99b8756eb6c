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


def _logits(rs, rows=400, classes=10):
    """A trained classifier's logits in shape: a top answer or two near +6, the rest
    spread far below, one class now and then at -40."""
    x = rs.normal(-8, 6, (rows, classes))
    x[np.arange(rows), rs.randint(0, classes, rows)] = rs.normal(6, 1.5, rows)
    x[np.arange(rows), rs.randint(0, classes, rows)] = rs.normal(5, 1.5, rows)
    x[rs.rand(rows) < 0.05, 0] = -40.0
    return x.astype("float32")


def test_a_softmax_input_spends_its_grid_where_the_softmax_reads_it():
    """Logits read by a softmax: the range `softmax_input_range` gives is the one of its
    candidates (each end shrunk on its own) with the least error of the int8 softmax's
    output, and on rows it was not estimated on that error is below the histogram MSE
    range's (which shrinks both ends alike, weighing the far-below logits the softmax
    ignores) and min/max's: its low end is raised far more than its high end. Softmax
    rows are taken evenly from a larger tensor."""
    rs = np.random.RandomState(0)
    fit, held = _logits(rs), _logits(rs)
    low, high = float(fit.min()), float(fit.max())
    got = ranges.softmax_input_range(fit, low, high)
    at = lambda rows, lo, hi: ranges.softmax_output_mse(rows, lo, hi)  # noqa: E731
    assert at(fit, *got) == min(at(fit, f * low, g * high) for f in ranges.SOFTMAX_FACTORS
                                for g in ranges.SOFTMAX_FACTORS)
    histogram = ranges.mse_range(*_histogram(fit.ravel()))
    assert at(held, *got) < 0.8 * at(held, *histogram) and at(held, *got) < at(held, low, high)
    assert got[0] / low < 0.5 < got[1] / high
    rows = ranges.softmax_rows(np.zeros((50, 4, 10)), limit=100)
    assert rows.shape == (10, 10)


def _softmax_classifier(head):
    """A digits net ending in a softmax, trained 10 epochs (87 % accurate on the 297
    held-out rows): `(model, calibration rows, held-out rows)`. `head` "dense": an MLP,
    Dense -> Softmax; "reshape": the same on a 1x1 image, 1x1 convolutions, the logits
    reshaped to a vector before the softmax (keras.applications' MobileNet head)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    tf_keras.utils.set_random_seed(0)
    if head == "dense":
        model = tf_keras.Sequential([tf_keras.Input((64,)), L.Dense(32, activation="relu"),
                                     L.Dense(10), L.Softmax()])
    else:
        x = x.reshape(-1, 1, 1, 64)
        model = tf_keras.Sequential([
            tf_keras.Input((1, 1, 64)), L.Conv2D(32, 1, activation="relu"),
            L.Conv2D(10, 1), L.Reshape((10,)), L.Activation("softmax")])
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x[:1200], y[:1200], epochs=10, verbose=0)
    return model, x[1200:1500], x[1500:]


@pytest.mark.parametrize("head", ["dense", "reshape"])
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_the_softmax_input_range_lands_in_the_file(fmt, head, tmp_path):
    """ranges="mse" on a classifier ending in a softmax: the tensor the file's softmax
    reads holds a range as good as `softmax_input_range`'s on the float logits of the
    calibration rows (the softmax's error within 5 % of that range's: the file's logits
    are the float model's to float32 rounding, which may tip the search to a neighbouring
    candidate; bias correction off, as it moves the logits), and on held-out rows its
    error is under half that of the histogram's MSE range; the record says so, and the
    file agrees with the float model on held-out rows (98 %, 6 rows of 297: int8 keeps
    99.8 % of a digits MLP's answers, docs/quantization.md). Where the logits are
    reshaped on their way to the softmax, the tensor before the reshape holds the same
    range (the "reshape" head; 1x1 convolutions)."""
    model, calibration, held_out = _softmax_classifier(head)
    calibration = calibration[:QuantizationOptions("int8").calibration_rows]  # the used
    logits = tf_keras.Model(model.inputs, model.layers[-1].input)
    fit, held = (logits.predict(rows, verbose=0).reshape(-1, 10)
                 for rows in (calibration, held_out))
    low, high = float(fit.min()), float(fit.max())
    best = ranges.softmax_input_range(fit, low, high)
    export = to_tflite if fmt == "tflite" else to_onnx
    result = export(model, tmp_path / f"m.{fmt}", quantize=QuantizationOptions(
        "int8", calibration=calibration, evaluation=held_out, ranges="mse",
        bias_correction=False), latency_batch=None)
    record = result.post_training[-1]
    assert "by the error of the softmax reading it" in record.detail, record.detail
    assert result.evaluation[0].agreement >= 0.98
    written, *rearranged = _softmax_input_range(fmt, tmp_path / f"m.{fmt}")
    assert len(rearranged) == (head == "reshape"), rearranged
    for source in rearranged:
        assert source == pytest.approx(written, rel=1e-6)
    error = lambda rows, r: ranges.softmax_output_mse(rows, *r)  # noqa: E731
    assert error(fit, written) <= 1.05 * error(fit, best), (written, best)
    histogram = ranges.mse_range(*_histogram(fit.ravel()))
    assert error(held, written) < 0.5 * error(held, histogram), (written, histogram)


def _softmax_input_range(fmt, path):
    """`[(low, high), ...]`: the int8 range `(scale * (-128 - zero point), scale * (127 -
    zero point))` of the tensor the file's one softmax reads, then of each tensor it is
    reshaped (or transposed) from."""
    found = []
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(str(path))
        ops = interpreter._get_ops_details()
        makers = {int(t): op for op in ops for t in op["outputs"]}
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        softmax, = [op for op in ops if op["op_name"] == "SOFTMAX"]
        index = int(softmax["inputs"][0])
        while True:
            scale, zero = details[index]["quantization"]
            found.append((scale * (-128 - zero), scale * (127 - zero)))
            op = makers.get(index)
            if op is None or op["op_name"] not in ("RESHAPE", "SQUEEZE"):
                return found
            index = int(op["inputs"][0])
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    makers = {out: node for node in graph.node for out in node.output}
    softmax, = [n for n in graph.node if n.op_type == "Softmax"]
    node = makers[softmax.input[0]]
    while node is not None and node.op_type == "DequantizeLinear":
        scale, zero = (float(constants[n]) for n in node.input[1:3])
        found.append((scale * (-128 - zero), scale * (127 - zero)))
        node = makers.get(makers[node.input[0]].input[0])  # through the QuantizeLinear
        while node is not None and node.op_type in ("Reshape", "Squeeze", "Transpose"):
            node = makers.get(node.input[0])
    return found
