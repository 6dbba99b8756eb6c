"""Numerical check of a rewritten model against the original, in inference mode."""

import numpy as np

from keras_bn import flavour
from keras_bn.errors import VerificationError  # noqa: F401  (raised here, re-exported)
from keras_bn.layers.find import all_layers


def random_inputs(model, batch=2, unknown_dim=32, seed=0):
    """Random inputs of the model's input shapes: normal floats, small integers for int
    inputs; unknown non-batch dimensions become `unknown_dim`."""
    rs = np.random.RandomState(seed)
    arrays = []
    for spec in model.inputs:
        shape = [batch] + [unknown_dim if d is None else d for d in spec.shape[1:]]
        dtype = spec.dtype.as_numpy_dtype if hasattr(spec.dtype, "as_numpy_dtype") else spec.dtype
        if np.issubdtype(dtype, np.integer):
            arrays.append(rs.randint(0, 2, shape).astype(dtype))
        else:
            arrays.append(rs.randn(*shape).astype(dtype))
    return arrays


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
    eps = max([_EPS.get(str(getattr(layer, "compute_dtype", None)), 0.0)
               for layer in all_layers(model)] + [0.0])
    return max(FLOAT32_RTOL, 10 * eps)  # 10 float32 ulps (1.2e-6) stay below 1e-5


def compare(expected, actual, rtol, atol, what):
    """Max abs error over all outputs, against `rtol * max|expected| + atol`.

    Returns:
      `(max_error, tolerance)`.

    Raises:
      VerificationError: when an output's shape differs, holds NaN/Inf, or the error
        exceeds tolerance.
    """
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
    tolerance = rtol * scale + atol
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
        raise VerificationError(
            f"{what}: outputs differ by up to {error:.3g}, beyond the tolerance "
            f"{tolerance:.3g} (rtol {rtol:g} x output scale {scale:.3g} + atol {atol:g}).")
    return error, tolerance
