"""Layers as the int8 files compute them, for quantization-aware training to simulate
every tensor the file holds.

Both converters write some Keras layers as two ops with an int8 tensor between them that
the layer never shows: a SeparableConv1D/2D is a depthwise convolution, then a 1x1
convolution; a conv or dense layer with an activation the integer kernels do not fuse
(softmax, sigmoid, tanh, ...; ReLU and ReLU6 they fuse) is the layer, then the
activation. `split_for_int8` makes those tensors layer outputs (the same values), so that
`quantize_aware` can put their rounding in the model and fuse a BN after a separable conv
into its pointwise half.
"""

import copy

from keras_bn import flavour
from keras_bn.flavour import Layer
from keras_bn.folding.graph import Graph, pointing_at
from keras_bn.folding.rewrite import describe, rebuilt, short_name, weight_arrays

#: The separable layer classes, by their spatial rank.
_SEPARABLE = {"SeparableConv1D": 1, "SeparableConv2D": 2}


#: Activations the integer conv, depthwise and dense kernels fuse (no tensor between).
FUSED = frozenset(("linear", "relu", "relu6"))


def split_for_int8(model):
    """`model` with every top-level layer called once that the files compute as two ops
    written as two layers: a channels-last SeparableConv1D/2D as `DepthwiseConv`
    (named `<name>_depthwise`) -> `Conv` 1x1 (named as the separable layer), a layer
    with an unfused activation (not linear, relu or relu6) as the layer without it
    (named `<name>_linear`) -> `Activation` (named as the layer). The model itself if
    there is none. A Sequential model comes back as the functional model it is. The
    model is not changed."""
    plumbing = flavour.of(model)
    graph = Graph(model)
    found = [name for name, node in graph.nodes.items()
             if len(node.calls) == 1 and (_separable(node.layer) or _unfused(node.layer))]
    if not found:
        return model
    if graph.sequential:
        model = plumbing.keras.Model(model.inputs, model.outputs, name=model.name)
        graph = Graph(model)
    entries, updates = graph.entries(), {}
    position = {entry["name"]: i for i, entry in enumerate(graph.config["layers"])}
    inserted = []
    for name in found:
        layer = graph.nodes[name].layer
        first, second, weights = (_separable_halves(plumbing, layer) if _separable(layer)
                                  else _activation_halves(plumbing, layer))
        entry = entries[name]
        before = copy.deepcopy(entry)  # called as the layer was
        describe(before, first)
        describe(entry, second)
        plumbing.walk_references(entry["inbound_nodes"], pointing_at([first.name, 0, 0]))
        inserted.append((position[name], before))
        updates.update(weights)
    layers = list(graph.config["layers"])
    for index, entry in sorted(inserted, key=lambda t: -t[0]):
        layers.insert(index, entry)
    graph.config["layers"] = layers
    return rebuilt(model, graph.config, updates)


def _separable(layer: Layer) -> bool:
    return (type(layer).__name__ in _SEPARABLE
            and getattr(layer, "data_format", "channels_last") == "channels_last")


def _unfused(layer: Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return (activation is not None and type(layer).__name__ != "Activation"
            and flavour.of(layer).is_builtin_layer_class(type(layer))
            and getattr(activation, "__name__", None) not in FUSED
            and "activation" in layer.get_config())


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
