"""How close an exported file's answers are to the Keras model's on the user's data: the
scores of a quantized file (top-1 agreement, errors, SQNR) and the held-out split of the
calibration data they are measured on by default."""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

#: The share of the calibration rows held out for evaluation when no evaluation data is
#: given (chosen at random with a fixed seed, so sorted data splits fairly).
HELD_OUT = 0.2

#: Below this many calibration rows none is held out: calibration needs them all, and a
#: score on a handful of rows says little.
MIN_ROWS_TO_SPLIT = 50


@dataclass
class OutputScore:
    """One output of a file against the same output of the Keras model.

    Attributes:
      name: the output's name in the file.
      rows: how many rows were compared.
      agreement: the fraction of rows whose argmax over the last axis is the same (top-1
        agreement), for classifier-shaped outputs (a last axis of 2 or more, rank 2 or
        more; segmentation maps compare every position); None for the others.
      max_error: max abs difference.
      mean_error: mean abs difference.
      sqnr_db: signal-to-quantization-noise ratio, 10 log10(sum(ref^2) / sum(err^2)), in
        dB (inf when the file is exact).
    """

    name: str
    rows: int
    agreement: float | None
    max_error: float
    mean_error: float
    sqnr_db: float

    def as_dict(self) -> dict:
        return asdict(self)


def top1_agreement(reference: ArrayLike, got: ArrayLike) -> float | None:
    """Fraction of positions whose argmax over the last axis agree, or None where the
    output is not classifier-shaped (rank < 2 or a last axis of 1)."""
    reference, got = np.asarray(reference), np.asarray(got)
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(reference, -1) == np.argmax(got, -1)))


def sqnr_db(reference: ArrayLike, got: ArrayLike) -> float:
    """10 log10 of the reference's energy over the error's: 20 dB is an error of a
    tenth of the signal (in RMS), each 6 dB about one bit more."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(got, np.float64) - reference) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def score(names: Sequence[str], reference: Sequence[ArrayLike],
          got: Sequence[ArrayLike]) -> list[OutputScore]:
    """An `OutputScore` per output: `reference` and `got` are lists of arrays in the
    order of `names`."""
    scores = []
    for name, want, have in zip(names, reference, got):
        want = np.asarray(want, np.float64)
        have = np.asarray(have, np.float64).reshape(want.shape)
        error = np.abs(have - want)
        scores.append(OutputScore(name, len(want), top1_agreement(want, have),
                                  float(error.max(initial=0.0)),
                                  float(error.mean()) if error.size else 0.0,
                                  sqnr_db(want, have)))
    return scores


def held_out_split(arrays, fraction=HELD_OUT, seed=0, minimum=MIN_ROWS_TO_SPLIT):
    """`(calibration, held_out)`: the rows of `arrays` (a list, one array per input, rows
    first) split at random, a `fraction` held out; `held_out` is None when there are
    fewer than `minimum` rows. Calibration rows keep their order."""
    rows = len(arrays[0])
    if rows < max(2, minimum):
        return arrays, None
    held = max(1, int(round(rows * fraction)))
    order = np.random.RandomState(seed).permutation(rows)
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return [a[keep] for a in arrays], [a[out] for a in arrays]


def lowest_agreement(scores: Sequence[OutputScore]) -> float | None:
    """The lowest top-1 agreement over the classifier-shaped outputs (None if none)."""
    found = [s.agreement for s in scores if s.agreement is not None]
    return min(found) if found else None


def evaluate(reference: Callable[[list], list], run: Callable[[list], list],
             inputs: list[np.ndarray], names: Sequence[str],
             chunk: int = 64) -> list[OutputScore]:
    """Scores of `run` (the file) against `reference` (the Keras model), both callables
    from a list of input batches to a list of output arrays, on the rows of `inputs`
    taken `chunk` rows at a time."""
    want, got = [], []
    for start in range(0, len(inputs[0]), chunk):
        batch = [a[start:start + chunk] for a in inputs]
        want.append(reference(batch))
        got.append(run(batch))
    joined = lambda parts: [np.concatenate([p[i] for p in parts]) for i in range(len(names))]
    return score(names, joined(want), joined(got))
