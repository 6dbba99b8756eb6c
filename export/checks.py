"""What every exporter shares: the result object, parity and timing (the atomic write is
`keras_bn.files.output.atomic_path`)."""

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from keras_bn.folding import compare, default_rtol, predict, random_inputs


@dataclass
class ExportResult:
    """What an export produced and measured.

    Attributes:
      path: the written file.
      format: "onnx", "tflite", "tflite-float16" or "tflite-int8".
      size_bytes: the file's size.
      op_counts: operator type -> count in the exported graph.
      max_error: max abs difference from the Keras model in inference mode, over the
        random verification batch and `samples` (None without verification).
      tolerance: the bound `max_error` was checked against (None for quantized files,
        which are measured, not checked).
      accuracy: argmax accuracy on `samples`/`labels` when labels were given.
      keras_accuracy: the Keras model's accuracy on the same samples.
      latency_ms: median wall time of one batch of `latency_batch` in the runtime (None
        when not measured).
      latency_batch: the batch size timed.
      fold_plan: the FoldPlan when the model was folded first.
    """

    path: str
    format: str
    size_bytes: int = 0
    op_counts: dict = field(default_factory=dict)
    max_error: float = None
    tolerance: float = None
    accuracy: float = None
    keras_accuracy: float = None
    latency_ms: float = None
    latency_batch: int = None
    fold_plan: object = None


#: A float32 file's tolerance, relative to the output scale: the runtimes' kernels sum
#: in another order than TensorFlow's; over a deep float32 network that reaches ~1e-5.
FILE_RTOL = 1e-4


def export_rtol(model, rtol=None):
    """`rtol`, or by default 1e-4 for a float32 model and the fold's mixed-precision
    tolerance (10 units in the last place of the compute dtype) for a float16 one."""
    return rtol if rtol is not None else max(FILE_RTOL, default_rtol(model))


def verification_inputs(model, samples):
    """A random batch of the model's input shapes, plus the user's `samples` if any."""
    batches = [random_inputs(model, batch=2)]
    if samples is not None:
        batches.append([np.asarray(s) for s in (samples if isinstance(samples, (list, tuple))
                                                 else [samples])])
    return batches


def parity(model, run, batches, rtol, atol, what, check=True):
    """Max abs error of `run(inputs) -> [outputs]` against the Keras model on `batches`.

    Raises:
      keras_bn.VerificationError: with `check`, when it exceeds `rtol * scale + atol`.
    """
    errors, tolerance = [], None
    for inputs in batches:
        expected = predict(model, inputs)
        actual = run(inputs)
        if check:
            error, tolerance = compare(expected, actual, rtol, atol, what)
        else:
            error = max(float(np.max(np.abs(np.asarray(a, np.float64).reshape(e.shape) - e)))
                        for e, a in zip(expected, actual))
        errors.append(error)
    return max(errors), tolerance


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
    """Fills in errors, accuracy and latency; raises through `parity` when `check`."""
    if verify:
        batches = verification_inputs(model, samples)
        if not check and samples is not None:
            # A quantized file is calibrated for real data: random inputs would only
            # measure saturation, so its error is reported on the samples alone.
            batches = batches[1:]
        result.max_error, result.tolerance = parity(model, run, batches, rtol, atol, what,
                                                    check)
    if labels is not None and samples is not None:
        batch = verification_inputs(model, samples)[-1]
        result.accuracy = accuracy(run(batch), labels)
        result.keras_accuracy = accuracy(predict(model, batch), labels)
    if latency_batch:
        result.latency_batch = latency_batch
        result.latency_ms = latency_ms(run, random_inputs(model, batch=latency_batch, seed=1))
