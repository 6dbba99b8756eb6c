"""Integer rounding simulated in float, differentiable: what quantization-aware training
runs in its forward pass (Jacob et al. 2018; Krishnamoorthi 2018, section 3).

Each function takes the tensor `ops` of a flavour (`keras.ops`, or
`keras_bn.flavours.tf_ops` for tf-keras) and returns the values an int8 file would hold,
back in float. The gradient is the straight-through estimator: the rounding passes the
gradient unchanged (`x + stop_gradient(q - x)`); where values saturate, the activation
gradient is zero, as TensorFlow's `fake_quant_with_min_max_vars`.

The grids are the converters' (`keras_bn.quantization.affine`): weights symmetric per
output channel, narrow range [-127, 127], halves rounded away from zero (what TFLite and
onnxruntime write); activations asymmetric per tensor over [-128, 127] with the range
widened to hold zero and the zero point rounded onto the grid (TFLite's "nudging").
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_bn.flavour import Tensor


def round_half_away(ops, v):
    """`v` rounded to integers, halves away from zero (`std::round`, as the converters;
    `keras.ops.round` rounds halves to even)."""
    return ops.sign(v) * ops.floor(ops.abs(v) + 0.5)


def _straight_through(ops, x, q):
    """`q` in the forward pass, the gradient of `x` in the backward pass."""
    return x + ops.stop_gradient(q - x)


def fake_quantize_weights(ops: Any, w: Tensor, reduce_axes: Sequence[int],
                          bits: int = 8) -> Tensor:
    """`w` on the symmetric per-channel grid of `bits`-bit weights: one scale per
    index of the axes not in `reduce_axes` (`max|w| / 127` for int8), narrow range,
    halves away from zero; a channel of zeros stays zero. Equals
    `keras_bn.quantization.affine.fake_quantize` (what the int8 files store)."""
    levels = float(2 ** (bits - 1) - 1)
    peak = ops.max(ops.abs(w), axis=tuple(reduce_axes), keepdims=True)
    scale = peak / levels
    safe = ops.where(scale > 0, scale, ops.ones_like(scale))
    q = ops.clip(round_half_away(ops, ops.stop_gradient(w) / safe), -levels, levels) * safe
    return _straight_through(ops, w, ops.where(scale > 0, q, ops.zeros_like(q)))


def activation_grid(low: float, high: float, bits: int = 8) -> tuple[float, int]:
    """`(scale, zero_point)` of an asymmetric `bits`-bit tensor whose real range is
    [low, high]: widened to hold zero, `scale = (high - low) / 255` for int8, and the zero
    point rounded onto [-128, 127] so that zero is exact. An empty (or unbounded) range
    gets a scale of 1 (every value is then 0, as the converters write a constant
    tensor). `grid` on numbers."""
    if not np.isfinite(float(high) - float(low)):
        return 1.0, 0
    scale, zero_point = grid(np, np.float64(low), np.float64(high), bits)
    return float(scale), int(zero_point)


def grid_bounds(low: float, high: float, bits: int = 8) -> tuple[float, float]:
    """The smallest and largest real values of the grid of `activation_grid(low,
    high)`: `(qmin - zero_point) * scale` and `(qmax - zero_point) * scale`. Given as a
    range, they give back that same grid under any rounding of the zero point (it is
    then an integer): TensorFlow's fake-quant ops and the converters that read them
    round halves of a step up where `grid` rounds them away from zero."""
    scale, zero_point = activation_grid(low, high, bits)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def grid(ops: Any, low: Tensor, high: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """The grid of `activation_grid` on any tensor `ops` (numpy included; tensors: ranges
    that training tracks): `(scale, zero_point)` as float tensors; an empty range gets
    a scale of 1 and zero point 0."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low, high = ops.minimum(low, 0.0), ops.maximum(high, 0.0)
    width = high - low
    empty = ops.logical_not(width > 0)
    scale = ops.where(empty, ops.ones_like(width), width / (qmax - qmin))
    zero_point = ops.clip(round_half_away(ops, qmin - low / scale), qmin, qmax)
    return scale, ops.where(empty, ops.zeros_like(zero_point), zero_point)


def fake_quantize_activations(ops: Any, x: Tensor, scale: Tensor, zero_point: Tensor,
                              bits: int = 8) -> Tensor:
    """`x` on the per-tensor grid `real = scale * (q - zero_point)`, `q` saturated to
    the `bits`-bit range; the gradient passes inside the range and is zero outside.
    `scale` and `zero_point` may be tensors (ranges that training tracks)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    clipped = ops.clip(x, low, high)  # its gradient is zero outside [low, high]
    q = round_half_away(ops, ops.stop_gradient(clipped) / scale) * scale
    return _straight_through(ops, clipped, q)
