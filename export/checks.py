"""What every exporter shares: the result object, parity, scores and timing (the atomic
write is `keras_bn.files.output.atomic_path`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from keras_bn.errors import VerificationError
from keras_bn.quantization import scoring
from keras_bn.verification import (check_outputs, default_rtol, predict, random_inputs,
                                   verification_batches)

if TYPE_CHECKING:
    from keras_bn.folding.plan import FoldPlan
    from keras_bn.quantization.fallback import Fallback
    from keras_bn.quantization.scoring import OutputScore
    from keras_bn.quantization.technique import Technique


@dataclass
class ExportResult:
    """What an export produced and measured.

    Attributes:
      path: the written file.
      format: "onnx" or "tflite", and "-" and the quantization mode where there is one
        ("tflite-int8", "onnx-float16", "tflite-int16x8", ...).
      size_bytes: the file's size.
      op_counts: operator type -> count in the exported graph.
      max_error: max abs difference from the Keras model in inference mode, on `samples`
        or, without them, a random batch in the model's input range (None without
        verification).
      tolerance: the bound `max_error` was checked against (None for quantized files,
        which are measured, not checked): `rtol * scale + atol` plus 8x `noise`.
      noise: the model's own float32 rounding noise on the same inputs (the model in
        float32 against its weights in float64), measured where the error exceeds the
        floor (`rtol * scale + atol`); None where the floor sufficed.
      verified_on: which inputs were used.
      accuracy: argmax accuracy on `samples`/`labels` when labels were given.
      keras_accuracy: the Keras model's accuracy on the same samples.
      latency_ms: median wall time of one batch of `latency_batch` in the runtime (None
        when not measured).
      latency_batch: the batch size timed.
      fold_plan: the FoldPlan when the model was folded first.
      evaluation: the file scored against the Keras model on data, one
        `keras_bn.quantization.scoring.OutputScore` per output (top-1 agreement, max and
        mean abs error, SQNR), or None when there were no rows to score it on. For a
        quantization-aware model that is its simulated int8 forward, not the float
        model it was trained from.
      evaluated_on: which rows `evaluation` used.
      post_training: the `keras_bn.quantization.technique.Technique` records of what
        was done to the folded model before a calibrated conversion, and of the ranges
        (empty: nothing).
      fallback: with `float_fallback`, the `keras_bn.quantization.fallback.Fallback`
        record: the layers kept in float, the agreement before and after, the integer
        file's size and latency; None otherwise.
      steps_off: for a quantization-aware model's file (its learned ranges), the
        largest difference between the file's outputs and the model's simulated
        forward, in steps of the output's int8 grid; None otherwise.
      steps_within: the fraction of output values within the steps each output allows
        (`keras_bn.quantization.inference.STEPS_OFF`), checked to be at least
        `STEPS_WITHIN`; None otherwise.
      steps_on: the rows both were measured on.
    """

    path: str
    format: str
    size_bytes: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    max_error: float | None = None
    tolerance: float | None = None
    noise: float | None = None
    verified_on: str = ""
    accuracy: float | None = None
    keras_accuracy: float | None = None
    latency_ms: float | None = None
    latency_batch: int | None = None
    fold_plan: FoldPlan | None = None
    evaluation: list[OutputScore] | None = None
    evaluated_on: str = ""
    post_training: list[Technique] = field(default_factory=list)
    fallback: Fallback | None = None
    steps_off: float | None = None
    steps_within: float | None = None
    steps_on: str = ""


#: A float32 file's tolerance, relative to the output scale: the runtimes' kernels sum
#: in another order than TensorFlow's; over a deep float32 network that reaches ~1e-5.
FILE_RTOL = 1e-4


def export_rtol(model, rtol=None):
    """`rtol`, or by default 1e-4 for a float32 model and the fold's mixed-precision
    tolerance (10 units in the last place of the compute dtype) for a float16 one."""
    return rtol if rtol is not None else max(FILE_RTOL, default_rtol(model))


def accuracy(outputs, labels):
    """Argmax accuracy of the first output against integer `labels`."""
    return float(np.mean(np.argmax(outputs[0], axis=-1) == np.asarray(labels)))


def latency_ms(run, inputs, repeats=10):
    """Median milliseconds of `run(inputs)` after one warm-up call: the runtime's own time
    when `run.seconds()` reports it (a runtime in a child process: the pipe is not the
    runtime's cost), else wall time."""
    run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        elapsed = time.perf_counter() - start
        times.append(run.seconds() if hasattr(run, "seconds") else elapsed)
    return 1e3 * statistics.median(times)


def measure(result, model, run, samples, labels, verify, rtol, atol, latency_batch, what,
             check=True):
    """Fills in errors, accuracy and latency; with `check`, raises VerificationError
    beyond tolerance. The inputs are those the fold was verified on, so the model's noise,
    where the fold measured it (`result.fold_plan`), serves here too."""
    batches, described = verification_batches(model, samples)
    if verify:
        plan = result.fold_plan
        known = (None if plan is None or plan.verdict is None or plan.verdict.noise is None
                 or plan.verdict.inputs != described
                 else (plan.verdict.noise, plan.verdict.noise_note))
        verdict = check_outputs(model, run, batches, rtol, atol, what, noise=known,
                                check=check, inputs=described)
        result.max_error, result.tolerance = verdict.max_error, verdict.tolerance
        result.noise, result.verified_on = verdict.noise, verdict.inputs
    if labels is not None and samples is not None:
        result.accuracy = accuracy(run(batches[0]), labels)
        result.keras_accuracy = accuracy(predict(model, batches[0]), labels)
    if latency_batch:
        result.latency_batch = latency_batch
        result.latency_ms = latency_ms(run, random_inputs(model, batch=latency_batch, seed=1))


#: Random rows `check_simulated` measures on when no rows are given.
SIMULATION_BATCH = 128


def check_simulated(result, model, run, ready, samples, what):
    """For a quantization-aware `model` exported with its learned ranges: measures the
    file (`run`) against the model's simulated forward (inference mode) in steps of
    each output's int8 grid (`result.steps_off`, `result.steps_within`), on the
    calibration rows of `ready` (a `keras_bn.quantization.options.Prepared`) where
    given, else on `samples`, else on `SIMULATION_BATCH` random rows, and raises
    VerificationError when fewer than `STEPS_WITHIN` of the values are within the
    steps each output allows (`keras_bn.quantization.inference.output_steps`): "what
    you train is what you ship"."""
    from keras_bn.quantization.inference import STEPS_WITHIN, output_steps

    if ready.rows is not None:
        rows, described = ready.rows, f"calibration rows ({len(ready.rows[0])})"
    elif samples is not None:
        batches, described = verification_batches(model, samples)
        rows = batches[0]
    else:  # enough values for a fraction to mean something
        rows = random_inputs(model, batch=SIMULATION_BATCH, seed=0)
        described = f"random inputs (batch {SIMULATION_BATCH}, in the model's input range)"
    worst, within, total = 0.0, 0, 0
    for got, want, (step, allowed) in zip(run(rows), predict(model, rows),
                                          output_steps(model)):
        if step is None:
            continue
        off = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) / step
        worst = max(worst, float(np.max(off)))
        within += int(np.sum(off <= allowed + 1e-3))  # float32 rounding of the step
        total += off.size
    if not total:
        return
    result.steps_off, result.steps_within = worst, within / total
    result.steps_on = described
    if result.steps_within < STEPS_WITHIN:
        raise VerificationError(
            f"{what}: {1 - result.steps_within:.1%} of the file's output values are more "
            f"than a step of the output's int8 grid from the quantization-aware model's "
            f"simulated forward on {described} (the largest {worst:.1f} steps; at most "
            f"{1 - STEPS_WITHIN:.0%} may be): it does not compute what was trained. Please "
            "report it with the model.")


def score(result, model, run, ready, outputs):
    """Scores the file (`run`) against the options' `reference`, else `model`, on the
    rows `ready` (a `keras_bn.quantization.options.Prepared`) names, into
    `result.evaluation`."""
    if ready is None or ready.scored is None:
        return
    reference = model if ready.options.reference is None else ready.options.reference
    result.evaluation = scoring.evaluate(lambda b: predict(reference, b), run, ready.scored,
                                         outputs)
    result.evaluated_on = ready.scored_on


def check_agreement(result, model, ready):
    """Raises VerificationError when the file's lowest top-1 agreement is below the
    options' `min_agreement`."""
    floor = None if ready is None else ready.options.min_agreement
    lowest = scoring.lowest_agreement(result.evaluation or [])
    if floor is not None and lowest is not None and lowest < floor:
        against = ("the Keras model" if ready.options.reference is None else
                   f"the reference '{ready.options.reference.name}'")
        raise VerificationError(
            f"{result.format} export of '{model.name}': top-1 agreement with {against} "
            f"{lowest:.2%} on {ready.scored_on}, below min_agreement {floor:.2%}. "
            "Try another mode ('dynamic' keeps float activations, 'int16x8' finer ones), "
            "more or more typical calibration data, or a lower minimum.")
