"""Activation ranges of an int8 TFLite file: how much of each tensor's calibration values
its int8 grid spans.

TensorFlow's converter calibrates each activation tensor to the min and max it saw on the
representative data (it offers no other estimator), so one rare large value stretches
the grid of all the others. Here the converter is asked to calibrate only
(`_experimental_calibrate_only`: a float file holding each tensor's min and max), the
calibrated file is run in LiteRT (in a child process) on the same rows to histogram every
calibrated tensor over its [min, max], each range is re-estimated from its histogram, and
the converter's own quantizer (`mlir_quantize`, what `convert()` calls next) quantizes
the file with the new ranges. With "minmax" this route computes exactly what the
converter's file computes.

Estimators (pure functions of a histogram):

- "minmax": the converter's [min, max];
- "percentile": the 0.01 and 99.99 percentiles (zero kept inside);
- "mse": the range, shrunk from [min, max] by one factor on both sides, with the least
  expected squared error: rounding (`step^2 / 12` inside) plus clipping (outside).
"""

import os
import tempfile

import numpy as np

from keras_bn.export.post_training import Technique

ESTIMATORS = ("minmax", "percentile", "mse")
#: Histogram bins per tensor, over the tensor's calibrated [min, max].
BINS = 2048
#: int8 levels of an activation (asymmetric, zero point anywhere in [-128, 127]).
LEVELS = 255
#: Percent of each tail the "percentile" estimator leaves out.
TAIL = 0.01
#: Shrink factors the "mse" estimator tries, largest first.
FACTORS = np.linspace(1.0, 0.05, 96)


def _centres(low, high, bins):
    edges = np.linspace(low, high, bins + 1)
    return (edges[:-1] + edges[1:]) / 2


def _with_zero(low, high):
    return min(low, 0.0), max(high, 0.0)


def percentile_range(counts, low: float, high: float, tail: float = TAIL) -> tuple:
    """`(low, high)` at the `tail` and `100 - tail` percentiles of the histogram `counts`
    over [low, high] (bin edges), widened to hold zero (int8 keeps zero exact)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0 or high <= low:
        return float(low), float(high)
    edges = np.linspace(low, high, len(counts) + 1)
    cumulative = np.cumsum(counts) / total
    lo = edges[np.searchsorted(cumulative, tail / 100, side="left")]
    hi = edges[1 + np.searchsorted(cumulative, 1 - tail / 100, side="left")]
    return _with_zero(float(lo), float(min(hi, high)))


def quantization_mse(counts, low: float, high: float, range_low: float,
                     range_high: float, levels: int = LEVELS) -> float:
    """The expected squared error of rounding the values of histogram `counts` (over
    [low, high]) to `levels` steps over [range_low, range_high], clipping outside."""
    counts = np.asarray(counts, np.float64)
    x = _centres(low, high, len(counts))
    step = (range_high - range_low) / (levels - 1)
    clipped = np.clip(x, range_low, range_high)
    error = np.where(x == clipped, step ** 2 / 12, (x - clipped) ** 2)
    return float((counts * error).sum() / max(counts.sum(), 1))


def mse_range(counts, low: float, high: float, levels: int = LEVELS) -> tuple:
    """`(low, high)`: `[min, max]` shrunk by the factor of `FACTORS` (the same on both
    sides, so that zero stays inside) with the least `quantization_mse`."""
    if high <= low or np.sum(counts) == 0:
        return float(low), float(high)
    low0, high0 = _with_zero(low, high)
    errors = [quantization_mse(counts, low, high, f * low0, f * high0, levels)
              for f in FACTORS]
    best = FACTORS[int(np.argmin(errors))]
    return float(best * low0), float(best * high0)


def recorded_ranges(content: bytes) -> dict:
    """`{tensor index: (name, min, max)}` of the calibrated tensors inside a TFLite
    file's main subgraph (a file the converter calibrated only); its inputs and outputs
    keep their min/max: clipping them would clip the values the user feeds or reads."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    found = {}
    ends = set(model.subgraphs[0].inputs) | set(model.subgraphs[0].outputs)
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        if index in ends:  # the values the user feeds and reads are never clipped
            continue
        q = tensor.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            found[index] = (name, float(q.min[0]), float(q.max[0]))
    return found


def with_ranges(content: bytes, ranges: dict) -> bytes:
    """The TFLite file `content` with the calibrated `{tensor index: (min, max)}` set."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    for index, (low, high) in ranges.items():
        q = model.subgraphs[0].tensors[index].quantization
        q.min, q.max = [np.float32(low)], [np.float32(high)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def histograms(content: bytes, feeds, tensors: dict, bins: int = BINS) -> dict:
    """`{tensor index: counts}` of each calibrated tensor of `tensors`
    (`recorded_ranges`' form) over its [min, max], summed over `feeds` (dicts from input
    name to a batch), the file run in LiteRT in a child process."""
    from keras_bn.export.isolated import IsolatedRuntime, _text

    wanted = _text([[i, low, high, bins] for i, (_, low, high) in tensors.items()
                    if high > low])
    totals = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "calibrated.tflite")
        with open(path, "wb") as f:
            f.write(content)
        with IsolatedRuntime("tflite-tensors", path) as runtime:
            for feed in feeds:
                for key, counts in runtime({**feed, "__histograms__": wanted}).items():
                    index = int(key[1:])
                    totals[index] = totals.get(index, 0) + counts
    return totals


def estimate(content: bytes, feeds, estimator: str) -> tuple:
    """`(ranges, Technique)`: the new `{tensor index: (min, max)}` of a calibrated file's
    activations by `estimator`, and the record of what changed."""
    tensors = recorded_ranges(content)
    record = Technique(f"ranges ({estimator})")
    counts = histograms(content, feeds, tensors)
    rule = {"percentile": percentile_range, "mse": mse_range}[estimator]
    ranges, widths = {}, []
    for index, (name, low, high) in tensors.items():
        if index not in counts:
            record.skipped[name] = "a constant range (min = max)"
            continue
        new = rule(counts[index], low, high)
        ranges[index] = new
        widths.append((new[1] - new[0]) / (high - low))
        if widths[-1] < 1:
            record.changed.append(name)
    if widths:
        record.detail = (f"ranges {np.min(widths):.2f} to {np.max(widths):.2f} of min/max "
                         f"(median {np.median(widths):.2f})")
    return ranges, record
