"""Layers as the int8 files compute them, for quantization-aware training to simulate
every tensor the file holds.

Both converters write some Keras layers as two ops with an int8 tensor between them that
the layer never shows: a SeparableConv1D/2D is a depthwise convolution, then a 1x1
convolution; a conv or dense layer with an activation the integer kernels do not fuse
(softmax, sigmoid, tanh, ...; ReLU and ReLU6 they fuse) is the layer, then the
activation. `split_for_int8` makes those tensors layer outputs (the same values), so that
`quantize_aware` can put their rounding in the model and fuse a BN after a separable conv
into its pointwise half.

It also writes a strided 1x1 convolution as a 1x1 max pooling with its strides (a
subsampling) and the 1x1 convolution unstrided, the same values: TensorFlow 2.21 with
oneDNN on (its default on AVX-512 CPUs) dies with SIGSEGV training a strided 1x1
Conv2D on few channels, a residual net's downsampling shortcut, and fine-tuning must
not take the user's process down. `keras_bn.quantization.inference_model` makes the
pair one strided convolution again for the files (`merged_subsampling`).
"""

import copy

from keras_bn import flavour
from keras_bn.flavour import Layer, Model
from keras_bn.folding.graph import Graph, Ref, pointing_at
from keras_bn.folding.rewrite import describe, rebuilt, short_name, weight_arrays
from keras_bn.layers.find import is_model

#: The separable layer classes, by their spatial rank.
_SEPARABLE = {"SeparableConv1D": 1, "SeparableConv2D": 2}


#: Activations the integer conv, depthwise and dense kernels fuse (no tensor between).
FUSED = frozenset(("linear", "relu", "relu6"))

#: The plain convolution classes, by their spatial rank.
_CONV = {"Conv1D": 1, "Conv2D": 2, "Conv3D": 3}

#: The name suffix of the subsampling a strided 1x1 convolution is split into.
SUBSAMPLE = "_subsample"


def split_for_int8(model: Model, linear: bool = False, *, nested: bool = False) -> Model:
    """`model` with every top-level layer that the files compute as two ops written as
    two layers: a channels-last SeparableConv1D/2D as `DepthwiseConv` (named
    `<name>_depthwise`) -> `Conv` 1x1 (named as the separable layer), a layer with an
    unfused activation (not linear, relu or relu6) as the layer without it (named
    `<name>_linear`) -> `Activation` (named as the layer); and a channels-last strided
    1x1 convolution as `MaxPooling` of size 1 with its strides (named
    `<name>_subsample`) -> the convolution with strides 1. With `linear`, also a
    built-in Conv1D/2D/3D, DepthwiseConv2D or Dense with a fused activation (relu,
    relu6) as the layer without it and the `Activation`, as an unfused one: every such
    layer is then linear (a QuantizedConvBN computes none; the converters fuse the
    activation back). A layer called several times (shared) is split once, each call
    of the second half reading the same call of the first. In nested Sequential and
    functional models only the strided 1x1 convolutions are split (quantize_aware
    trains them float, but they train: oneDNN's crash). The model itself if there is
    none. A Sequential model comes back as the functional model it is. The model is not
    changed.

    Args:
      model: A Sequential or functional model; only read.
      linear: Also split fused activations from the weight layers (above).
      nested: Split only the strided 1x1 convolutions (what a nested model gets).
    """
    plumbing = flavour.of(model)
    graph = Graph(model)
    found = [name for name, node in graph.nodes.items()
             if node.calls and (_strided_pointwise(node.layer) or not nested and (
                 _separable(node.layer) or _unfused(node.layer, linear)))]
    inner = {name: split_for_int8(node.layer, nested=True)
             for name, node in graph.nodes.items()
             if node.calls and is_model(node.layer) and plumbing.is_graph_model(node.layer)}
    inner = {name: split for name, split in inner.items() if split is not graph.nodes[name].layer}
    if not found and not inner:
        return model
    if graph.sequential:
        model = plumbing.keras.Model(model.inputs, model.outputs, name=model.name)
        graph = Graph(model)
    entries, updates = graph.entries(), {}
    position = {entry["name"]: i for i, entry in enumerate(graph.config["layers"])}
    inserted = []
    for name in found:
        layer = graph.nodes[name].layer
        first, second, weights = (
            _separable_halves(plumbing, layer) if _separable(layer) and not nested
            else _activation_halves(plumbing, layer) if _unfused(layer, linear) and not nested
            else _subsampling_halves(plumbing, layer))
        entry = entries[name]
        before = copy.deepcopy(entry)  # called as the layer was
        describe(before, first)
        describe(entry, second)
        for call, data in enumerate(entry["inbound_nodes"]):  # call k reads first's call k
            plumbing.walk_references(data, pointing_at([first.name, call, 0]))
        inserted.append((position[name], before))
        updates.update(weights)
    for name, split in inner.items():  # its weights: matched by name in the original
        describe(entries[name], split)
    layers = list(graph.config["layers"])
    for index, entry in sorted(inserted, key=lambda t: -t[0]):
        layers.insert(index, entry)
    graph.config["layers"] = layers
    # again: the linear half of a strided 1x1 conv with an unfused activation is one
    return split_for_int8(rebuilt(model, graph.config, updates), linear, nested=nested)


def _separable(layer: Layer) -> bool:
    return (type(layer).__name__ in _SEPARABLE
            and getattr(layer, "data_format", "channels_last") == "channels_last")


#: The weight layers a QuantizedConvBN computes (channels last), each with the kind it
#: calls it; `linear` splits fused activations from these.
WEIGHT_LAYERS = {"Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv",
                 "DepthwiseConv2D": "depthwise", "Dense": "dense"}


def _unfused(layer: Layer, linear: bool = False) -> bool:
    """A built-in layer with an activation the integer kernels do not fuse; with
    `linear`, also a weight layer (`WEIGHT_LAYERS`) with any activation but linear."""
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    keep = ("linear",) if linear and type(layer).__name__ in WEIGHT_LAYERS else FUSED
    return (activation is not None and type(layer).__name__ != "Activation"
            and flavour.of(layer).is_builtin_layer_class(type(layer))
            and name not in keep and "activation" in layer.get_config())


def _strided_pointwise(layer: Layer) -> bool:
    """A built-in channels-last Conv1D/2D/3D with a 1x1 kernel and a stride above 1
    (undilated: a dilation applies to strides 1 only)."""
    if type(layer).__name__ not in _CONV:
        return False
    config = layer.get_config()
    return (flavour.of(layer).is_builtin_layer_class(type(layer))
            and config.get("data_format", "channels_last") == "channels_last"
            and all(k == 1 for k in _tuple(config["kernel_size"]))
            and any(s > 1 for s in _tuple(config["strides"])))


def _tuple(value: int | tuple | list) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _subsampling_halves(plumbing, layer):
    """A strided 1x1 conv `layer` as a `MaxPooling` of size 1 with its strides (named
    `<name>_subsample`: the rows and columns the conv reads) and the conv with strides 1
    (named as `layer`, its weights). A 1x1 kernel reads no padding: 'same', 'valid' and
    'causal' give the same `ceil(size / stride)` positions."""
    config = layer.get_config()
    rank = _CONV[type(layer).__name__]
    subsample = getattr(plumbing.keras.layers, f"MaxPooling{rank}D")(
        pool_size=(1,) * rank, strides=config["strides"], padding="valid",
        name=f"{layer.name}{SUBSAMPLE}", dtype=config.get("dtype"))
    conv = type(layer).from_config(dict(config, strides=(1,) * rank, padding="valid"))
    channels = int(layer.kernel.shape[-2]) * config.get("groups", 1)
    conv.build((None,) * (rank + 1) + (channels,))
    return subsample, conv, {conv.name: weight_arrays(layer)}


def merged_subsampling(graph: Graph) -> dict[str, tuple[list[Ref], tuple]]:
    """The subsamplings `split_for_int8` wrote of strided 1x1 convolutions, each call
    still read by the same call of its convolution alone: `{subsampling layer: (the
    input of each call, its strides)}`, for the convolution (or the QuantizedConvBN it
    became) to take the strides back."""
    found = {}
    for name, node in graph.nodes.items():
        conv = name[:-len(SUBSAMPLE)]
        if (not name.endswith(SUBSAMPLE) or conv not in graph.nodes or not node.calls
                or not type(node.layer).__name__.startswith("MaxPooling")
                or any(p != 1 for p in _tuple(node.layer.pool_size))
                or len(graph.nodes[conv].calls) != len(node.calls)):
            continue
        if all([(c.layer, c.index) for c in graph.consumers.get(Ref(name, call.index), [])]
               == [(conv, call.index)] for call in node.calls):
            found[name] = ([call.args[0] for call in node.calls], _tuple(node.layer.strides))
    return found


def rejoined(graph: Graph, entries: dict) -> dict[str, list[Ref]]:
    """Makes each strided 1x1 convolution that `split_for_int8` split one strided
    convolution again, in nested models too: edits `entries` (`graph.entries()`: the
    convolutions' strides, the nested models' configs) and returns the subsamplings to
    remove, `{name: the input of each call}`, for `graph.without`."""
    removed: dict[str, list[Ref]] = {}
    for name, (sources, strides) in merged_subsampling(graph).items():
        removed[name] = sources
        entries[name[:-len(SUBSAMPLE)]]["config"]["strides"] = list(strides)
    for name, node in graph.nodes.items():
        if node.calls and is_model(node.layer) and graph.flavour.is_graph_model(node.layer):
            inner = Graph(node.layer)
            before = copy.deepcopy(inner.config)
            inner_removed = rejoined(inner, inner.entries())
            if inner_removed or inner.config != before:
                entries[name]["config"] = inner.without(inner_removed)
    return removed


def _separable_halves(plumbing, layer):
    """The built depthwise and pointwise layers a separable `layer` computes, and their
    weights (`{name: {short weight name: array}}`)."""
    config = layer.get_config()
    rank = _SEPARABLE[type(layer).__name__]
    keras = plumbing.keras.layers
    common = {"dtype": config.get("dtype"), "trainable": layer.trainable}
    depthwise = getattr(keras, f"DepthwiseConv{rank}D")(
        config["kernel_size"], strides=config["strides"], padding=config["padding"],
        depth_multiplier=config["depth_multiplier"], dilation_rate=config["dilation_rate"],
        use_bias=False, name=f"{layer.name}_depthwise", **common)
    pointwise = getattr(keras, f"Conv{rank}D")(
        config["filters"], 1, use_bias=config["use_bias"], activation=config["activation"],
        name=layer.name, **common)
    kernel = layer.depthwise_kernel.shape
    channels = int(kernel[-2])
    depthwise.build((None,) * (rank + 1) + (channels,))
    pointwise.build((None,) * (rank + 1) + (channels * int(kernel[-1]),))
    arrays = weight_arrays(layer)
    values = [arrays["pointwise_kernel"]] + ([arrays["bias"]] if layer.use_bias else [])
    return depthwise, pointwise, {
        depthwise.name: {short_name(depthwise.weights[0]): arrays["depthwise_kernel"]},
        pointwise.name: {short_name(w): v for w, v in zip(pointwise.weights, values)}}


def _activation_halves(plumbing, layer):
    """`layer` without its activation (a copy, named `<name>_linear`), the Activation
    layer (named as `layer`), and the weights."""
    config = dict(layer.get_config(), activation="linear", name=f"{layer.name}_linear")
    linear = type(layer).from_config(config)
    activation = plumbing.keras.layers.Activation(layer.activation, name=layer.name,
                                                  dtype=config.get("dtype"))
    return linear, activation, {linear.name: weight_arrays(layer)}
