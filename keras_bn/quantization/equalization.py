"""Cross-layer equalization (Nagel et al. 2019, section 4.1), for TFLite's int8 scheme.

Between two layers whose channels pass through a positive-homogeneous function
(`f(s x) = s f(x)` for `s > 0`: ReLU, LeakyReLU, PReLU, pooling, padding, dropout, or
nothing), channel `i` can be divided by `s_i` at the first layer's output (kernel and
bias) and multiplied back by `s_i` in the second layer's input weights: the float model
computes exactly the same. TFLite quantizes weights per output channel already, so the
ranges that share one int8 scale are the channels of the activation between the layers
(one scale per tensor) and the input channels of the second layer's kernel (one scale per
output channel). Equalization makes them alike: `s_i = sqrt(a_i / r_i)` (`a_i` the
channel's largest activation on the calibration data, `r_i` the second kernel's largest
weight of that input channel), or, when the second layer is depthwise (quantized per
channel, so its weights do not care), `s_i = a_i / max(a)`: every channel of the
activation then uses the whole int8 range. A separable convolution's own depthwise and
pointwise kernels are equalized the same way across the tensor between them.
Depthwise-separable nets, whose folded channels differ by orders of magnitude, are what
it is for; ReLU6 and other clipping activations are not homogeneous and stop it.
"""

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from keras_bn import flavour
from keras_bn.flavour import Inputs, Layer, Model
from keras_bn.folding.graph import Graph, Ref
from keras_bn.folding.kinds import kind_of
from keras_bn.folding.rewrite import weight_arrays, with_weights
from keras_bn.quantization import kernels
from keras_bn.quantization.activations import channel_statistics, tensor_batches
from keras_bn.quantization.technique import Technique

#: Channels whose activation stays below this fraction of the largest are left as they
#: are (s = 1): a channel dead on the calibration data must not be amplified by 1e6.
_DEAD = 1e-6
#: Classes (of the flavour's `layers`) that pass channels through unchanged in number
#: and order and commute with a positive per-channel scale.
_HOMOGENEOUS = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                "GaussianDropout", "AlphaDropout", "ZeroPadding1D", "ZeroPadding2D",
                "ZeroPadding3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
                "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
                "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
                "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
                "LeakyReLU", "PReLU", "Identity"}


def equalization_scales(activation: ArrayLike, weight: ArrayLike | None = None) -> np.ndarray:
    """Per-channel `s` (divide the activation's channel `i` by `s_i`, multiply the next
    kernel's input channel `i` by it): `sqrt(activation / weight)`, so that both become
    `sqrt(activation * weight)`, or with `weight` None `activation / max(activation)`;
    scaled so that the activation's largest channel keeps its range. Channels below
    `_DEAD` of the largest activation (or of zero weight) keep `s = 1`."""
    a = np.asarray(activation, np.float64)
    live = a > _DEAD * a.max() if a.size and a.max() > 0 else np.zeros(a.shape, bool)
    s = np.ones_like(a)
    if weight is None:
        s[live] = a[live] / a.max()
        return s
    r = np.asarray(weight, np.float64)
    live &= r > 0
    if not live.any():
        return s
    s[live] = np.sqrt(a[live] / r[live])
    s[live] *= (a[live] / s[live]).max() / a[live].max()
    return s


def _homogeneous_activation(activation: Callable | None) -> bool:
    return getattr(activation, "__name__", None) in ("linear", "relu") or activation is None


def _passes(layer: Layer) -> bool:
    """Whether `layer` passes channels through a positive-homogeneous function."""
    name = type(layer).__name__
    if not flavour.of(layer).is_builtin_layer_class(type(layer)):
        return False
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    if name == "ReLU":
        return (getattr(layer, "max_value", None) is None
                and float(getattr(layer, "threshold", 0) or 0) == 0)
    if name == "Activation":
        return _homogeneous_activation(layer.activation)
    return name in _HOMOGENEOUS


def _kind(layer):
    kind = kind_of(layer) if layer is not None else None
    return kind.name if kind is not None and kind.name in kernels.KINDS else None


def _follow(graph, name):
    """`(second layer's name, None)` when the output of layer `name` reaches exactly one
    layer of a supported kind through homogeneous layers only, else `(None, why)`."""
    ref = Ref(name)
    while True:
        if ref in graph.outputs:
            return None, f"'{ref.layer}' is an output of the model"
        readers = graph.consumers.get(ref, [])
        if len(readers) != 1:
            return None, f"'{ref.layer}' is read by {len(readers)} layers"
        call = readers[0]
        node = graph.nodes[call.layer]
        if len(node.calls) != 1 or call.reads != [ref]:
            return None, f"'{node.name}' is shared or reads several tensors"
        if _kind(node.layer) is not None:
            if getattr(node.layer, "groups", 1) != 1:
                return None, f"'{node.name}' is a grouped convolution"
            if getattr(node.layer, "data_format", "channels_last") != "channels_last":
                return None, f"'{node.name}' is channels_first"
            return node.name, None
        if node.layer is None or not _passes(node.layer):
            return None, (f"'{node.name}' ({type(node.layer).__name__}) is not "
                          "positive-homogeneous")
        ref = Ref(node.name)


def pairs(model: Model) -> tuple:
    """`([(first, second)], {first: why not})` of the top-level layers of `model` whose
    channels can be equalized across."""
    graph = Graph(model)
    found, skipped = [], {}
    for name, node in graph.nodes.items():
        kind = _kind(node.layer)
        if kind is None:
            continue
        if len(node.calls) != 1:
            skipped[name] = "a shared layer"
        elif getattr(node.layer, "data_format", "channels_last") != "channels_last":
            skipped[name] = "channels_first"
        elif not _homogeneous_activation(node.layer.activation):
            skipped[name] = (f"its activation "
                             f"'{getattr(node.layer.activation, '__name__', '?')}' is not "
                             "positive-homogeneous")
        else:
            second, why = _follow(graph, name)
            if second is None:
                skipped[name] = why
            else:
                found.append((name, second))
    return found, skipped


def _input_weight_range(kind, weights):
    """Largest |weight| per input channel of a conv or dense kernel (None where the
    next layer is quantized per input channel: depthwise and separable)."""
    if kind in ("depthwise", "separable"):
        return None
    kernel = np.abs(np.asarray(weights["kernel"], np.float64))
    return kernel.reshape(-1, *kernel.shape[-2:]).max(axis=(0, 2))


def _depthwise_output(layer, x, kernel):
    """The tensor between a separable convolution's depthwise and pointwise steps."""
    import tensorflow as tf

    if kernel.ndim == 3:  # 1-D: a 2-D convolution over a height of one
        x, kernel = x[:, None], kernel[None]
        strides, dilations = (1, 1, layer.strides[0], 1), (1, layer.dilation_rate[0])
    else:
        strides, dilations = (1, *layer.strides, 1), tuple(layer.dilation_rate)
    y = tf.nn.depthwise_conv2d(tf.constant(x, tf.float32), tf.constant(kernel, tf.float32),
                               strides, layer.padding.upper(), dilations=dilations)
    return y.numpy()


def _separable_ranges(model, names, rows):
    """Largest |value| per channel of the tensor inside each separable layer of `names`."""
    layers = [model.get_layer(n) for n in names]
    depthwise = [weight_arrays(layer)["depthwise_kernel"] for layer in layers]
    peaks = [0.0] * len(layers)
    plumbing = flavour.of(model)
    inputs_of = [plumbing.call_input(model, layer) for layer in layers]
    for inputs in tensor_batches(model, inputs_of, rows):
        for i, (layer, kernel, x) in enumerate(zip(layers, depthwise, inputs)):
            y = _depthwise_output(layer, np.asarray(x, np.float32), kernel)
            y = np.abs(y).reshape(-1, y.shape[-1])
            peaks[i] = np.maximum(peaks[i], y.max(axis=0))
    return peaks


def equalize(model: Model, rows: Inputs) -> tuple:
    """`(new model, Technique)`: `model` with every equalizable pair of consecutive
    layers, then every separable layer's two kernels, equalized on the activation
    ranges the calibration `rows` give. The float model computes the same."""
    record = Technique("equalization")
    found, record.skipped = pairs(model)
    spread = []
    if found:
        plumbing = flavour.of(model)
        stats = channel_statistics(model, [plumbing.call_input(model, model.get_layer(b))
                                           for _, b in found], rows)
        updates: dict[str, dict] = {}
        for (first, second), (_, peak) in zip(found, stats):
            kinds = _kind(model.get_layer(first)), _kind(model.get_layer(second))
            w1 = updates.get(first) or weight_arrays(model.get_layer(first))
            w2 = updates.get(second) or weight_arrays(model.get_layer(second))
            s = equalization_scales(peak, _input_weight_range(kinds[1], w2))
            updates[first] = kernels.scale_outputs(kinds[0], w1, s)
            updates[second] = kernels.scale_inputs(kinds[1], w2, s)
            record.changed.append(f"{first} -> {second}")
            spread.append(_spread(peak))
        model = with_weights(model, updates)
    graph = Graph(model)
    separable = [name for name, node in graph.nodes.items()
                 if _kind(node.layer) == "separable" and len(node.calls) == 1
                 and getattr(node.layer, "data_format", "channels_last") == "channels_last"
                 and node.layer.padding != "causal"]
    if separable:
        updates = {}
        for name, peak in zip(separable, _separable_ranges(model, separable, rows)):
            weights = weight_arrays(model.get_layer(name))
            pointwise = np.abs(weights["pointwise_kernel"]).reshape(
                -1, weights["pointwise_kernel"].shape[-1]).max(axis=1)
            s = equalization_scales(peak, pointwise)
            new = dict(weights)
            depthwise = weights["depthwise_kernel"]
            new["depthwise_kernel"] = (depthwise / s.reshape(depthwise.shape[-2:])).astype(
                depthwise.dtype)
            new["pointwise_kernel"] = (weights["pointwise_kernel"]
                                       * s[:, None]).astype(depthwise.dtype)
            updates[name] = new
            record.changed.append(f"{name} (inside)")
            spread.append(_spread(peak))
        model = with_weights(model, updates)
    if spread:
        record.detail = (f"activation channel ranges differed by up to "
                         f"{max(spread):.3g}x before")
    return model, record


def _spread(peak):
    live = peak[peak > _DEAD * peak.max()] if peak.max() > 0 else peak[:0]
    return float(live.max() / live.min()) if live.size else 1.0
