"""One options object for post-training quantization, taken by every exporter.

`QuantizationOptions` carries every choice (the mode, the calibration rows, the range
estimator, the techniques, the evaluation rows and the agreement gate), as onnxruntime's
`StaticQuantConfig` does, so that `to_tflite` and `to_onnx` take the same object and make
the same decisions from it (`prepared`): the same calibration rows, the same held-out
rows, the same techniques on the folded model. Importing this module imports neither
TensorFlow nor Keras (the command line reads `MODES` from it).
"""

from dataclasses import dataclass, replace
from typing import Any

from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model

#: Mode -> what it is for. None is float32.
MODES = {
    None: "float32: the reference; what the model computes, in every runtime.",
    "dynamic": "int8 weights, float activations (dynamic-range quantization): about a "
               "quarter of the size, no calibration data, usually the closest to the float "
               "model of the int8 modes; runs where float kernels run (CPUs).",
    "float16": "float16 weights (and, in ONNX, float16 compute behind float32 inputs and "
               "outputs): half the size, float32's answers to about 1e-3; for GPUs.",
    "int8": "full integer: int8 weights and activations with float inputs and outputs, "
            "calibrated on representative data; the fastest on CPUs and the mode of "
            "integer-only kernels, behind float inputs and outputs.",
    "int8-io": "full integer with int8 inputs and outputs too, for accelerators (Edge "
               "TPU, NPUs) and microcontrollers that take no float tensor; the caller "
               "quantizes inputs and dequantizes outputs with the file's scale and "
               "zero point (TFLite only).",
    "int16x8": "integer only with int8 weights and int16 activations: 256 times finer "
               "activations than int8 at twice their memory, for the layers int8 "
               "activations cannot resolve; calibrated like int8 (TFLite: the converter's "
               "16x8 mode; ONNX: int16 QuantizeLinear/DequantizeLinear).",
}

#: The modes each format can write.
FORMAT_MODES = {"tflite": (None, "dynamic", "float16", "int8", "int8-io", "int16x8"),
                "onnx": (None, "dynamic", "float16", "int8", "int16x8")}

#: The modes calibrated on data (activation ranges).
CALIBRATED = ("int8", "int8-io", "int16x8")

#: The modes whose files can keep some layers in float (`float_fallback`): the int8 files
#: both converters quantize layer by layer (TFLite's int16x8 goes through its older
#: quantizer, which takes no list of layers to leave).
FALLBACK_MODES = {"tflite": ("int8", "int8-io"), "onnx": ("int8", "int16x8")}

#: Range estimators (`keras_bn.quantization.ranges`).
ESTIMATORS = ("minmax", "percentile", "mse")

#: The post-training techniques, in the order they run (equalization changes the weights
#: that bias correction then quantizes).
TECHNIQUES = ("equalization", "bias_correction")

_FORMATS = {"tflite": "TFLite", "onnx": "ONNX"}


@dataclass(frozen=True)
class QuantizationOptions:
    """How an exporter quantizes a model: every choice in one object.

    `keras_bn.export.to_tflite(model, path, quantize=options)` and
    `keras_bn.export.to_onnx(model, path, quantize=options)` take the same object; from
    the same calibration rows they hold out the same rows, run the same techniques on the
    folded Keras model and estimate ranges the same way, so both files are quantized
    from one calibration. A mode name alone (`quantize="float16"`) is short for
    `QuantizationOptions("float16")`.

    Args:
      mode: None (float32), "dynamic", "float16", "int8", "int8-io" (TFLite only) or
        "int16x8"; `MODES` says what each is for.
      calibration: Calibration inputs of the calibrated modes ("int8", "int8-io",
        "int16x8"): an array (one input), a list with one array per input, or a dict by
        input name; rows are samples (a few hundred typical inputs).
      calibration_rows: At most this many calibration rows are used.
      ranges: How each activation's range is estimated from the calibration data
        (`keras_bn.quantization.ranges`): "minmax" (the converters' own), "percentile"
        (0.01 to 99.99 %) or "mse" (least expected squared error); int8 modes.
      equalization: Cross-layer equalization of consecutive layers on the calibration
        data before conversion (`keras_bn.quantization.equalization`; exact in float).
        Off by default: in the int8 study (docs/quantization.md) it helped some nets and cost
        SQNR on a dense one.
      bias_correction: Remove from each bias the mean shift its int8 weights cause on
        the calibration data (`keras_bn.quantization.bias_correction`). None (default):
        on in the calibrated modes (it raised SQNR on every model of the study).
      evaluation: Inputs (as `calibration`) to score the file on against the Keras model
        (top-1 agreement, errors, SQNR). Without them a calibrated file is scored on 20 %
        of the calibration rows (given 50 or more), held out at random (seed 0) and not
        calibrated on; other files on the exporter's `samples` when given.
      min_agreement: Fail (VerificationError, no file written) when an output's top-1
        agreement with the Keras model on the evaluation rows is below this fraction
        (0.99: 99 %); needs an output with a class axis and rows to score on.
      float_fallback: With `min_agreement`, instead of failing, keep the layers whose
        quantization harms the answers most in float, fewest first, until the evaluation
        rows reach `min_agreement` (`keras_bn.quantization.fallback`); the result names
        each layer kept in float and what it cost in size and latency. The file is then
        no longer integer only. Calibrated int8 modes (`FALLBACK_MODES`).
      reference: The Keras model the file is scored against (and `min_agreement`
        judged by): None, the model exported. For a quantization-aware model's file
        give the float model it was made from: the model exported is the QAT model,
        whose simulated int8 forward the file matches by construction, so its own
        score says nothing about the float model's answers. Same inputs and outputs.
        Float fallback still ranks the layers by what their rounding changes in the
        model exported, and stops once the file agrees `min_agreement` with this one.
    """

    mode: str | None = None
    calibration: Any = None
    calibration_rows: int = 200
    ranges: str = "minmax"
    equalization: bool = False
    bias_correction: bool | None = None
    evaluation: Any = None
    min_agreement: float | None = None
    float_fallback: bool = False
    reference: Any = None

    @property
    def calibrated(self) -> bool:
        """Whether the mode calibrates activation ranges on data."""
        return self.mode in CALIBRATED

    def techniques(self) -> tuple[str, ...]:
        """The post-training techniques to run, in order."""
        correct = self.calibrated if self.bias_correction is None else self.bias_correction
        return tuple(name for name, on in zip(TECHNIQUES, (self.equalization, correct)) if on)


@dataclass(frozen=True)
class Prepared:
    """What an exporter does, decided from `QuantizationOptions` for one model.

    Attributes:
      options: the options, their calibration rows as a list of arrays in the model's
        input order (held-out rows removed).
      scored: the rows the file is scored on (a list of arrays) or None.
      scored_on: which rows those are, for the report.
      learned: the file takes the model's learned activation ranges (a calibrated
        quantization-aware model in an int8 mode): no calibration, no technique.
    """

    options: QuantizationOptions
    scored: list | None = None
    scored_on: str = ""
    learned: bool = False

    @property
    def rows(self) -> list | None:
        """The calibration rows (a list of arrays, one per input), or None."""
        return self.options.calibration


def as_options(quantize: str | QuantizationOptions | None) -> QuantizationOptions:
    """`quantize` (None, a mode name, or `QuantizationOptions`) as `QuantizationOptions`."""
    if isinstance(quantize, QuantizationOptions):
        return quantize
    if quantize is None or isinstance(quantize, str):
        return QuantizationOptions(quantize)
    raise InputError(f"quantize={quantize!r}: give a mode name {_modes(None)} or a "
                     "keras_bn.quantization.QuantizationOptions.")


def _modes(fmt):
    return tuple(m for m in (FORMAT_MODES[fmt] if fmt else MODES) if m is not None)


#: The modes that write a quantization-aware model's learned int8 ranges.
LEARNED_MODES = ("int8", "int8-io")


def check(options: QuantizationOptions, fmt: str, name: str, learned: bool = False) -> None:
    """Raises InputError (one line naming the model, the value and the fix) when
    `options` cannot be used for a `fmt` ("tflite" or "onnx") file of model `name`;
    `learned`: the model carries learned activation ranges (quantization-aware
    training), which replace calibration."""
    what = f"{_FORMATS[fmt]} export of '{name}'"
    mode = options.mode
    if mode not in MODES:
        raise InputError(f"{what}: unknown quantization mode {mode!r}; use one of "
                         f"{_modes(fmt)} (or None for float32).")
    if mode not in FORMAT_MODES[fmt]:
        others = [f for f, modes in FORMAT_MODES.items() if mode in modes]
        raise InputError(f"{what}: {_FORMATS[fmt]} has no {mode!r} mode; use one of "
                         f"{_modes(fmt)}" + (f", or export to {_FORMATS[others[0]]}"
                                             if others else "") + ".")
    if learned:
        _check_learned(options, fmt, what)
        return
    if options.ranges not in ESTIMATORS:
        raise InputError(f"{what}: ranges={options.ranges!r}; use one of {ESTIMATORS}.")
    if options.ranges != "minmax" and mode not in ("int8", "int8-io"):
        raise InputError(f"{what}: ranges={options.ranges!r} estimates int8 activation "
                         f"ranges; use mode 'int8' (not {mode!r}), or ranges='minmax'.")
    applied = options.techniques()
    if applied and not options.calibrated:
        raise InputError(f"{what}: {' and '.join(applied)} work on calibration data; use "
                         f"a calibrated mode {CALIBRATED} (not {mode!r}), or leave them off.")
    if options.calibrated and options.calibration is None:
        raise InputError(f"{what}: mode {mode!r} needs calibration data: typical inputs (a "
                         "few hundred rows of the training data) to calibrate the ranges; "
                         f"give quantize=QuantizationOptions({mode!r}, calibration=rows).")
    if not options.calibrated and options.calibration is not None:
        raise InputError(f"{what}: mode {mode!r} takes no calibration data; use a "
                         f"calibrated mode {CALIBRATED}, or leave calibration out.")
    if options.calibration_rows < 1:
        raise InputError(f"{what}: calibration_rows={options.calibration_rows}; give at "
                         "least 1 (a few hundred is typical).")
    if options.float_fallback and options.min_agreement is None:
        raise InputError(f"{what}: float_fallback keeps layers in float until the file "
                         "reaches min_agreement; give min_agreement too (0.99 for 99 %).")
    if options.float_fallback and mode not in FALLBACK_MODES[fmt]:
        raise InputError(f"{what}: float_fallback is for mode "
                         f"{' or '.join(map(repr, FALLBACK_MODES[fmt]))} in "
                         f"{_FORMATS[fmt]}, not {mode!r}.")
    if options.min_agreement is not None and not 0 <= options.min_agreement <= 1:
        raise InputError(f"{what}: min_agreement={options.min_agreement!r}; give a "
                         "fraction between 0 and 1 (0.99 for 99 %).")


def _check_learned(options, fmt, what):
    """The checks of a model with learned int8 ranges: an int8 mode, nothing that would
    change its weights or ranges."""
    mode, learned = options.mode, f"{what}: the model carries learned int8 activation ranges"
    if mode not in LEARNED_MODES:
        modes = " or ".join(repr(m) for m in LEARNED_MODES if m in FORMAT_MODES[fmt])
        raise InputError(f"{learned} (quantization-aware training): export it with mode "
                         f"{modes}, not {mode!r}; for a {mode or 'float32'} file export "
                         "keras_bn.quantization.inference_model(model, activations=False).")
    changes = [n for n, on in (("equalization", options.equalization),
                               ("bias_correction", options.bias_correction),
                               ("float_fallback", options.float_fallback)) if on]
    if changes:
        raise InputError(f"{learned}: {' and '.join(changes)} would change the weights or "
                         "ranges training learned; leave them off.")
    if options.ranges != "minmax":
        raise InputError(f"{learned}, which the file keeps: ranges={options.ranges!r} "
                         "estimates new ones; leave ranges out.")
    if options.calibration_rows < 1:
        raise InputError(f"{what}: calibration_rows={options.calibration_rows}; give at "
                         "least 1.")
    if options.min_agreement is not None and not 0 <= options.min_agreement <= 1:
        raise InputError(f"{what}: min_agreement={options.min_agreement!r}; give a "
                         "fraction between 0 and 1 (0.99 for 99 %).")


def prepared(quantize: str | QuantizationOptions | None, model: Model, fmt: str,
             verify: bool = True, samples: Inputs | None = None) -> Prepared:
    """The checked `Prepared` decisions of `quantize` (see `as_options`) for a `fmt` file
    of `model`: calibration and evaluation rows checked against the model's inputs
    (`keras_bn.verification.model_inputs`), the held-out split, the agreement gate.

    Raises:
      InputError: see `check`; data that does not fit the model's inputs; a
        `min_agreement` that cannot be judged (no class axis, no rows).
    """
    from keras_bn.quantization import scoring
    from keras_bn.verification import model_inputs

    from keras_bn.quantization.inference import state

    options = as_options(quantize)
    learned = state(model).learned
    check(options, fmt, model.name, learned)
    if learned:  # no technique: the weights are the trained ones
        options = replace(options, bias_correction=False)
    if options.calibrated and options.calibration is not None:
        options = replace(options, calibration=model_inputs(
            model, options.calibration, "calibration data"))
    scored, scored_on = None, ""
    if options.evaluation is not None:
        scored = model_inputs(model, options.evaluation, "evaluation data")
        scored_on = f"evaluation data ({len(scored[0])} rows)"
    elif learned and options.calibration is not None and verify:  # none calibrates
        scored = options.calibration
        scored_on = (f"calibration rows ({len(scored[0])}; the ranges are the learned "
                     "ones)")
    elif options.calibrated and verify and not learned:
        rows, held_out = scoring.held_out_split(options.calibration)
        if held_out is not None:
            scored, options = held_out, replace(options, calibration=rows)
            scored_on = (f"held-out calibration rows ({len(held_out[0])} of "
                         f"{len(rows[0]) + len(held_out[0])}, not calibrated on)")
    if scored is None and samples is not None:
        scored = model_inputs(model, samples, "samples")
        scored_on = f"samples ({len(scored[0])} rows)"
    _check_min_agreement(model, options.min_agreement, scored)
    if options.reference is not None:
        _check_reference(model, options.reference, scored)
    return Prepared(options, scored, scored_on, learned)


def _check_reference(model, reference, rows):
    """A `reference` that can score `model`'s file: a Keras model with its outputs,
    taking the rows scored on."""
    from keras_bn.verification import model_inputs

    shapes = lambda m: [tuple(o.shape)[1:] for o in m.outputs]  # noqa: E731
    if not hasattr(reference, "outputs") or shapes(reference) != shapes(model):
        got = shapes(reference) if hasattr(reference, "outputs") else type(reference).__name__
        raise InputError(f"reference for '{model.name}': {got} does not give the model's "
                         f"outputs {shapes(model)}; give the float model the "
                         "quantization-aware one was made from.")
    if rows is not None:
        model_inputs(reference, rows, f"the rows scored on, for reference '{reference.name}'")


def _check_min_agreement(model, min_agreement, rows):
    if min_agreement is None:
        return
    shapes = [tuple(o.shape) for o in model.outputs]
    if not any(len(s) >= 2 and (s[-1] or 0) >= 2 for s in shapes):
        raise InputError(f"min_agreement for '{model.name}': no output has a class axis "
                         f"(output shapes {shapes}); top-1 agreement cannot be judged.")
    if rows is None:
        raise InputError(f"min_agreement for '{model.name}': no rows to judge it on; give "
                         "evaluation data (or samples, or calibration data).")
