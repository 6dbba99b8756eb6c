"""The values of a model's inner tensors over the calibration rows, which the techniques
measure (bias correction: each layer's inputs; equalization: each channel's range)."""

from collections.abc import Iterator

import numpy as np

from keras_bn import flavour
from keras_bn.flavour import Inputs, Model

#: Rows per batch when the calibration data is run through the model for statistics.
_BATCH = 64


def tensor_batches(model: Model, tensors: list, rows: Inputs,
                   batch: int = _BATCH) -> Iterator[list[np.ndarray]]:
    """Yields, per batch of the calibration `rows` (one array per model input), the values
    of the symbolic tensors `tensors` of `model` in inference mode (numpy arrays, in
    order): one sub-model run per batch for all of them."""
    plumbing = flavour.of(model)
    probe = plumbing.keras.Model(model.inputs, list(tensors))
    for start in range(0, len(rows[0]), batch):
        feed = [r[start:start + batch] for r in rows]
        got = probe(feed if len(feed) > 1 else feed[0], training=False)
        yield plumbing.get_values(list(got) if isinstance(got, (list, tuple)) else [got])


def channel_statistics(model: Model, tensors: list, rows: Inputs, batch: int = _BATCH) -> list:
    """`[(mean, max_abs)]` per channel (the last axis) of each symbolic tensor of
    `model` in `tensors`, over the calibration `rows` in inference mode."""
    if not tensors:
        return []
    sums = [0.0] * len(tensors)
    peaks = [0.0] * len(tensors)
    counts = [0] * len(tensors)
    for values in tensor_batches(model, tensors, rows, batch):
        for i, value in enumerate(values):
            value = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
            sums[i] = sums[i] + value.sum(axis=0)
            peaks[i] = np.maximum(peaks[i], np.abs(value).max(axis=0))
            counts[i] += len(value)
    return [(s / c, p) for s, p, c in zip(sums, peaks, counts)]
