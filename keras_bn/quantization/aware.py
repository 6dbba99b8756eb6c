"""Quantization-aware training with BatchNormalization folded: the trainable model in
which every conv, depthwise conv or dense layer followed by a BN is one
`QuantizedConvBN` (its folded weights on the int8 files' grid, BN statistics updating
until they freeze), and, given calibration data, every activation tensor the int8 file
holds passes an `ActivationQuantizer` (its range calibrated, then tracked), so that
fine-tuning learns weights that survive int8 rounding as the file will hold them.

The pairs are the ones `keras_bn.fold` folds "after" (the BN reads only that layer's
output, on its channel axis); each BN that stays is named with the reason, as in the
fold plan. The model is not changed.
"""

import copy
import dataclasses
import importlib

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model
from keras_bn.folding.graph import Graph, Ref, pointing_at, walk_outputs
from keras_bn.folding.kinds import kind_of
from keras_bn.folding.plan import plan_model
from keras_bn.folding.rewrite import rebuild, rebuilt, weight_arrays
from keras_bn.layers.quantized_conv_bn import QuantizedConvBN
from keras_bn.quantization import ranges as estimators
from keras_bn.quantization.activations import tensor_batches
from keras_bn.quantization.splitting import WEIGHT_LAYERS, split_for_int8
from keras_bn.verification import model_inputs

#: Layers whose int8 kernels keep their input's grid (the converter gives their output
#: the input's scale and zero point): no quantizer of their own.
SAME_GRID = frozenset("""
    Reshape Flatten MaxPooling1D MaxPooling2D MaxPooling3D Dropout SpatialDropout1D
    SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout
    ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D Permute
    RepeatVector ActivationQuantizer
""".split())
#: Layers the converter fuses a following ReLU/ReLU6 into (the tensor between is gone).
_FUSES_RELU = frozenset("QuantizedConvBN Conv1D Conv2D Conv3D DepthwiseConv2D Dense Add "
                        "SeparableConv1D SeparableConv2D".split())
#: The grid int8 kernels give softmax and sigmoid outputs: [0, 1) in steps of 1/256.
_UNIT_RANGE = (0.0, 255.0 / 256.0)


@dataclasses.dataclass
class AwarePlan:
    """What `quantize_aware` did: `fused` maps each new QuantizedConvBN (named as the
    layer it replaces) to the BN merged into it; `plain` names the conv, depthwise and
    dense layers with no BN that became a QuantizedConvBN without one (int8 weights);
    `kept` maps each BN left as it was to the reason; `quantized` names the tensors
    given an ActivationQuantizer (by the layer that makes them) and `ranges` their
    calibrated `(low, high)`; with bias correction, `corrected` maps each layer whose
    int8 kernel's shift was corrected to where ("beta (largest shift ...)", or, for a
    layer without a bias, "through the bias of '<the layer after it>'"), and
    `uncorrected` each layer it left to the reason."""

    fused: dict = dataclasses.field(default_factory=dict)
    plain: list = dataclasses.field(default_factory=list)
    kept: dict = dataclasses.field(default_factory=dict)
    quantized: list = dataclasses.field(default_factory=list)
    ranges: dict = dataclasses.field(default_factory=dict)
    corrected: dict = dataclasses.field(default_factory=dict)
    uncorrected: dict = dataclasses.field(default_factory=dict)


def _layers_module(plumbing):
    return importlib.import_module(f"keras_bn.layers.{plumbing.__name__.split('.')[-1]}")


def _layer_class(plumbing):
    return _layers_module(plumbing).QuantizedConvBN


def _why_not(layer, bn, decision):
    """Why a folded-after pair cannot become a QuantizedConvBN, or None."""
    if len(decision.chain) != 1:
        return "BNs in a row (fold them first)"
    why = _not_computed(layer)
    if why:
        return why
    if getattr(bn, "virtual_batch_size", None) or getattr(bn, "synchronized", False):
        return "ghost batches or synchronized statistics are not simulated"
    return None


def _not_computed(layer):
    """Why QuantizedConvBN cannot compute `layer` (a built-in conv, depthwise or dense
    layer, channels last), or None."""
    name = type(layer).__name__
    if name not in WEIGHT_LAYERS:
        return f"it follows a {name}, which QuantizedConvBN does not compute"
    if kind_of(layer) is None:  # the built-in class only, not a subclass or namesake
        return (f"it follows '{layer.name}', a custom {name} (QuantizedConvBN computes "
                "the built-in class only)")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"'{layer.name}' is channels_first; int8 files are channels last"
    return None


def _plain_layers(graph, taken):
    """The top-level conv, depthwise and dense layers no BN folds into (`taken`: the
    layers a BN folds into, either side) that a QuantizedConvBN without a BN computes:
    built-in, linear (`split_for_int8(linear=True)` made them so), channels last."""
    found = []
    for name, node in graph.nodes.items():
        layer = node.layer
        if name in taken or layer is None or not node.calls or _not_computed(layer):
            continue
        if getattr(getattr(layer, "activation", None), "__name__", None) == "linear":
            found.append(name)
    return found


def _arguments(layer, bn, freeze_after, weight_bits):
    """The QuantizedConvBN configuration that replaces `layer` -> `bn` (`layer` alone
    when `bn` is None)."""
    config = layer.get_config()
    kind = WEIGHT_LAYERS[type(layer).__name__]
    args = {"kind": kind, "use_bias": bool(config.get("use_bias", True)),
            "weight_bits": weight_bits, "name": layer.name, "dtype": config.get("dtype"),
            "trainable": layer.trainable}
    if bn is None:
        args["batch_norm"] = False
    else:
        args.update(momentum=float(bn.momentum), epsilon=float(bn.epsilon),
                    center=getattr(bn, "beta", None) is not None,
                    scale=getattr(bn, "gamma", None) is not None, freeze_after=freeze_after)
    if kind == "dense":
        return {**args, "filters": config["units"]}
    args.update(kernel_size=config["kernel_size"], strides=config["strides"],
                padding=config["padding"], dilation_rate=config["dilation_rate"])
    if kind == "depthwise":
        return {**args, "filters": config["depth_multiplier"]}
    return {**args, "filters": config["filters"], "groups": config.get("groups", 1)}


def _weights(layer, bn, args):
    """`{short name: array}` of the QuantizedConvBN: the layer's kernel (and bias), the
    BN's parameters and statistics, and its step counter at 0 (with a `bn`)."""
    mine = weight_arrays(layer)
    kernel = mine.get("depthwise_kernel", mine.get("kernel"))
    flat = lambda v: np.reshape(np.asarray(v), -1)
    weights = {"kernel": kernel}
    if args["use_bias"]:
        weights["bias"] = mine["bias"]
    if bn is None:
        return weights
    if args["scale"]:
        weights["gamma"] = flat(bn.gamma)
    if args["center"]:
        weights["beta"] = flat(bn.beta)
    weights.update(moving_mean=flat(bn.moving_mean), moving_variance=flat(bn.moving_variance),
                   step=np.int32(0))
    return weights


def quantize_aware(model: Model, calibration: Inputs | None = None, *,
                   freeze_after: int | None = 0, weight_bits: int | None = 8,
                   momentum: float | None = None, ranges: str = "minmax",
                   bias_correction: bool = False,
                   return_plan: bool = False) -> Model | tuple[Model, AwarePlan]:
    """A trainable copy of `model` in which every conv, depthwise conv or dense layer
    followed by a BatchNormalization is one `QuantizedConvBN`.

    Each `QuantizedConvBN` starts from the pair's weights and statistics: in inference
    it computes the folded layer with its kernel on the int8 grid of the files
    (symmetric per output channel), and in training the same (by default), or conv ->
    BN with the batch's statistics (moving statistics updated) until `freeze_after`
    training steps. Train it with `model.fit` as the original. Every other conv,
    depthwise conv or dense layer (no BN folds into it) becomes a `QuantizedConvBN`
    without a BN: its kernel on the same int8 grid, as the file will hold it.

    With `calibration` data, every activation tensor the int8 file will hold (the
    model's inputs, each layer's output, a conv's or an Add's after the ReLU/ReLU6 the
    converter fuses into it; not the outputs of layers that keep their input's grid,
    such as reshapes and max pools) passes an `ActivationQuantizer` whose range is the
    tensor's min and max on those rows, tracked by a moving average (`momentum`) in
    training, or the `ranges` estimator's, held; softmax and sigmoid outputs get the
    kernels' fixed [0, 1) grid. Without, activations stay float (the weights-only
    simulation).

    Handles the flavours' own BatchNormalization and keras_bn's BatchNormalization and
    BatchRenormalization (trained here as BatchNormalization: the statistics are the
    batch's). Conv1D/2D/3D (groups too), DepthwiseConv2D and Dense, channels last, at
    the model's top level; a SeparableConv1D/2D is first split into the depthwise and
    1x1 convolutions the files compute, and a layer with an activation the integer
    kernels do not fuse (softmax, sigmoid, ...) into the layer and an Activation
    (`keras_bn.quantization.splitting`), so that every int8 tensor of the file is
    simulated; a fused ReLU/ReLU6 of a layer with no BN becomes an Activation after
    it too (the converters fuse it back).

    Args:
      model: A built Sequential or functional model (tf-keras or Keras 3); not changed.
      calibration: Optional rows that set the activation ranges: an array, a list with
        one array per input, or a dict by input name (a few hundred typical rows).
      freeze_after: Training steps after which the BN statistics freeze; 0 (default):
        frozen from the first step, so that training runs the inference graph and the
        trained model's statistics are kept, as fine-tuning toward its answers needs
        (re-estimating them changes the function: on the QAT study's five trained nets,
        75 steps of batch statistics on their own training rows, weights unchanged,
        left them agreeing with themselves on 61 to 87 % of fresh rows). A number > 0
        trains with the batch's statistics first (Krishnamoorthi 2018 freezes them
        after about a fifth of training, for training at length); None: never.
      weight_bits: 8 (int8 weights) or None (the float folded layer; for checks).
      momentum: Of the activation ranges' moving averages in training (1 keeps the
        calibrated ranges). None: 0.99 with "minmax" ranges, which each batch's min and
        max track; 1 with "mse" or "percentile", estimates over all the calibration
        rows that batches' min and max would pull back toward min/max (on a trained
        mini-Xception, 5 epochs of distillation at 0.99 moved the logits' MSE range
        from [-3.1, 10.8] to [-14.5, 13.0], nearly their min/max).
      ranges: How the calibration sets each range: "minmax" (the converters' rule),
        "mse" or "percentile" (`keras_bn.quantization.ranges`, as post-training
        quantization's `ranges=`: a range shrunk to less expected squared error).
      bias_correction: Start from the folded biases less the mean shift each layer's
        int8 kernel puts on its outputs over the calibration rows (Nagel et al. 2019,
        as post-training quantization's `bias_correction`; the shift of a layer is
        measured on the inputs the model with int8 kernels and float activations gives
        it, and comes off its BN's beta, else its bias). Needs `calibration`.
      return_plan: Also return the `AwarePlan` (the pairs fused, the layers with int8
        weights and no BN, the BNs kept and why, the biases corrected).

    Returns:
      The new model (a functional or Sequential model of `model`'s flavour), or
      `(model, AwarePlan)`.

    Raises:
      keras_bn.errors.InputError: an unbuilt or subclassed model, `freeze_after` that
        is not an integer >= 0, or calibration data that does not fit the inputs.
    """
    if freeze_after is not None and (not isinstance(freeze_after, (int, np.integer))
                                      or freeze_after < 0):
        raise InputError(f"quantize_aware of '{model.name}': freeze_after={freeze_after!r}; "
                         "give a number of training steps >= 0, or None.")
    if ranges not in estimators.ESTIMATORS:
        raise InputError(f"quantize_aware of '{model.name}': ranges={ranges!r}; give one "
                         f"of {', '.join(estimators.ESTIMATORS)}.")
    if not model.built:
        raise InputError(f"Model '{model.name}' is not built: call it on data or give it "
                         "an Input shape first.")
    if bias_correction and calibration is None:
        raise InputError(f"quantize_aware of '{model.name}': bias_correction measures "
                         "each layer's shift on calibration rows; give calibration.")
    plumbing = flavour.of(model)
    model = split_for_int8(model, linear=True)  # each tensor the file holds an output
    graph = Graph(model)
    entries, layer_class = graph.entries(), _layer_class(plumbing)
    plan, updates, removed = AwarePlan(), {}, {}
    gone = set()  # layers whose output tensor the file will not hold (a BN folds there)
    taken = set()  # layers a BN folds into: their weights change on export

    def replace(layer, bn):
        args = _arguments(layer, bn, freeze_after, weight_bits)
        entry = entries[layer.name]
        entry.update(module=layer_class.__module__, class_name=layer_class.__name__,
                     registered_name=f"keras_bn>{layer_class.__name__}")
        entry["config"] = layer_class(**args).get_config()
        updates[layer.name] = _weights(layer, bn, args)
    for decision in plan_model(model).decisions:
        if not decision.folded:
            plan.kept[decision.bn] = decision.reason
            continue
        assert decision.into is not None  # a folded BN names the layer it folds into
        if len(decision.path) != 1:
            plan.kept[decision.bn] = ("inside a nested model: quantize_aware fuses the "
                                      "top level's pairs (fold the model first)")
            continue
        taken.add(decision.into)
        if decision.position != "after":
            plan.kept[decision.bn] = (f"before '{decision.into}': it trains as a BN and "
                                      "folds into that layer's inputs on export")
            gone.add(decision.bn)
            continue
        layer = graph.nodes[decision.into].layer
        bn = graph.nodes[decision.bn].layer
        why = _why_not(layer, bn, decision)
        if why:
            plan.kept[decision.bn] = why
            gone.add(decision.into)  # still folded on export: one tensor, the BN's
            continue
        replace(layer, bn)
        removed[decision.bn] = graph.nodes[decision.bn].calls[0].args[0]
        plan.fused[layer.name] = decision.bn
    for name in _plain_layers(graph, taken):  # no BN: int8 weights all the same
        replace(graph.nodes[name].layer, None)
        plan.plain.append(name)
    rows = None if calibration is None else model_inputs(model, calibration,
                                                         "calibration data")
    config = graph.without(removed)
    new_model = rebuilt(model, config, updates)
    if bias_correction:
        _correct_biases(new_model, rows, plan)
    if rows is not None:
        if momentum is None:
            momentum = 0.99 if ranges == "minmax" else 1.0
        new_model = _with_quantizers(new_model, rows, momentum, plan, gone, ranges)
    return (new_model, plan) if return_plan else new_model


def _correct_biases(model, rows, plan):
    """Subtracts from the folded bias of every top-level QuantizedConvBN with int8
    weights, called once, the mean over `rows` and positions of what int8 kernels add to
    each of its output channels in inference, on the inputs the model gives it (one
    pass: int8 kernels, activations not yet quantized, no layer corrected yet). A layer
    with no bias to take its own shift (the depthwise half of a separable conv) that
    feeds one such layer alone is measured with it: the layer after takes both
    shifts, the output of the two through int8 kernels less through float ones.
    Records in `plan`."""
    graph = Graph(model)

    def int8(name):  # a QuantizedConvBN with int8 weights, called once
        node = graph.nodes[name]
        return (isinstance(node.layer, QuantizedConvBN) and node.layer.weight_bits is not None
                and len(node.calls) == 1)

    chains = {}  # the layer corrected -> the layers measured, first to last
    biasless = []
    for name, node in graph.nodes.items():
        layer = node.layer
        if not isinstance(layer, QuantizedConvBN) or layer.weight_bits is None:
            continue
        if not int8(name):
            plan.uncorrected[name] = "a shared layer (its inputs differ per call)"
        elif layer.beta is None and layer.bias is None:
            biasless.append(name)  # measured with the layer it feeds, if it can be
        else:
            chain = [layer]
            while True:  # the bias-less int8 layers feeding it alone, in a row
                reads = graph.nodes[chain[0].name].calls[0].args
                source = reads[0].layer if reads else None  # a Sequential's first: none
                if not (source in biasless and int8(source)
                        and len(graph.consumers.get(Ref(str(source)), [])) == 1):
                    break
                chain.insert(0, graph.nodes[source].layer)
            chains[name] = chain
    measured = {layer.name for chain in chains.values() for layer in chain}
    for name in biasless:
        if name not in measured:
            plan.uncorrected[name] = "it has neither a BN beta nor a bias to correct"
    if not chains:
        return
    plumbing = flavour.of(model)
    names = list(chains)
    sums: list = [0.0] * len(names)
    counts = [0] * len(names)
    tensors = [plumbing.call_input(model, chains[name][0]) for name in names]
    for values in tensor_batches(model, tensors, rows):
        for i, (name, x) in enumerate(zip(names, values)):
            exact = rounded = x
            for layer in chains[name]:
                rounded, exact = layer.inference(rounded), layer.inference(exact, False)
            difference = np.asarray(plumbing.get_values([rounded - exact])[0], np.float64)
            difference = difference.reshape(-1, difference.shape[-1])
            sums[i], counts[i] = sums[i] + difference.sum(axis=0), counts[i] + len(difference)
    for name, total, count in zip(names, sums, counts):
        shift = total / max(count, 1)
        weight = chains[name][-1].correct_bias(shift)
        plan.corrected[name] = f"{weight} (largest shift {np.max(np.abs(shift)):.3g})"
        for layer in chains[name][:-1]:
            plan.corrected[layer.name] = f"through the {weight} of '{name}'"


def activation_name(layer):
    """The activation a layer applies last, by name ("relu", "softmax", ...), or None."""
    name = type(layer).__name__
    if name == "ReLU":
        config = layer.get_config()
        plain = not config.get("negative_slope") and not config.get("threshold")
        return {None: "relu", 6.0: "relu6"}.get(config.get("max_value"), "other") if \
            plain else "other"
    if name == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def is_softmax(layer):
    """Whether `layer` is a Softmax layer or an Activation("softmax") (the layers the
    splitting leaves a softmax in)."""
    return activation_name(layer) == "softmax" and type(layer).__name__ in (
        "Softmax", "Activation")


def _read_by_softmax(graph, name):
    """Whether every layer that reads the output of layer `name` is a softmax over the
    last axis (and one does), or a Reshape or Flatten that keeps the last axis (the
    values the softmax reads, on the same grid: it has no quantizer of its own) read
    so in turn."""
    calls = graph.consumers.get(Ref(name), [])
    for call in calls:
        layer = graph.nodes[call.layer].layer
        kind = type(layer).__name__
        if kind in ("Reshape", "Flatten"):
            if len(graph.nodes[call.layer].calls) != 1 or \
                    layer.output.shape[-1] != layer.input.shape[-1] or \
                    not _read_by_softmax(graph, call.layer):
                return False
            continue
        if not is_softmax(layer):
            return False
        axis = getattr(layer, "axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis != -1 and axis != len(layer.output.shape) - 1:
            return False
    return bool(calls)


def _quantized_refs(graph, gone=frozenset()):
    """`[(Ref, fixed range or None)]`: the tensors the int8 file holds, in graph order
    (not the outputs of the layers in `gone`, which a fold merges away on export)."""
    found: list[tuple[Ref, tuple[float, float] | None]] = []
    for name, node in graph.nodes.items():
        layer = node.layer
        if layer is None:
            continue
        if graph.flavour.is_input_layer(layer):  # the file quantizes its float inputs
            if graph.flavour.is_float(layer.output.dtype):
                found.append((Ref(name), None))
            continue
        cls = type(layer).__name__
        if cls in SAME_GRID or len(node.calls) == 0 or name in gone:
            continue
        for call in node.calls:
            ref = Ref(name, call.index, 0)
            readers = graph.consumers.get(ref, [])
            if (cls in _FUSES_RELU and len(readers) == 1 and activation_name(
                    graph.nodes[readers[0].layer].layer) in ("relu", "relu6")):
                continue  # the ReLU's output is the tensor
            activation = activation_name(layer)
            found.append((ref, _UNIT_RANGE if activation in ("softmax", "sigmoid") else None))
    return found


def _with_quantizers(model, rows, momentum, plan, gone, estimator):
    """`model` rebuilt with an ActivationQuantizer after each tensor of
    `_quantized_refs`, its range that tensor's on `rows` by `estimator` (`_calibrate`)."""
    plumbing = flavour.of(model)
    if isinstance(model, plumbing.keras.Sequential):  # as the functional model it is
        model = plumbing.keras.Model(model.inputs, model.outputs, name=model.name)
    graph = Graph(model)
    refs = _quantized_refs(graph, gone)
    config = graph.config
    quantizer = _layers_module(plumbing).ActivationQuantizer
    template = _template_entry(plumbing, quantizer)
    position = {entry["name"]: i for i, entry in enumerate(config["layers"])}
    inserted = []
    for ref, fixed in refs:
        name = f"{ref.layer}_quantized" + (f"_{ref.call}" if ref.call else "")
        entry = copy.deepcopy(template)
        entry["name"] = name
        entry["config"] = quantizer(momentum=momentum, fixed=fixed, name=name).get_config()
        plumbing.walk_references(entry["inbound_nodes"],
                                 pointing_at([ref.layer, ref.call, ref.tensor]))
        inserted.append((position[ref.layer], ref, name, entry))

    readers = {(ref.layer, ref.call, ref.tensor): name for _, ref, name, _ in inserted}

    def rewire(value):  # a reader of a quantized tensor reads the quantizer's output
        name = readers.get(tuple(value[:3]))
        if name is not None:
            value[:3] = [name, 0, 0]

    for entry in config["layers"]:  # before the quantizers' own entries join
        plumbing.walk_references(entry["inbound_nodes"], rewire)
    walk_outputs(config["output_layers"], rewire)
    layers = list(config["layers"])
    for index, _, _, entry in sorted(inserted, key=lambda t: -t[0]):
        layers.insert(index + 1, entry)
    config["layers"] = layers
    new_model = rebuild(model, config)
    for layer in new_model.layers:  # the same layers, the same weights; quantizers new
        if layer.name in position:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    quantizers = [new_model.get_layer(name) for _, _, name, _ in inserted]
    _calibrate(new_model, quantizers, rows, plan, estimator)
    plan.quantized = [ref.layer for ref, _ in refs]
    return new_model


def _template_entry(plumbing, quantizer):
    """A config entry of an ActivationQuantizer called on one tensor, in the flavour's
    own format (its input reference then pointed at the tensor to quantize)."""
    keras = plumbing.keras
    inputs = keras.Input((1,))
    model = keras.Model(inputs, quantizer(name="template")(inputs))
    entry = copy.deepcopy(model.get_config()["layers"][1])
    entry.pop("build_config", None)
    return entry


def _calibrate(model, quantizers, rows, plan, estimator="minmax"):
    """Sets each non-fixed quantizer's range to its input's min and max on `rows` (the
    model run in inference mode: the quantizers pass values through until set), or,
    with another `estimator` of `keras_bn.quantization.ranges`, to its estimate from a
    histogram of those values over [min, max] (a second pass)."""
    plumbing = flavour.of(model)
    free = [q for q in quantizers if q.fixed is None]
    tensors = [plumbing.call_input(model, q) for q in free]
    lows, highs = [np.inf] * len(free), [-np.inf] * len(free)
    for values in tensor_batches(model, tensors, rows):
        for i, value in enumerate(values):
            lows[i] = min(lows[i], float(np.min(value)))
            highs[i] = max(highs[i], float(np.max(value)))
    if estimator != "minmax":
        spans = {i: (q.name, low, high)
                 for i, (q, low, high) in enumerate(zip(free, lows, highs)) if high > low}
        counts = {i: np.zeros(estimators.BINS) for i in spans}
        graph = Graph(model)
        logits = [i for i in spans if _read_by_softmax(graph, free[i].name)]
        kept: dict = {i: [] for i in logits}
        for values in tensor_batches(model, tensors, rows):
            for i in spans:
                counts[i] += np.histogram(values[i], estimators.BINS, spans[i][1:])[0]
            for i in logits:
                kept[i].append(np.asarray(values[i], np.float32))
        vectors = {i: estimators.softmax_rows(np.concatenate(kept[i])) for i in logits}
        estimated, _ = estimators.estimate(spans, counts, estimator, vectors=vectors)
        for i, (low, high) in estimated.items():
            lows[i], highs[i] = low, high
    for q, low, high in zip(free, lows, highs):
        plumbing.set_values([(q.low, low), (q.high, high)])
        plan.ranges[q.name] = (low, high)
