"""Folding math: pure numpy functions, one per layer kind, no Keras.

An inference-mode BN is the per-channel affine map `y = a * x + b` with
`a = gamma / sqrt(moving_variance + epsilon)` and `b = beta - moving_mean * a`
(`bn_affine`). Folding moves that map into the weights of the linear layer next to it:

* *BN after a layer* (`layer -> BN`): scale the layer's output channels by `a` and map the
  bias to `a * bias + b`. Exact for every linear layer.
* *BN before a layer* (`BN -> layer`): scale the layer's input channels by `a` and add the
  layer's response to the constant `b` to its bias. Exact when every output sees the whole
  kernel window of real inputs (Dense; 'valid' or 1x1 convolutions), not with zero padding.

Kernel layouts are tf-keras's: Conv `(*spatial, in / groups, out)`, Dense `(in, out)`,
DepthwiseConv `(*spatial, in, depth_multiplier)` with output channel `c * m + q` at
`[..., c, q]`, ConvTranspose `(*spatial, out, in)`. A missing bias is passed as `None`
(it becomes zeros); every function returns new arrays and never changes its inputs.
"""

import numpy as np


def bn_affine(mean, variance, epsilon, gamma=None, beta=None):
    """The inference BN as `(a, b)` with `y = a * x + b`, in float64.

    `gamma=None` (`scale=False`) means ones, `beta=None` (`center=False`) means zeros.
    """
    mean = np.asarray(mean, np.float64)
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
    a = gamma / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    return a, beta - mean * a


def compose_affine(first, second):
    """The affine map `(a, b)` of applying `first`, then `second` (two BNs in a row)."""
    (a1, b1), (a2, b2) = first, second
    return a2 * a1, a2 * b1 + b2


def _bias(bias, channels, dtype):
    return np.zeros(channels, dtype) if bias is None else np.asarray(bias)


def _cast(kernel, bias, dtype):
    return kernel.astype(dtype), bias.astype(dtype)


# -- BN after the layer ------------------------------------------------------------------

def fold_bn_after_conv(kernel, bias, a, b):
    """Conv1D/2D/3D (any `groups`) and Dense -> BN: output channels on the last axis."""
    kernel = np.asarray(kernel)
    bias = _bias(bias, kernel.shape[-1], kernel.dtype)
    return _cast(kernel * a, a * bias + b, kernel.dtype)


fold_bn_after_dense = fold_bn_after_conv


def fold_bn_after_depthwise(kernel, bias, a, b):
    """DepthwiseConv1D/2D -> BN: output channel `c * m + q` is `kernel[..., c, q]`."""
    kernel = np.asarray(kernel)
    channels, multiplier = kernel.shape[-2:]
    bias = _bias(bias, channels * multiplier, kernel.dtype)
    scaled = kernel * np.reshape(a, (channels, multiplier))
    return _cast(scaled, a * bias + b, kernel.dtype)


def fold_bn_after_separable(depthwise_kernel, pointwise_kernel, bias, a, b):
    """SeparableConv1D/2D -> BN: only the pointwise kernel (and bias) change.

    Returns:
      `(depthwise_kernel, pointwise_kernel, bias)`.
    """
    pointwise, bias = fold_bn_after_conv(pointwise_kernel, bias, a, b)
    return np.array(depthwise_kernel), pointwise, bias


def fold_bn_after_conv_transpose(kernel, bias, a, b):
    """Conv1D/2D/3DTranspose -> BN: output channels on kernel axis -2."""
    kernel = np.asarray(kernel)
    bias = _bias(bias, kernel.shape[-2], kernel.dtype)
    return _cast(kernel * a[:, None], a * bias + b, kernel.dtype)


# -- BN before the layer -----------------------------------------------------------------

def fold_bn_before_dense(kernel, bias, a, b):
    """BN -> Dense: `W' = diag(a) W`, `bias' = bias + b W`."""
    kernel = np.asarray(kernel)
    bias = _bias(bias, kernel.shape[-1], kernel.dtype)
    w = kernel.astype(np.float64)
    return _cast(w * a[:, None], bias + b @ w, kernel.dtype)


def fold_bn_before_conv(kernel, bias, a, b, groups=1):
    """BN -> Conv1D/2D/3D (any `groups`), exact only without zero padding.

    Every output sums the whole kernel window, so the constant `b` adds
    `sum over window and input channels of W * b` to each output channel. With groups,
    output channel `o` reads input channels `g * in_g + i` of its group `g = o // out_g`.
    """
    kernel = np.asarray(kernel)
    bias = _bias(bias, kernel.shape[-1], kernel.dtype)
    w = kernel.astype(np.float64)
    in_g, out = w.shape[-2:]
    group_of = np.arange(out) // (out // groups)
    scale = np.reshape(a, (groups, in_g))[group_of].T  # (in_g, out)
    shift = np.reshape(b, (groups, in_g))[group_of].T
    window_sum = w.reshape(-1, in_g, out).sum(axis=0)
    return _cast(w * scale, bias + (window_sum * shift).sum(axis=0), kernel.dtype)


def fold_bn_before_depthwise(kernel, bias, a, b):
    """BN -> DepthwiseConv1D/2D, exact only without zero padding."""
    kernel = np.asarray(kernel)
    channels, multiplier = kernel.shape[-2:]
    bias = _bias(bias, channels * multiplier, kernel.dtype)
    w = kernel.astype(np.float64)
    window_sum = w.reshape(-1, channels, multiplier).sum(axis=0)  # (in, m)
    shift = (window_sum * b[:, None]).reshape(-1)
    return _cast(w * a[:, None], bias + shift, kernel.dtype)


def fold_bn_before_separable(depthwise_kernel, pointwise_kernel, bias, a, b):
    """BN -> SeparableConv1D/2D, exact only without zero padding: the depthwise kernel
    takes the scale, the constant `b` passes through both kernels into the bias.

    Returns:
      `(depthwise_kernel, pointwise_kernel, bias)`.
    """
    depthwise, shift = fold_bn_before_depthwise(depthwise_kernel, None, a, b)
    pointwise = np.asarray(pointwise_kernel)
    bias = _bias(bias, pointwise.shape[-1], pointwise.dtype)
    w = pointwise.astype(np.float64).reshape(-1, pointwise.shape[-1])  # (in * m, out)
    return depthwise, pointwise.copy(), (bias + shift.astype(np.float64) @ w).astype(
        pointwise.dtype)
