"""Where the channels are in the kernels that post-training quantization edits, one place
per layer kind ("conv", "dense", "depthwise", "separable" of
`keras_bn.folding.kinds`), as pure functions of a layer's weights
(`{short weight name: array}`, channels last).

Keras lays kernels out as `[spatial..., in, out]` (Conv*D, Dense: `[in, out]`),
`[spatial..., in, multiplier]` (DepthwiseConv*D: output channel `c * multiplier + m`),
and SeparableConv*D as a depthwise kernel then a pointwise `[1..., in * multiplier,
out]`, with no bias or activation between them.
"""

import numpy as np

from keras_bn.quantization.affine import fake_quantize

#: tf-keras names the depthwise kernel `depthwise_kernel`, Keras 3 `kernel`.
_DEPTHWISE = ("depthwise_kernel", "kernel")
KINDS = ("conv", "dense", "depthwise", "separable")


def _depthwise_name(weights):
    return next(name for name in _DEPTHWISE if name in weights)


def quantized_axes(kind: str, weights: dict) -> dict:
    """`{weight name: channel axes}` of the weights TFLite quantizes per channel."""
    if kind in ("conv", "dense"):
        return {"kernel": (-1,)}
    if kind == "depthwise":
        return {_depthwise_name(weights): (-2, -1)}
    return {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)}


def scale_outputs(kind: str, weights: dict, s: np.ndarray) -> dict:
    """The weights with output channel `i` divided by `s[i]` (kernel and bias)."""
    new, s = dict(weights), np.asarray(s, np.float64)
    if kind == "depthwise":
        name = _depthwise_name(weights)
        new[name] = weights[name] / s.reshape(weights[name].shape[-2:])
    else:
        name = "pointwise_kernel" if kind == "separable" else "kernel"
        new[name] = weights[name] / s
    if weights.get("bias") is not None:
        new["bias"] = weights["bias"] / s
    return _same_dtypes(new, weights)


def scale_inputs(kind: str, weights: dict, s: np.ndarray) -> dict:
    """The weights with input channel `i` multiplied by `s[i]` (a conv of one group)."""
    new, s = dict(weights), np.asarray(s, np.float64)
    names = {"depthwise": _DEPTHWISE, "separable": ("depthwise_kernel",)}.get(kind, ("kernel",))
    name = next(n for n in names if n in weights)
    new[name] = weights[name] * s[:, None]
    return _same_dtypes(new, weights)


def _same_dtypes(new, old):
    return {k: np.asarray(v, np.asarray(old[k]).dtype) for k, v in new.items()}


def quantized(kind: str, weights: dict) -> dict:
    """The weights as TFLite's int8 modes write them (`fake_quantize` per output
    channel of each quantized kernel), back in float; the bias stays float."""
    new = dict(weights)
    for name, axes in quantized_axes(kind, weights).items():
        new[name] = fake_quantize(weights[name], axes).astype(weights[name].dtype)
    return new


def error_terms(kind: str, weights: dict) -> list:
    """Weights (without bias) whose layer outputs sum to `W_q x - W x`, the error the int8
    kernels `quantized(kind, weights)` add to the layer's output for any input `x`. A
    layer linear in its kernel needs one term, the kernel error `W_q - W`; a separable
    convolution, bilinear in its two kernels `D` and `P`, two:
    `(D_q - D, P_q)` and `(D, P_q - P)`."""
    q = quantized(kind, weights)
    error = {name: (q[name].astype(np.float64) - weights[name]).astype(weights[name].dtype)
             for name in quantized_axes(kind, weights)}
    if kind != "separable":
        return [error]
    return [{"depthwise_kernel": error["depthwise_kernel"],
             "pointwise_kernel": q["pointwise_kernel"]},
            {"depthwise_kernel": weights["depthwise_kernel"],
             "pointwise_kernel": error["pointwise_kernel"]}]
