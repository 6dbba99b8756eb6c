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
  expected squared error: rounding (`step^2 / 12` inside) plus clipping (outside). A
  tensor that a softmax reads on its last axis (a classifier's logits) is judged by what
  the softmax makes of it instead (`softmax_input_range`): each end of its range is
  shrunk on its own to the least squared error of the softmax's output, estimated
  from the tensor's values (`estimate`'s `vectors`), not from its histogram.
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
#: Shrink factors of each end of a softmax input's range (`softmax_input_range`).
SOFTMAX_FACTORS = np.linspace(1.0, 0.05, 39)
#: At most this many values of a softmax input are kept to estimate its range (rows
#: beyond it are left out evenly).
SOFTMAX_VALUES = 200_000


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


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def softmax_output_mse(vectors: np.ndarray, range_low: float, range_high: float,
                       levels: int = LEVELS) -> float:
    """The expected squared error, per value, of the softmax of `vectors` (one softmax
    input per row, classes on the last axis) when they are rounded to `levels` steps
    over [range_low, range_high] and clipped outside: the clipping's error exactly, plus
    the rounding's to first order, `step^2 / 12` times the squared Frobenius norm of
    the softmax's Jacobian (`diag(p) - p p^T`) at the clipped values. The expected
    rounding error, not that of rounding these values: which values sit near a grid
    point depends on where the grid falls, which the file's zero point moves (and other
    rows' values fall elsewhere), as `quantization_mse` takes `step^2 / 12`."""
    x = np.asarray(vectors, np.float64)
    return _softmax_error(x, _softmax(x), range_low, range_high, levels)


def _softmax_error(x, reference, range_low, range_high, levels):
    """`softmax_output_mse` of float64 `x`, whose softmax is `reference`."""
    step = (range_high - range_low) / (levels - 1)
    p = _softmax(np.clip(x, range_low, range_high))
    clipping = np.sum((p - reference) ** 2, axis=-1)
    squares = np.sum(p ** 2, axis=-1)
    jacobian = np.sum(p ** 2 * (1 - p) ** 2, axis=-1) + squares ** 2 - np.sum(p ** 4, axis=-1)
    return float(np.mean(clipping + step ** 2 / 12 * jacobian) / x.shape[-1])


def softmax_input_range(vectors: np.ndarray, low: float, high: float,
                        levels: int = LEVELS) -> tuple:
    """`(low, high)` of a tensor a softmax reads on its last axis (`vectors`: its values,
    one softmax input per row, within [low, high]): each end of `[min, max]` (zero kept
    inside) shrunk by its own factor of `SOFTMAX_FACTORS`, to the least
    `softmax_output_mse`, the widest range among equals.

    The softmax ignores how low a logit is once it is far below its row's largest (its
    probability is near zero, and rounds to zero on the int8 output's grid of 1/256),
    so the int8 steps are best spent near the top: on a trained classifier's logits,
    whose lowest values stretch [min, max], a range shrunk at the low end keeps more of
    the top answers than one shrunk evenly (`mse_range`), which weighs every value
    alike.
    """
    if high <= low:
        return float(low), float(high)
    low0, high0 = _with_zero(low, high)
    x = np.asarray(vectors, np.float64)
    reference = _softmax(x)  # once, not per candidate
    best, best_error = (low0, high0), np.inf
    for f in SOFTMAX_FACTORS:  # widest first: a later range must be strictly better
        for g in SOFTMAX_FACTORS:
            error = _softmax_error(x, reference, f * low0, g * high0, levels)
            if error < best_error:
                best, best_error = (f * low0, g * high0), error
    return float(best[0]), float(best[1])


def softmax_rows(values: np.ndarray, limit: int = SOFTMAX_VALUES) -> np.ndarray:
    """The softmax inputs of `values` (classes on the last axis) as rows, at most
    `limit` values of them, taken evenly: what `softmax_input_range` estimates from."""
    rows = np.asarray(values, np.float32).reshape(-1, np.shape(values)[-1])
    keep = max(1, limit // max(rows.shape[1], 1))
    return rows if len(rows) <= keep else rows[np.linspace(0, len(rows) - 1, keep).astype(int)]


def estimate(tensors: dict, counts: dict, estimator: str, levels: int = LEVELS,
             vectors: dict | None = None) -> tuple:
    """`(ranges, Technique)`: new `{key: (min, max)}` of calibrated tensors by
    `estimator`, from `tensors` (`{key: (name, min, max)}`, the recorded ranges) and
    `counts` (`{key: histogram over [min, max]}`; a tensor without one keeps its range),
    and the record of what changed. `vectors` (`{key: rows}`, `softmax_rows`) gives the
    values of the tensors a softmax reads on their last axis: with "mse" at int8
    `levels` their ranges are `softmax_input_range`'s."""
    record = Technique(f"ranges ({estimator})")
    rule = {"minmax": lambda c, lo, hi, levels: (lo, hi), "percentile":
            lambda c, lo, hi, levels: percentile_range(c, lo, hi), "mse": mse_range}[estimator]
    vectors = vectors or {}
    ranges, widths, by_softmax = {}, [], []
    for key, (name, low, high) in tensors.items():
        if key not in counts:
            record.skipped[name] = "a constant range (min = max)"
            continue
        if estimator == "mse" and levels == LEVELS and key in vectors:
            new = softmax_input_range(vectors[key], low, high, levels)
            by_softmax.append(name)
        else:
            new = rule(counts[key], low, high, levels)
        ranges[key] = new
        widths.append((new[1] - new[0]) / (high - low))
        if widths[-1] < 1:
            record.changed.append(name)
    if widths:
        record.detail = (f"ranges {np.min(widths):.2f} to {np.max(widths):.2f} of min/max "
                         f"(median {np.median(widths):.2f})")
    if by_softmax:
        record.detail += (f"; {', '.join(by_softmax)} by the error of the softmax "
                          "reading it")
    return ranges, record
