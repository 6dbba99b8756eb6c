"""Quantization-aware training with BatchNormalization folded: the trainable model in
which every conv, depthwise conv or dense layer followed by a BN is one
`QuantizedConvBN` (its folded weights on the int8 files' grid, BN statistics updating
until they freeze), so that fine-tuning learns weights that survive int8 rounding as
the file will hold them.

The pairs are the ones `keras_bn.fold` folds "after" (the BN reads only that layer's
output, on its channel axis); each BN that stays is named with the reason, as in the
fold plan. The model is not changed.
"""

import dataclasses
import importlib

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.folding.graph import Graph
from keras_bn.folding.kinds import kind_of
from keras_bn.folding.plan import plan_model
from keras_bn.folding.rewrite import _arrays, _rebuild, _set_weights

#: Layer classes a QuantizedConvBN computes (channels last), by the kind it calls them.
_CLASSES = {"Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv",
            "DepthwiseConv2D": "depthwise", "Dense": "dense"}


@dataclasses.dataclass
class AwarePlan:
    """What `quantize_aware` did: `fused` maps each new QuantizedConvBN (named as the
    layer it replaces) to the BN merged into it; `kept` maps each BN left as it was to
    the reason."""

    fused: dict = dataclasses.field(default_factory=dict)
    kept: dict = dataclasses.field(default_factory=dict)


def _layer_class(plumbing):
    module = importlib.import_module(f"keras_bn.layers.{plumbing.__name__.split('.')[-1]}")
    return module.QuantizedConvBN


def _why_not(layer, bn, decision):
    """Why a folded-after pair cannot become a QuantizedConvBN, or None."""
    name = type(layer).__name__
    if len(decision.chain) != 1:
        return "BNs in a row (fold them first)"
    if name not in _CLASSES or kind_of(layer) is None:
        return f"it follows a {name}, which QuantizedConvBN does not compute"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"'{layer.name}' is channels_first; int8 files are channels last"
    if getattr(bn, "virtual_batch_size", None) or getattr(bn, "synchronized", False):
        return "ghost batches or synchronized statistics are not simulated"
    return None


def _arguments(layer, bn, freeze_after, weight_bits):
    """The QuantizedConvBN configuration that replaces `layer` -> `bn`."""
    config = layer.get_config()
    kind = _CLASSES[type(layer).__name__]
    args = {"kind": kind, "use_bias": bool(config.get("use_bias", True)),
            "momentum": float(bn.momentum), "epsilon": float(bn.epsilon),
            "center": getattr(bn, "beta", None) is not None,
            "scale": getattr(bn, "gamma", None) is not None,
            "freeze_after": freeze_after, "weight_bits": weight_bits,
            "name": layer.name, "dtype": config.get("dtype"), "trainable": layer.trainable}
    if kind == "dense":
        return {**args, "filters": config["units"]}
    args.update(kernel_size=config["kernel_size"], strides=config["strides"],
                padding=config["padding"], dilation_rate=config["dilation_rate"])
    if kind == "depthwise":
        return {**args, "filters": config["depth_multiplier"]}
    return {**args, "filters": config["filters"], "groups": config.get("groups", 1)}


def _weights(layer, bn, args):
    """`{short name: array}` of the QuantizedConvBN: the layer's kernel (and bias), the
    BN's parameters and statistics, and its step counter at 0."""
    mine = _arrays(layer)
    kernel = mine.get("depthwise_kernel", mine.get("kernel"))
    flat = lambda v: np.reshape(np.asarray(v), -1)
    weights = {"kernel": kernel}
    if args["use_bias"]:
        weights["bias"] = mine["bias"]
    if args["scale"]:
        weights["gamma"] = flat(bn.gamma)
    if args["center"]:
        weights["beta"] = flat(bn.beta)
    weights.update(moving_mean=flat(bn.moving_mean), moving_variance=flat(bn.moving_variance),
                   step=np.int32(0))
    return weights


def quantize_aware(model, *, freeze_after: int | None = None, weight_bits: int | None = 8,
                   return_plan: bool = False):
    """A trainable copy of `model` in which every conv, depthwise conv or dense layer
    followed by a BatchNormalization is one `QuantizedConvBN`.

    Each `QuantizedConvBN` starts from the pair's weights and statistics: in inference
    it computes the folded layer with its kernel on the int8 grid of the files
    (symmetric per output channel), and in training conv -> BN with the batch's
    statistics (moving statistics updated) until `freeze_after` training steps, the
    inference graph after. Train it with `model.fit` as the original.

    Handles the flavours' own BatchNormalization and keras_bn's BatchNormalization and
    BatchRenormalization (trained here as BatchNormalization: the statistics are the
    batch's). Conv1D/2D/3D (groups too), DepthwiseConv2D and Dense, channels last, at
    the model's top level.

    Args:
      model: A built Sequential or functional model (tf-keras or Keras 3); not changed.
      freeze_after: Training steps after which the BN statistics freeze (Krishnamoorthi
        2018 freezes them after about a fifth of fine-tuning); None: never.
      weight_bits: 8 (int8 weights) or None (the float folded layer; for checks).
      return_plan: Also return the `AwarePlan` (the pairs fused, the BNs kept and why).

    Returns:
      The new model (a functional or Sequential model of `model`'s flavour), or
      `(model, AwarePlan)`.

    Raises:
      keras_bn.errors.InputError: an unbuilt or subclassed model, or `freeze_after`
        that is not a positive integer.
    """
    if freeze_after is not None and (not isinstance(freeze_after, (int, np.integer))
                                      or freeze_after < 1):
        raise InputError(f"quantize_aware of '{model.name}': freeze_after={freeze_after!r}; "
                         "give a number of training steps >= 1, or None.")
    if not model.built:
        raise InputError(f"Model '{model.name}' is not built: call it on data or give it "
                         "an Input shape first.")
    plumbing = flavour.of(model)
    graph = Graph(model)
    entries, layer_class = graph.entries(), _layer_class(plumbing)
    plan, updates, removed = AwarePlan(), {}, {}
    for decision in plan_model(model).decisions:
        if not decision.folded:
            plan.kept[decision.bn] = decision.reason
            continue
        if len(decision.path) != 1:
            plan.kept[decision.bn] = ("inside a nested model: quantize_aware fuses the "
                                      "top level's pairs (fold the model first)")
            continue
        if decision.position != "after":
            plan.kept[decision.bn] = (f"before '{decision.into}': it trains as a BN and "
                                      "folds into that layer's inputs on export")
            continue
        layer = graph.nodes[decision.into].layer
        bn = graph.nodes[decision.bn].layer
        why = _why_not(layer, bn, decision)
        if why:
            plan.kept[decision.bn] = why
            continue
        args = _arguments(layer, bn, freeze_after, weight_bits)
        instance = layer_class(**args)
        entry = entries[layer.name]
        entry.update(module=layer_class.__module__, class_name=layer_class.__name__,
                     registered_name=f"keras_bn>{layer_class.__name__}")
        entry["config"] = instance.get_config()
        updates[layer.name] = _weights(layer, bn, args)
        removed[decision.bn] = graph.nodes[decision.bn].calls[0].args[0]
        plan.fused[layer.name] = decision.bn
    config = graph.without(removed)
    new_model = _rebuild(model, config)
    _set_weights(new_model, model, updates, config)
    return (new_model, plan) if return_plan else new_model
