"""The plain Keras model a quantization-aware model computes in inference, the model the
exporters convert: what was trained is what is shipped.

A `QuantizedConvBN` becomes the layer it stands for (Conv1D/2D/3D, DepthwiseConv2D or
Dense) with the folded kernel on the int8 grid and the folded bias; every calibrated
`ActivationQuantizer` keeps its grid as a fixed range (on TensorFlow, the
`fake_quant_with_min_max_args` op the TFLite converter and tf2onnx read as the tensor's
int8 range), or is dropped for a float model.
"""

import dataclasses

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Model
from keras_bn.folding.graph import Graph
from keras_bn.folding.rewrite import describe, rebuilt, short_name
from keras_bn.layers.activation_quantizer import ActivationQuantizer
from keras_bn.layers.find import activation_quantizers, all_layers
from keras_bn.layers.quantized_conv_bn import QuantizedConvBN
from keras_bn.quantization import fake_quant
from keras_bn.quantization.splitting import rejoined


@dataclasses.dataclass(frozen=True)
class AwareState:
    """What a model holds of quantization-aware training.

    Attributes:
      fused: names of its QuantizedConvBN layers.
      ranges: `{quantizer name: (low, high)}` of its calibrated ActivationQuantizers
        (their learned activation ranges).
      uncalibrated: names of ActivationQuantizers without a range yet.
    """

    fused: tuple = ()
    ranges: dict = dataclasses.field(default_factory=dict)
    uncalibrated: tuple = ()

    @property
    def aware(self) -> bool:
        """Whether the model is a quantization-aware training model at all."""
        return bool(self.fused or self.ranges or self.uncalibrated)

    @property
    def learned(self) -> bool:
        """Whether it carries learned activation ranges (every quantizer calibrated)."""
        return bool(self.ranges) and not self.uncalibrated


def state(model: Model) -> AwareState:
    """The `AwareState` of `model` (any model; an ordinary one has none)."""
    fused = tuple(layer.name for layer in all_layers(model)
                  if isinstance(layer, QuantizedConvBN))
    ranges, uncalibrated = {}, []
    for quantizer in activation_quantizers(model):
        found = _range(quantizer)
        if found is None:
            uncalibrated.append(quantizer.name)
        else:
            ranges[quantizer.name] = found
    return AwareState(fused, ranges, tuple(uncalibrated))


def _range(quantizer):
    """`(low, high)` of a calibrated ActivationQuantizer, or None."""
    if quantizer.fixed is not None:
        return quantizer.fixed
    low, high = (float(v) for v in flavour.of(quantizer).get_values(
        [quantizer.low, quantizer.high]))
    return (low, high) if high > low else None


def inference_model(model: Model, *, activations: bool = True) -> Model:
    """The plain Keras model that a quantization-aware `model` computes in inference.

    Each `QuantizedConvBN` becomes the layer it stands for (Conv1D/2D/3D,
    DepthwiseConv2D or Dense, linear, with a bias) holding its folded kernel, on the int8
    grid the file stores when it fake-quantizes weights, and its folded bias. With
    `activations`, each `ActivationQuantizer` keeps the grid of its learned range as a
    fixed range (its bounds, `fake_quant.grid_bounds`), which the exporters write as
    that tensor's int8 scale and zero point; without, they are dropped and the model is
    the float model training left. Other layers are kept with their weights.

    Example:

    ```python
    qat = keras_bn.quantization.quantize_aware(model, x_train[:500])
    qat.fit(x_train, y_train, epochs=2)
    float_model = keras_bn.quantization.inference_model(qat, activations=False)
    ```

    Args:
      model: A model `quantize_aware` made (and trained); not changed. Nested models'
        QAT layers are not lowered (`quantize_aware` makes none).
      activations: Keep the activation quantizers (their grids fixed).

    Returns:
      A new functional or Sequential model of `model`'s flavour.

    Raises:
      keras_bn.errors.InputError: with `activations`, an ActivationQuantizer that has
        no range yet (calibrate it first: `quantize_aware(model, calibration)`).
    """
    found = state(model)
    if activations and found.uncalibrated:
        raise InputError(f"Model '{model.name}': activation quantizer(s) "
                         f"{', '.join(map(repr, found.uncalibrated[:3]))} have no range "
                         "yet; make the model with quantize_aware(model, calibration), or "
                         "lower it with activations=False.")
    plumbing = flavour.of(model)
    graph = Graph(model)
    entries, removed, updates = graph.entries(), {}, {}
    for name, node in graph.nodes.items():
        layer = node.layer
        if isinstance(layer, QuantizedConvBN):
            instance, updates[name] = _plain(plumbing, layer)
            describe(entries[name], instance)
        elif isinstance(layer, ActivationQuantizer):
            if not activations:
                removed[name] = node.calls[0].args[0]
                continue
            bounds = fake_quant.grid_bounds(*found.ranges[name])
            entries[name]["config"]["fixed"] = list(bounds)
            updates[name] = {"low": bounds[0], "high": bounds[1]}
    # a strided 1x1 conv that quantize_aware split for training is one layer again
    removed.update(rejoined(graph, entries))
    config = graph.without(removed)
    return rebuilt(model, config, updates)


def _plain(plumbing, layer):
    """`(layer, {short weight name: array})`: the built Keras layer a QuantizedConvBN
    stands for, and its folded kernel and bias."""
    layers = plumbing.keras.layers
    kernel, bias = layer.folded_weights()
    spatial = layer._rank - 2
    common = {"name": layer.name, "use_bias": True, "trainable": layer.trainable,
              "dtype": layer.get_config().get("dtype")}
    if layer.kind == "dense":
        instance = layers.Dense(layer.filters, **common)
        channels = kernel.shape[0]
    elif layer.kind == "depthwise":
        instance = getattr(layers, f"DepthwiseConv{spatial}D")(
            layer.kernel_size, strides=layer.strides, padding=layer.padding,
            depth_multiplier=layer.filters, dilation_rate=layer.dilation_rate, **common)
        channels = kernel.shape[-2]
    else:
        instance = getattr(layers, f"Conv{spatial}D")(
            layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
            dilation_rate=layer.dilation_rate, groups=layer.groups, **common)
        channels = kernel.shape[-2] * layer.groups
    instance.build((None,) * (layer._rank - 1) + (channels,))
    return instance, {short_name(w): v for w, v in zip(instance.weights, (kernel, bias))}


#: How many steps of its int8 grid an output value of a file may be from the simulated
#: forward: the files compute on the same grids, but their integer kernels requantize
#: with fixed-point arithmetic, which can move a value the simulation puts within a
#: hair of the middle of two steps to the other one. A softmax's or sigmoid's output
#: (their fixed grids) may also be off by the kernels' table of exp ("table"), plus
#: what one step of the logits grid moves it ("logit": a step `d` of the input moves a
#: sigmoid by at most `d / 4`, a softmax output by at most `d / 2`; on a coarse logits
#: grid that is tens of output steps).
STEPS_OFF = {"requantized": 1.0, "table": 2.0, "logit": 0.5}
#: The fraction of output values that must be within their steps. A near tie flipped
#: inside the network moves what is computed from that value, so single values may be
#: further off; a file that does not compute what was trained (other grids or weights)
#: is off on most values.
STEPS_WITHIN = 0.95


def output_steps(model: Model) -> list:
    """`(step, allowed)` for each output of a quantization-aware `model`, in the order of
    `model.outputs`: the int8 step (scale) of the ActivationQuantizer that makes the
    output (through layers that keep their input's grid, such as reshapes) and how many
    steps a file may be off there (`STEPS_OFF`); `(None, None)` for an output no
    calibrated quantizer makes."""
    graph = Graph(model)
    steps: list[tuple[float | None, float | None]] = []
    for ref in graph.outputs:
        quantizer = _quantizer_of(graph, ref)
        found = None if quantizer is None else _range(quantizer.layer)
        if found is None:
            steps.append((None, None))
            continue
        step = fake_quant.activation_grid(*found)[0]
        if quantizer.layer.fixed is None:
            steps.append((step, STEPS_OFF["requantized"]))
            continue
        # a fixed range in a QAT model: a softmax's or sigmoid's output; its logits
        activation = graph.nodes[quantizer.calls[0].args[0].layer]
        logits = (_quantizer_of(graph, activation.calls[0].args[0])
                  if activation.calls and activation.calls[0].args else None)
        logit_range = None if logits is None else _range(logits.layer)
        slack = (0.0 if logit_range is None else
                 STEPS_OFF["logit"] * fake_quant.activation_grid(*logit_range)[0] / step)
        steps.append((step, STEPS_OFF["table"] + slack))
    return steps


def _quantizer_of(graph, ref):
    """The graph node of the ActivationQuantizer that makes the tensor `ref` (through
    layers that keep their input's grid), or None."""
    from keras_bn.quantization.aware import SAME_GRID

    while ref is not None:
        node = graph.nodes[ref.layer]
        if isinstance(node.layer, ActivationQuantizer):
            return node
        calls = node.calls
        same = type(node.layer).__name__ in SAME_GRID and calls and calls[ref.call].args
        ref = calls[ref.call].args[0] if same else None
    return None
