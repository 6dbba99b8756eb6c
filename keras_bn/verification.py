"""Numerical verification shared by fold, the exporters, quantization and the CLI: a
model's outputs in inference mode (`predict`), the inputs to check on (`model_inputs`,
`random_inputs`, `verification_batches`), and the check of a rewritten model or a file
against the original (`check_outputs`), held to a floor plus the model's own rounding
noise (its float64 twin, `float32_noise`)."""

from dataclasses import dataclass

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError, VerificationError
from keras_bn.layers.find import all_layers
from keras_bn.memo import LastModel, weights_digest


def random_inputs(model, batch=2, unknown_dim=32, seed=0):
    """Random inputs of the model's input shapes, in the range the model says it takes:
    uniform over the range a first Rescaling layer maps to [0, 1] or [-1, 1] (images in
    [0, 255] for `Rescaling(1/255)` or `Rescaling(1/127.5, offset=-1)`), normal with the
    mean and variance of a first Normalization layer, else standard normal floats; small
    integers for integer inputs. Unknown non-batch dimensions become `unknown_dim`."""
    rs = np.random.RandomState(seed)
    arrays = []
    for spec, first in zip(model.inputs, _first_layers(model)):
        shape = [batch] + [unknown_dim if d is None else d for d in spec.shape[1:]]
        dtype = spec.dtype.as_numpy_dtype if hasattr(spec.dtype, "as_numpy_dtype") else spec.dtype
        if np.issubdtype(dtype, np.integer):
            arrays.append(rs.randint(0, 2, shape).astype(dtype))
        else:
            arrays.append(_draw(first, shape, rs).astype(dtype))
    return arrays


def verification_batches(model, samples):
    """`(batches, description)`: `[samples]` as the model's inputs, or one random batch
    of 2 in the model's input range (`random_inputs`)."""
    if samples is None:
        return [random_inputs(model)], "random (batch 2, in the model's input range)"
    arrays = model_inputs(model, samples, "samples")
    return [arrays], f"samples ({len(arrays[0])} rows)"


def _first_layers(model):
    """For each model input, the one layer that reads it (None where several do)."""
    readers: dict[int, list] = {}
    plumbing = flavour.of(model)
    for layer in model.layers:
        if plumbing.is_input_layer(layer):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            tensors = node.input_tensors
            for tensor in tensors if isinstance(tensors, (list, tuple)) else [tensors]:
                readers.setdefault(id(tensor), []).append(layer)
    return [found[0] if len(found := readers.get(id(t), [])) == 1 else None
            for t in model.inputs]


def _draw(first, shape, rs):
    """Floats of `shape` in the input range of the layer `first` (see `random_inputs`)."""
    layers = flavour.of(first).keras.layers if first is not None else None
    if layers is not None and isinstance(first, layers.Rescaling):
        scale = np.abs(np.asarray(first.scale, np.float64))
        offset = np.asarray(first.offset, np.float64)
        width = np.where(offset == 0, 1.0, 2.0 * np.abs(offset))  # onto [0,1] or [-1,1]
        return rs.uniform(0, 1, shape) * (width / np.maximum(scale, 1e-30))  # per channel
    if (layers is not None and isinstance(first, layers.Normalization)
            and not getattr(first, "invert", False) and getattr(first, "mean", None) is not None):
        mean = np.asarray(first.mean, np.float64)
        std = np.sqrt(np.maximum(np.asarray(first.variance, np.float64), 0))
        return mean + std * rs.randn(*shape)
    return rs.randn(*shape)


def predict(model, inputs):
    """The model's outputs in inference mode, as a list of float64 numpy arrays.

    The model is left exactly as it was: a layer called with `training=True` inside it
    (a BN that normalizes with batch statistics, say) updates its variables even here,
    so every variable a forward pass can update (the non-trainable ones: moving
    statistics, counters; trainable ones change only under an optimizer) is read before
    and written back after.
    """
    plumbing = flavour.of(model)
    variables = model.non_trainable_variables
    saved = plumbing.get_values(variables)
    try:
        outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
        return [np.asarray(o, np.float64)
                for o in plumbing.get_values(plumbing.flatten(outputs))]
    finally:
        plumbing.set_values(zip(variables, saved))


#: Machine epsilon of the dtypes a model may compute in.
_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23,
        "float64": 2.0 ** -52}
#: The fold tolerance (relative to the output scale) of a model computing in float32:
#: folding reorders float32 arithmetic in one layer per BN; measured errors are 1e-7 to
#: 2e-6 of the output scale (ResNet50 3e-7; the applications zoo in the README).
FLOAT32_RTOL = 1e-5


def default_rtol(model):
    """The fold tolerance for `model`, relative to its output scale.

    1e-5 when every layer computes in float32 or wider; with mixed precision 10 units in
    the last place of the narrowest compute dtype (float16 9.8e-3, bfloat16 7.8e-2):
    both models round every activation to it, and the folded one rounds its weights'
    products in another order.
    """
    return max(FLOAT32_RTOL, 10 * _compute_eps(model))  # 10 float32 ulps (1.2e-6) stay below 1e-5


#: How many times the model's own float32 rounding noise a result may differ by, on top
#: of `rtol * scale + atol`: a folded model (or an exported file) rounds in another order
#: than the original, so it can be off by the original's noise plus its own, and its own
#: can be the larger. Measured on every zoo model in float32 (`make zoo`, docs/zoo.md),
#: a correct fold's error was 0.14 to 4.8 times the original's noise (EfficientNetB2) and
#: at most 0.65 of its tolerance; 8 leaves that margin, and on a shallow net (noise ~1e-7
#: of its scale) still keeps the tolerance near the floor.
NOISE_MULTIPLE = 8


@dataclass
class Verdict:
    """What a numerical check measured.

    Attributes:
      max_error: max abs difference from the model's outputs over every batch.
      tolerance: the bound it was held to (None when only measured).
      noise: the model's own float32 rounding noise on the same inputs (see
        `float32_noise`), None when not measured.
      noise_note: how the noise was measured, or why it could not be.
      inputs: which inputs were used ("samples (N rows)" or "random ...").
      scale: the largest |output| of the model on them.
    """

    max_error: float | None = None
    tolerance: float | None = None
    scale: float | None = None
    noise: float | None = None
    noise_note: str = ""
    inputs: str = ""


def check_outputs(model, run, batches, rtol, atol, what, noise=None, check=True,
                  inputs=""):
    """Runs `run(inputs) -> [outputs]` on `batches` against `model` in inference mode.

    With `check`, each batch is held to the floor `rtol * scale + atol` first; only a
    result beyond it costs a measurement of the model's float32 noise on `batches` (a
    float64 twin; `noise` may give it: `(noise, note)` as `float32_noise` returned them
    for the same model and batches), and it then passes within the floor plus
    `NOISE_MULTIPLE` times the noise. Without `check`, the error is only measured.
    `inputs` describes the batches for the verdict.

    Returns:
      A `Verdict` (`noise` None, with the note saying so, where the floor sufficed).

    Raises:
      VerificationError: beyond tolerance, a shape mismatch, or NaN/Inf outputs.
    """
    expected = [predict(model, b) for b in batches]
    actual = [run(b) for b in batches]
    verdict = Verdict(inputs=inputs, scale=max(
        (float(np.max(np.abs(e))) if e.size else 0.0) for want in expected for e in want))
    if not check:
        verdict.max_error = max(
            max((float(np.max(np.abs(np.asarray(a, np.float64).reshape(e.shape) - e)))
                 if e.size else 0.0) for e, a in zip(want, got))
            for want, got in zip(expected, actual))
        return verdict
    if noise is not None:
        verdict.noise, verdict.noise_note = noise
    try:
        results = [compare(w, g, rtol, atol, what, verdict.noise, noise_label(verdict))
                   for w, g in zip(expected, actual)]
        if noise is None:
            verdict.noise_note = "not measured: the error is within the floor"
    except VerificationError:
        if noise is not None:
            raise
        verdict.noise, verdict.noise_note = float32_noise(model, batches, expected)
        results = [compare(w, g, rtol, atol, what, verdict.noise, noise_label(verdict))
                   for w, g in zip(expected, actual)]
    verdict.max_error = max(error for error, _ in results)
    verdict.tolerance = max(tolerance for _, tolerance in results)
    return verdict


def model_inputs(model, data, what):
    """`data` as a list of arrays in the model's input order, each in its input's dtype,
    checked against the model's input shapes (None matches any size).

    `data` is one array (a single-input model), a list with one array per input, or a
    dict from input name to array (an `.npz` file's arrays). `what` names the data in
    messages ("samples", "int8 calibration data").

    Raises:
      InputError: a missing or unknown input, a shape that does not fit, no rows, values
        that are not numbers, or inputs with different numbers of rows.
    """
    plumbing = flavour.of(model)
    names = plumbing.input_names(model)
    if isinstance(data, dict):
        unknown, missing = set(data) - set(names), [n for n in names if n not in data]
        if unknown or missing:
            raise InputError(f"{what} has arrays {sorted(data)}; the model's inputs are "
                             f"{names}: give one array per input, by name.")
        data = [data[n] for n in names]
    elif not isinstance(data, (list, tuple)):
        data = [data]
    if len(data) != len(names):
        raise InputError(f"{what} has {len(data)} array(s); '{model.name}' has "
                         f"{len(names)} inputs {names}: give one array per input.")
    arrays = [_fitting(np.asarray(d), spec, name, plumbing.numpy_dtype, what)
              for d, spec, name in zip(data, model.inputs, names)]
    rows = {len(a) for a in arrays}
    if len(rows) > 1:
        raise InputError(f"{what}: the arrays have different numbers of rows "
                         f"{sorted(rows)} for inputs {names}: row i of each is one sample.")
    return arrays


def _fitting(array, spec, name, numpy_dtype, what):
    """`array` as rows for the input `spec`, or an InputError saying why not."""
    want = tuple(spec.shape[1:])
    shown = "(rows, " + ", ".join("any" if d is None else str(d) for d in want) + ")"
    if array.ndim != len(want) + 1 or any(
            w is not None and w != got for w, got in zip(want, array.shape[1:])):
        raise InputError(f"{what} for input '{name}' has shape {array.shape}; the input "
                         f"takes {shown}.")
    if len(array) == 0:
        raise InputError(f"{what} for input '{name}' has no rows; give a few hundred "
                         "typical inputs.")
    if array.dtype.kind not in "biuf":  # bool, integers, floats: what a model input takes
        raise InputError(f"{what} for input '{name}' holds {array.dtype} values; give "
                         "numbers (integers or floats).")
    return array.astype(numpy_dtype(spec))


def float32_noise(model, batches, expected=None):
    """`(noise, note)`: how far rounding alone moves the model's outputs on `batches`
    (lists of input arrays), as `note` says: for a model computing in float32 (or
    narrower), the max abs difference between the model and the same weights computing
    in float64 (`rewrite.in_float64`); for a model computing in float64 already, the max
    abs change of its outputs when every float input moves by one unit in the last place
    (`_ulp_noise`: what float64 rounding of the inputs alone does, which a chaotic deep
    net amplifies as it amplifies its own rounding). None, with the reason as `note`,
    where the float64 twin cannot be built or run. `expected`: the model's outputs on
    `batches`, if known."""
    if _compute_eps(model) <= _EPS["float64"]:
        return _ulp_noise(model, batches, expected), ("computes in float64: outputs "
                                                      "moved by a one-ulp change of the inputs")
    try:
        twin = _float64_twin(model)
        noise = 0.0
        for k, inputs in enumerate(batches):
            ours = expected[k] if expected is not None else predict(model, inputs)
            wide = [np.asarray(x).astype(np.float64) if np.issubdtype(np.asarray(x).dtype,
                                                                      np.floating) else x
                    for x in inputs]
            noise = max(noise, _max_difference(ours, predict(twin, wide)))
    except Exception as error:  # noqa: BLE001 - any layer that cannot run in float64
        return None, f"float64 twin failed: {type(error).__name__}: {str(error)[:200]}"
    return noise, "float32 against float64, same weights and inputs"


def _max_difference(outputs, others):
    return max([float(np.max(np.abs(a - b))) if a.size else 0.0
                for a, b in zip(outputs, others)] + [0.0])


def _ulp_noise(model, batches, expected=None, seed=0):
    """Max abs change of `model`'s outputs when each float input value moves one float64
    unit in the last place, up or down at random (integer inputs stay). A model whose
    inputs are float32 rounds that change away and gets no allowance: strict, never the
    2^29 times larger one a float32 ulp would give."""
    rs = np.random.RandomState(seed)
    noise = 0.0
    for k, inputs in enumerate(batches):
        ours = expected[k] if expected is not None else predict(model, inputs)
        moved = []
        for x in inputs:
            x = np.asarray(x)
            if np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float64)
                x = np.nextafter(x, np.where(rs.rand(*x.shape) < 0.5, -np.inf, np.inf))
            moved.append(x)
        noise = max(noise, _max_difference(ours, predict(model, moved)))
    return noise


#: The float64 twin of the last model measured. One entry, so a second check of the same
#: model (the CLI's ONNX and TFLite files, `to_onnx` then `to_tflite`) does not rebuild
#: it, and at most one twin is held; it goes with its model, and a change of the model's
#: weights rebuilds it.
_LAST_TWIN = LastModel()


def _float64_twin(model):
    from keras_bn.folding.rewrite import in_float64

    return _LAST_TWIN.get(model, weights_digest(model), lambda: in_float64(model))


def _compute_eps(model):
    """Machine epsilon of the narrowest float dtype the model computes in."""
    return max([_EPS.get(str(getattr(layer, "compute_dtype", None)), 0.0)
                for layer in all_layers(model)] + [0.0])


def noise_label(verdict: Verdict) -> str:
    """What a verdict's noise is: "float32 noise", or for a model computing in float64
    "float64 rounding noise" (`float32_noise`)."""
    return ("float64 rounding noise" if verdict.noise_note.startswith("computes in float64")
            else "float32 noise")


def compare(expected, actual, rtol, atol, what, noise=None, label="float32 noise"):
    """Max abs error over all outputs, against `rtol * max|expected| + atol`, plus
    `NOISE_MULTIPLE` times the model's own float32 `noise` when it was measured (`label`
    names it in the message).

    Returns:
      `(max_error, tolerance)`.

    Raises:
      VerificationError: when an output's shape differs, holds NaN/Inf, or the error
        exceeds tolerance.
    """
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
    tolerance = rtol * scale + atol + NOISE_MULTIPLE * (noise or 0.0)
    error = 0.0
    for i, (e, a) in enumerate(zip(expected, actual)):
        a = np.asarray(a, np.float64).reshape(e.shape) if np.size(a) == e.size else a
        if np.shape(a) != e.shape:
            raise VerificationError(f"{what}: output {i} has shape {np.shape(a)}, "
                                    f"expected {e.shape}")
        bad = int(np.sum(~np.isfinite(a)) + np.sum(~np.isfinite(e)))
        if bad:
            raise VerificationError(f"{what}: output {i} holds {bad} NaN/Inf values (in "
                                    "either model), so the two cannot be compared.")
        error = max(error, float(np.max(np.abs(a - e))) if e.size else 0.0)
    if not error <= tolerance:
        noise_part = (f" + {NOISE_MULTIPLE} x the model's own {label} {noise:.3g}"
                      if noise is not None else "")
        raise VerificationError(
            f"{what}: outputs differ by up to {error:.3g}, beyond the tolerance "
            f"{tolerance:.3g} (rtol {rtol:g} x output scale {scale:.3g} + atol {atol:g}"
            f"{noise_part}).")
    return error, tolerance
