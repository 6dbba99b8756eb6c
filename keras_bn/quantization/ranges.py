"""Activation ranges: how much of each tensor's calibration values its integer grid spans.

The converters calibrate each activation tensor to the min and max it saw on the
calibration data, so one rare large value stretches the grid of all the others. Each
format's exporter records those min/max ranges and histograms every tensor over its
range on the same rows (TFLite: `keras_bn.export.tflite_ranges`; ONNX:
`keras_bn.export.onnx_quantization`); `estimate` re-estimates the ranges from the
histograms, the same way for both formats, and the format's own quantizer then writes
the file with them. With "minmax" the ranges are the converter's.

Estimators (pure functions of a histogram):

- "minmax": the converter's [min, max];
- "percentile": the 0.01 and 99.99 percentiles (zero kept inside);
- "mse": the range, shrunk from [min, max] by one factor on both sides, with the least
  expected squared error: rounding (`step^2 / 12` inside) plus clipping (outside).
"""

import numpy as np

from keras_bn.quantization.technique import Technique

ESTIMATORS = ("minmax", "percentile", "mse")
#: Histogram bins per tensor, over the tensor's calibrated [min, max].
BINS = 2048
#: int8 levels of an activation (asymmetric, zero point anywhere in [-128, 127]); int16
#: activations have 65535 (symmetric, `levels=` of the estimators).
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


def percentile_range(counts: np.ndarray, low: float, high: float, tail: float = TAIL) -> tuple:
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


def quantization_mse(counts: np.ndarray, low: float, high: float, range_low: float,
                     range_high: float, levels: int = LEVELS) -> float:
    """The expected squared error of rounding the values of histogram `counts` (over
    [low, high]) to `levels` steps over [range_low, range_high], clipping outside."""
    counts = np.asarray(counts, np.float64)
    x = _centres(low, high, len(counts))
    step = (range_high - range_low) / (levels - 1)
    clipped = np.clip(x, range_low, range_high)
    error = np.where(x == clipped, step ** 2 / 12, (x - clipped) ** 2)
    return float((counts * error).sum() / max(counts.sum(), 1))


def mse_range(counts: np.ndarray, low: float, high: float, levels: int = LEVELS) -> tuple:
    """`(low, high)`: `[min, max]` shrunk by the factor of `FACTORS` (the same on both
    sides, so that zero stays inside) with the least `quantization_mse`."""
    if high <= low or np.sum(counts) == 0:
        return float(low), float(high)
    low0, high0 = _with_zero(low, high)
    errors = [quantization_mse(counts, low, high, f * low0, f * high0, levels)
              for f in FACTORS]
    best = FACTORS[int(np.argmin(errors))]
    return float(best * low0), float(best * high0)


def estimate(tensors: dict, counts: dict, estimator: str, levels: int = LEVELS) -> tuple:
    """`(ranges, Technique)`: new `{key: (min, max)}` of calibrated tensors by
    `estimator`, from `tensors` (`{key: (name, min, max)}`, the recorded ranges) and
    `counts` (`{key: histogram over [min, max]}`; a tensor without one keeps its range),
    and the record of what changed."""
    record = Technique(f"ranges ({estimator})")
    rule = {"minmax": lambda c, lo, hi, levels: (lo, hi), "percentile":
            lambda c, lo, hi, levels: percentile_range(c, lo, hi), "mse": mse_range}[estimator]
    ranges, widths = {}, []
    for key, (name, low, high) in tensors.items():
        if key not in counts:
            record.skipped[name] = "a constant range (min = max)"
            continue
        new = rule(counts[key], low, high, levels)
        ranges[key] = new
        widths.append((new[1] - new[0]) / (high - low))
        if widths[-1] < 1:
            record.changed.append(name)
    if widths:
        record.detail = (f"ranges {np.min(widths):.2f} to {np.max(widths):.2f} of min/max "
                         f"(median {np.median(widths):.2f})")
    return ranges, record
