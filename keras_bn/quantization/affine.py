"""The affine mapping between real and integer values, and weights as int8 files hold them.

A TFLite integer tensor stands for real values `scale * (q - zero_point)`; an "int8-io"
file takes and returns such tensors, so whoever feeds it (our verification, a device)
quantizes the inputs and dequantizes the outputs with the scale and zero point the file
states for them.
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from keras_bn.flavour import DType


def quantize(x: ArrayLike, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """Real values `x` as the integers of a tensor with `scale` and `zero_point`:
    `round(x / scale) + zero_point`, saturated to `dtype`'s range (halves rounded away
    from zero, as TFLite's reference quantize kernel's `std::round`)."""
    info = np.iinfo(dtype)
    v = np.asarray(x, np.float64) / scale
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The real values `scale * (q - zero_point)` of integer tensor values `q`."""
    return (scale * (np.asarray(q, np.float64) - zero_point)).astype(np.float32)


def fake_quantize(weights: np.ndarray, channel_axes: Sequence[int], bits: int = 8) -> np.ndarray:
    """`weights` after TFLite's weight quantization, back in float: symmetric per channel
    (one scale per index of `channel_axes`, the output channels: `max|w| / 127` over the
    other axes), narrow range [-127, 127], halves rounded away from zero. Channels that
    are all zero stay zero. This is what the converter writes for the kernels of
    convolutions, depthwise convolutions and dense layers in the int8 modes; the
    difference from `weights` is the error that bias correction takes the mean of."""
    w = np.asarray(weights, np.float64)
    axes = tuple(a % w.ndim for a in np.atleast_1d(channel_axes))
    others = tuple(a for a in range(w.ndim) if a not in axes)
    levels = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(w), axis=others, keepdims=True) / levels
    safe = np.where(scale > 0, scale, 1.0)
    v = w / safe
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -levels, levels)
    return np.where(scale > 0, q * safe, 0.0)
