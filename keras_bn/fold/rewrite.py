"""Carries out a FoldPlan: one new model, built once, in time linear in the model's size.

All graph surgery lives here. The model's config (public Keras API) is edited: folded BN
layers are dropped and their consumers rewired to the BN's input; layers that absorb a BN
get a bias if they had none. The new model is built from that config once, and every
weight is set in one batch: the originals, or the folded ones from `keras_bn.fold.math`.
The input model is only read.
"""

import numpy as np

from keras_bn import _keras
from keras_bn.fold import math as fold_math
from keras_bn.fold.plan import (AFTER_KINDS, BEFORE_KINDS, FoldPlan, Graph, _kind,
                                  is_batch_norm, is_model, plan)


def _short(weight):
    return weight.name.split("/")[-1].split(":")[0]


def _arrays(layer):
    return {_short(w): np.array(w.numpy()) for w in layer.weights}


def _bn_affine(bn):
    get = lambda w: None if w is None else np.reshape(w.numpy(), -1)
    return fold_math.bn_affine(get(bn.moving_mean), get(bn.moving_variance), bn.epsilon,
                               get(getattr(bn, "gamma", None)), get(getattr(bn, "beta", None)))


def _fold_after(kind, w, a, b):
    if kind in ("conv", "dense"):
        w["kernel"], w["bias"] = fold_math.fold_bn_after_conv(w["kernel"], w.get("bias"), a, b)
    elif kind == "depthwise":
        w["depthwise_kernel"], w["bias"] = fold_math.fold_bn_after_depthwise(
            w["depthwise_kernel"], w.get("bias"), a, b)
    elif kind == "separable":
        w["depthwise_kernel"], w["pointwise_kernel"], w["bias"] = (
            fold_math.fold_bn_after_separable(w["depthwise_kernel"], w["pointwise_kernel"],
                                              w.get("bias"), a, b))
    elif kind == "conv_transpose":
        w["kernel"], w["bias"] = fold_math.fold_bn_after_conv_transpose(
            w["kernel"], w.get("bias"), a, b)
    else:  # pragma: no cover - plan only proposes the kinds above
        raise AssertionError(kind)


def _fold_before(kind, w, a, b):
    if kind == "dense":
        w["kernel"], w["bias"] = fold_math.fold_bn_before_dense(w["kernel"], w.get("bias"), a, b)
    elif kind == "conv":
        w["kernel"], w["bias"] = fold_math.fold_bn_before_conv(w["kernel"], w.get("bias"), a, b)
    elif kind == "depthwise":
        w["depthwise_kernel"], w["bias"] = fold_math.fold_bn_before_depthwise(
            w["depthwise_kernel"], w.get("bias"), a, b)
    else:  # pragma: no cover
        raise AssertionError(kind)


def _custom_objects(model, found=None):
    """Classes the config names that tf-keras does not know by itself."""
    found = {} if found is None else found
    for layer in model.layers:
        cls = type(layer)
        if not cls.__module__.startswith("tf_keras."):
            found[_keras.keras.saving.get_registered_name(cls)] = cls
        if is_model(layer):
            _custom_objects(layer, found)
    return found


def fold_model(model, prefix=""):
    """Returns `(new_model, FoldPlan)`; nested models are folded inside, recursively."""
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built: call it on data or give it an "
                         "Input shape first, so its BN statistics exist.")
    graph = Graph(model)
    the_plan = plan(graph, prefix)
    entries = _entries(graph)

    new_weights = {}  # layer name -> {short weight name: array} or a list for nested models
    decisions = {d.bn.split("/")[-1]: d for d in the_plan.decisions}
    ordered = []
    for name, node in graph.nodes.items():
        if is_model(node.layer):
            nested, nested_plan = fold_model(node.layer, prefix + name + "/")
            entries[name]["config"] = nested.get_config()
            new_weights[name] = nested.get_weights()
            ordered.extend(nested_plan.decisions)
        elif name in decisions:
            ordered.append(decisions[name])
    the_plan = FoldPlan(ordered)

    removed = {}
    for decision in the_plan.decisions:
        local = decision.bn[len(prefix):]
        if not decision.folded or "/" in local:
            continue
        bn = graph.nodes[local]
        target = graph.nodes[decision.into]
        weights = new_weights.setdefault(target.name, _arrays(target.layer))
        a, b = _bn_affine(bn.layer)
        if decision.position == "after":
            _fold_after(_kind(target.layer, AFTER_KINDS), weights, a, b)
        else:
            _fold_before(_kind(target.layer, BEFORE_KINDS), weights, a, b)
        entries[target.name]["config"]["use_bias"] = True
        removed[local] = bn.inputs[0]

    new_model = _rebuild(model, graph, removed)
    _set_weights(new_model, model, new_weights)
    return new_model, the_plan


def _entries(graph):
    """Layer name -> its entry in `graph.config["layers"]`, to edit in place."""
    return {(e["config"]["name"] if graph.sequential else e["name"]): e
            for e in graph.config["layers"]}


def _rebuild(model, graph, removed):
    """The model `graph.config` (as edited) describes, without the `removed` layers."""
    _drop_layers(graph.config, graph, removed)
    return type(model).from_config(graph.config, custom_objects=_custom_objects(model))


def _drop_layers(config, graph, removed):
    """Removes the `removed` layers (name -> the input ref that replaces their output)."""
    def resolve(ref):
        while ref[0] in removed:
            ref = removed[ref[0]]
        return ref

    if graph.sequential:
        layers = config["layers"]
        for i, entry in enumerate(layers):
            if entry["config"]["name"] in removed and "batch_input_shape" in entry["config"]:
                following = layers[i + 1]["config"]  # the input shape moves along
                following.setdefault("batch_input_shape", entry["config"]["batch_input_shape"])
        config["layers"] = [e for e in layers if e["config"]["name"] not in removed]
        return
    config["layers"] = [e for e in config["layers"] if e["name"] not in removed]
    for entry in config["layers"]:
        for call in entry["inbound_nodes"]:
            for i, ref in enumerate(call):
                call[i] = list(resolve(tuple(ref[:3]))) + list(ref[3:])
    config["output_layers"] = [list(resolve(tuple(ref))) for ref in config["output_layers"]]


def _set_weights(new_model, model, new_weights):
    originals = {layer.name: layer for layer in model.layers}
    pairs = []
    for layer in new_model.layers:
        folded = new_weights.get(layer.name)
        if isinstance(folded, list):
            values = folded
        elif folded is not None:
            values = [folded[_short(w)] for w in layer.weights]
        else:
            values = originals[layer.name].get_weights()
        if len(values) != len(layer.weights):  # pragma: no cover - a bug, not user input
            raise AssertionError(f"weights of '{layer.name}' do not line up")
        pairs.extend(zip(layer.weights, values))
    _keras.keras.backend.batch_set_value(pairs)


def without_batch_norm(model, seed=0):
    """The same architecture built without its BatchNormalization layers.

    Every BN is dropped (its consumers read its input) and the layer right before it gets
    a bias, as a fold would give it. This is the physical limit a folded model is measured
    against: a folded BN should cost nothing. Weights are copied from `model` where they
    exist; the new biases are small random values (not zeros, which converters would
    optimize away, unlike a trained model's). Nested models are rebuilt the same way.
    """
    graph = Graph(model)
    entries = _entries(graph)
    removed = {}
    for name, node in graph.nodes.items():
        if is_model(node.layer):
            entries[name]["config"] = without_batch_norm(node.layer, seed).get_config()
        elif node.layer is not None and is_batch_norm(node.layer):
            removed[name] = node.inputs[0]
            producer = entries.get(node.inputs[0][0])
            if producer is not None and "use_bias" in producer["config"]:
                producer["config"]["use_bias"] = True
    twin = _rebuild(model, graph, removed)
    _copy_or_fill(twin, model, np.random.RandomState(seed))
    return twin


def _copy_or_fill(twin, model, rs):
    originals = {layer.name: layer for layer in model.layers}
    pairs = []
    for layer in twin.layers:
        source = originals[layer.name]
        if is_model(layer):
            _copy_or_fill(layer, source, rs)
            continue
        original = _arrays(source)
        for weight in layer.weights:
            value = original.get(_short(weight))
            if value is None or value.shape != tuple(weight.shape):
                value = (rs.randn(*weight.shape) * 0.01).astype(weight.dtype.as_numpy_dtype)
            pairs.append((weight, value))
    _keras.keras.backend.batch_set_value(pairs)
