"""BN-aware post-training quantization: what is done to a folded model before TFLite's
converter quantizes it, so that its int8 file keeps more of the float model's answers.

The techniques (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"), each in its own module, each run on the calibration data's
statistics and recorded in a `Technique`:

- "equalization" (`equalization.equalize`): cross-layer equalization of consecutive
  layers, an exact rescaling of channels (the float model computes the same);
- "bias_correction" (`bias_correction.correct_biases`): removes from each bias the
  mean shift that int8 weights put on its channel.

The activation ranges the converter then calibrates can be re-estimated too
(`keras_bn.export.ranges`); its record joins these.

Reference:
  Markus Nagel, Mart van Baalen, Tijmen Blankevoort, Max Welling. Data-Free
  Quantization Through Weight Equalization and Bias Correction. ICCV 2019.
  https://arxiv.org/abs/1906.04721
"""

from dataclasses import dataclass, field

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError

TECHNIQUES = ("equalization", "bias_correction")
#: Rows per batch when the calibration data is run through the model for statistics.
_BATCH = 64


@dataclass
class Technique:
    """What one post-training technique did to the folded model.

    Attributes:
      name: "equalization" or "bias_correction".
      changed: the layers whose weights it changed (for equalization, "a -> b" pairs
        and "name (inside)" for a separable convolution's own two kernels).
      skipped: layer (or pair) -> why it was left alone.
      detail: a one-line summary of what it measured (largest change).
    """

    name: str
    changed: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    detail: str = ""

    def summary(self) -> str:
        return (f"{self.name}: {len(self.changed)} changed, {len(self.skipped)} left "
                f"alone{'; ' + self.detail if self.detail else ''}")


def techniques(equalization: bool, bias_correction: bool) -> tuple:
    """The techniques to run, in the order they run (equalization changes the weights
    that bias correction then quantizes)."""
    return tuple(name for name, on in zip(TECHNIQUES, (equalization, bias_correction)) if on)


def apply(model, rows, names) -> tuple:
    """`(new model, [Technique])`: `model` (a folded model) after each technique of
    `names` in order, measured on the calibration `rows` (one array per input).
    The model is not changed."""
    from keras_bn.export import bias_correction, equalization

    run = {"equalization": equalization.equalize,
           "bias_correction": bias_correction.correct_biases}
    records = []
    for name in names:
        if name not in run:
            raise InputError(f"Unknown post-training technique {name!r}; use {TECHNIQUES}.")
        model, record = run[name](model, rows)
        records.append(record)
    return model, records


def tensor_batches(model, tensors, rows, batch: int = _BATCH):
    """Yields, per batch of the calibration `rows` (one array per model input), the values
    of the symbolic tensors `tensors` of `model` in inference mode (numpy arrays, in
    order): one sub-model run per batch for all of them."""
    plumbing = flavour.of(model)
    probe = plumbing.keras.Model(model.inputs, list(tensors))
    for start in range(0, len(rows[0]), batch):
        feed = [r[start:start + batch] for r in rows]
        got = probe(feed if len(feed) > 1 else feed[0], training=False)
        yield plumbing.get_values(list(got) if isinstance(got, (list, tuple)) else [got])


def channel_statistics(model, tensors, rows, batch: int = _BATCH) -> list:
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
