"""The registry of layer kinds that can absorb a BatchNormalization: one table, exact classes.

Each entry says, for one layer class exactly (never its subclasses: Conv2DTranspose
subclasses Conv2D but its kernel is laid out the other way round), how its output
channels absorb a BN that follows it (`after`), how its input channels absorb a BN in
front of it (`before`, or why they cannot), which weights that touches, and where its
channel axis is. The math is in `math`; this module only maps weights onto it. Adding a
layer kind is one entry.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from keras_bn import flavour
from keras_bn.flavour import Layer
from keras_bn.folding import math


#: `(weights, a, b, layer) -> weights`: a layer's weights by name (numpy arrays) with a
#: BN's per-channel scale `a` and shift `b` merged in.
WeightMap: TypeAlias = Callable[[dict[str, Any], Any, Any, Layer], dict[str, Any]]


@dataclass(frozen=True)
class LayerKind:
    """How one layer class absorbs a BN.

    Attributes:
      name: a short name for the kind ("conv", "dense", ...).
      after: `(weights, a, b, layer) -> weights` for `layer -> BN`, or None.
      before: `(weights, a, b, layer) -> weights` for `BN -> layer`, or None.
      no_before: why `before` is None.
      padded: whether the layer has `padding` (a BN before it is exact only without
        zero padding: 'valid', or a kernel of size 1).
    """

    name: str
    after: WeightMap | None = None
    before: WeightMap | None = None
    no_before: str = ""
    padded: bool = True


def _kernel_and_bias(fold, kernels=("kernel",), **options):
    """An `after`/`before` function for a layer whose BN touches its kernel (the first
    of the weight names `kernels` it has) and `bias`."""
    def apply(weights, a, b, layer):
        new = dict(weights)
        kernel = next(name for name in kernels if name in weights)
        new[kernel], new["bias"] = fold(weights[kernel], weights.get("bias"), a, b,
                                        **{k: getattr(layer, v) for k, v in options.items()})
        return new
    return apply


def _separable(fold):
    def apply(weights, a, b, layer):
        new = dict(weights)
        new["depthwise_kernel"], new["pointwise_kernel"], new["bias"] = fold(
            weights["depthwise_kernel"], weights["pointwise_kernel"], weights.get("bias"),
            a, b)
        return new
    return apply


_CONV = LayerKind("conv", after=_kernel_and_bias(math.fold_bn_after_conv),
                  before=_kernel_and_bias(math.fold_bn_before_conv, groups="groups"))
_DENSE = LayerKind("dense", after=_kernel_and_bias(math.fold_bn_after_dense),
                   before=_kernel_and_bias(math.fold_bn_before_dense), padded=False)
# tf-keras names the depthwise kernel `depthwise_kernel`, Keras 3 `kernel`.
_DEPTHWISE_KERNEL = ("depthwise_kernel", "kernel")
_DEPTHWISE = LayerKind(
    "depthwise", after=_kernel_and_bias(math.fold_bn_after_depthwise, _DEPTHWISE_KERNEL),
    before=_kernel_and_bias(math.fold_bn_before_depthwise, _DEPTHWISE_KERNEL))
_SEPARABLE = LayerKind("separable", after=_separable(math.fold_bn_after_separable),
                       before=_separable(math.fold_bn_before_separable))
_TRANSPOSE = LayerKind(
    "conv_transpose", after=_kernel_and_bias(math.fold_bn_after_conv_transpose),
    no_before="a transposed convolution adds up a different number of inputs at each "
              "output position (borders, strides), so the BN's offset cannot become a bias")

#: Class name in the flavour's `layers` module (tf_keras.layers or keras.layers) -> kind.
KINDS = {
    "Conv1D": _CONV, "Conv2D": _CONV, "Conv3D": _CONV,
    "Dense": _DENSE,
    "DepthwiseConv1D": _DEPTHWISE, "DepthwiseConv2D": _DEPTHWISE,
    "SeparableConv1D": _SEPARABLE, "SeparableConv2D": _SEPARABLE,
    "Conv1DTranspose": _TRANSPOSE, "Conv2DTranspose": _TRANSPOSE,
    "Conv3DTranspose": _TRANSPOSE,
}


def kind_of(layer):
    """The `LayerKind` of `layer`'s exact class, or None (not supported): the class must
    be the very one its flavour's `layers` module exports under that name (a user class
    called Conv2D, or a subclass, is not)."""
    name = type(layer).__name__
    if name in KINDS and flavour.of(layer).is_builtin_layer_class(type(layer)):
        return KINDS[name]
    return None


def channel_axis(layer, rank):
    """The channel axis of `layer`'s output (or input) of `rank`."""
    data_format = getattr(layer, "data_format", "channels_last")
    return 1 if data_format == "channels_first" else rank - 1


def zero_padded(layer):
    """Whether `layer` pads its input with zeros ('same'/'causal' with a kernel > 1)."""
    kernel_size = getattr(layer, "kernel_size", (1,))
    return layer.padding != "valid" and any(k != 1 for k in kernel_size)
