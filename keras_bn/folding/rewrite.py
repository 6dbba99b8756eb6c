"""Carries out a FoldPlan: one new model, built once, in time linear in the model's size.

All weight surgery lives here (the config editing is `graph.Graph.without`). Folded BN
layers are dropped and their consumers rewired to the BN's input; layers that absorb a BN
get a bias if they had none. Nested models are edited inside the same config, the new
model is built from it once, and every weight is set in one batch: the originals, or the
folded ones from the kinds registry. `rewrite` does not plan: it executes the plan it is
given. The input model is only read.
"""

import copy

import numpy as np

from keras_bn import flavour
from keras_bn.flavour import Layer, Variable
from keras_bn.folding import math as fold_math
from keras_bn.folding.graph import Graph, Ref, corresponding
from keras_bn.folding.kinds import kind_of
from keras_bn.layers.find import is_batch_norm, is_model


def rewrite(model, plan):
    """The model `plan` describes: `model` with the plan's folded BNs merged away.

    Args:
      model: the Sequential or functional model `plan` was made for.
      plan: a `FoldPlan` of `model` (from `plan_model`).

    Returns:
      A new model of the same class; `model` is not changed.
    """
    folded = [d for d in plan.decisions if d.folded]
    config, updates = _edit(model, (), folded)
    new_model = rebuild(model, config)
    _set_weights(new_model, model, updates, config)
    return new_model


def _edit(model, path, folded):
    """`(edited config, weight updates)` of `model` (at `path`) for the `folded` decisions.

    The updates map a layer name to `{short weight name: array}`, or for a nested model
    to its own updates dict.
    """
    graph = Graph(model)
    entries = graph.entries()
    updates: dict[str, dict] = {}
    removed: dict[str, Ref] = {}
    done: set[tuple[str, ...]] = set()
    for decision in folded:
        if decision.path[:-1] != path or decision.chain in done:
            continue
        done.add(decision.chain)
        affine = _chain_affine([graph.nodes[name].layer for name in decision.chain])
        target = graph.nodes[decision.into]
        kind = kind_of(target.layer)
        fold = kind.after if decision.position == "after" else kind.before
        weights = updates.get(target.name) or _arrays(target.layer)
        updates[target.name] = fold(weights, *affine, target.layer)
        entries[target.name]["config"]["use_bias"] = True
        for name in decision.chain:
            removed[name] = graph.nodes[name].calls[0].args[0]
    for name, node in graph.nodes.items():
        inside = [d for d in folded if d.path[:len(path) + 1] == path + (name,)]
        if is_model(node.layer) and inside:
            entries[name]["config"], updates[name] = _edit(node.layer, path + (name,), inside)
    return graph.without(removed), updates


def _short(weight):
    return weight.name.split("/")[-1].split(":")[0]


def _arrays(layer):
    return {_short(w): np.array(w.numpy()) for w in layer.weights}


def _bn_affine(bn):
    get = lambda w: None if w is None else np.reshape(w.numpy(), -1)
    return fold_math.bn_affine(get(bn.moving_mean), get(bn.moving_variance), bn.epsilon,
                               get(getattr(bn, "gamma", None)), get(getattr(bn, "beta", None)))


def _chain_affine(bns):
    affine = _bn_affine(bns[0])
    for bn in bns[1:]:
        affine = fold_math.compose_affine(affine, _bn_affine(bn))
    return affine


def _custom_objects(model, found=None):
    """Classes the config names that Keras does not know by itself: every layer class
    that is not one of the flavour's `layers` (user classes, and the private ones of
    `applications` such as ConvNeXt's LayerScale), by registered and class name."""
    found = {} if found is None else found
    plumbing = flavour.of(model)
    for layer in model.layers:
        cls = type(layer)
        if plumbing.is_revived(layer):
            found.setdefault(cls.__name__, _Revived()).layers[layer.name] = layer
        elif not plumbing.is_builtin_layer_class(cls):
            found.setdefault(plumbing.registered_name(cls), cls)
            found.setdefault(cls.__name__, cls)
        if is_model(layer):
            _custom_objects(layer, found)
    return found


class _Revived:
    """What `from_config` finds under the name of a class that tf-keras revived from a
    SavedModel: a revived layer has no constructor to rebuild it from its config, so the
    new model calls the same layer object (its saved graph, its weights)."""

    def __init__(self):
        self.layers = {}

    def from_config(self, config):
        return self.layers[config["name"]]


def rebuild(model, config):
    """The model `config` describes, of `model`'s class.

    A model that holds Lambda layers already runs their Python code in this process (the
    user built it, or chose to load it unsafely); rebuilding it deserializes that same
    code, so safe mode is lifted for this one call and nowhere else.
    """
    plumbing = flavour.of(model)
    with plumbing.unsafe_deserialization():  # a copy: Keras 3's from_config pops keys
        return plumbing.plain_class(model).from_config(
            copy.deepcopy(config), custom_objects=_custom_objects(model))


def _set_weights(new_model, model, updates, config):
    flavour.of(model).set_values(_weight_pairs(new_model, model, updates, config))


def _matched(new_model, model, config):
    """`(name, new layer, original layer, config entry)` for every layer of `new_model`
    (built from `config`, an edited config of `model`), matched by graph position, never
    by name; a new layer whose constructor did not pass its `name` on gets it back."""
    plumbing = flavour.of(model)
    originals = plumbing.operations(model)
    mine = Graph.of_config(plumbing, config, isinstance(new_model, plumbing.keras.Sequential))
    entries = mine.entries()
    rebuilt = Graph(new_model)
    for name, other in corresponding(mine, rebuilt).items():
        layer = rebuilt.nodes[other].layer
        if layer is None or plumbing.is_input_layer(layer):
            continue
        if layer.name != name:
            plumbing.rename(layer, name)
        yield name, layer, originals.get(name), entries[name]  # None: a new layer


def _weight_pairs(new_model, model, updates, config):
    """`(new variable, value)` for every weight of `new_model`: the folded values in
    `updates`, else the original layer's."""
    for name, layer, original, entry in _matched(new_model, model, config):
        update = updates.get(name)
        if is_model(layer):
            yield from _weight_pairs(layer, original, update or {}, entry["config"])
            continue
        weights = getattr(layer, "weights", [])  # a Keras 3 op node has none
        values = ([update[_short(w)] for w in weights] if update is not None
                  else original.get_weights() if weights else [])
        if len(values) != len(weights):  # pragma: no cover - a bug, not user input
            raise AssertionError(f"weights of '{name}' do not line up")
        yield from zip(weights, values)


def rebuilt(model, config, updates=None):
    """The model an edited config of `model` describes (layers added, removed or of
    another class, matched by graph position), each layer with its weights in
    `updates` (`{top-level layer name: {short weight name: array}}`) or else the
    original layer's. The model is only read."""
    new_model = rebuild(model, config)
    _set_weights(new_model, model, updates or {}, config)
    return new_model


def describe(entry: dict, layer: Layer) -> None:
    """Makes the config `entry` of a model describe `layer` instead (its class, name and
    configuration; its calls stay), for `rebuilt`."""
    serialized = flavour.of(layer).keras.layers.serialize(layer)
    for key in ("module", "class_name", "registered_name", "config", "build_config"):
        if key in serialized:
            entry[key] = serialized[key]
        else:
            entry.pop(key, None)
    if "name" in entry:
        entry["name"] = layer.name


def short_name(weight: Variable) -> str:
    """A weight's name without its layer's path ("kernel", "moving_mean"), the key of
    `weight_arrays` and `rebuilt`'s updates."""
    return _short(weight)


def with_weights(model, updates):
    """A copy of `model` with some layers' weights replaced: `updates` maps a top-level
    layer name to `{short weight name: array}` (every weight of that layer); the other
    layers keep theirs. The model is only read (post-training quantization edits the
    weights of a folded model this way, never the model itself)."""
    config = Graph(model).without({})
    new_model = rebuild(model, config)
    _set_weights(new_model, model, updates, config)
    return new_model


def weight_arrays(layer: Layer) -> dict:
    """`{short weight name: array}` of `layer` (copies), the form `with_weights` takes."""
    return _arrays(layer)


def set_weight_arrays(layer: Layer, arrays: dict) -> None:
    """Assigns `{short weight name: array}` (`weight_arrays`' form) to every weight of
    `layer`, a layer this package made (never one of the user's)."""
    flavour.of(layer).set_values((w, arrays[_short(w)]) for w in layer.weights)


def without_batch_norm(model, seed=0):
    """The same architecture built without its BatchNormalization layers.

    Every BN is dropped (its consumers read its input) and the layer right before it gets
    a bias, as a fold would give it. This is the physical limit a folded model is measured
    against: a folded BN should cost nothing. Weights are copied from `model` where they
    exist; the new biases are small random values (not zeros, which converters would
    optimize away, unlike a trained model's). Nested models are rebuilt the same way.
    """
    config = _without_config(model)
    twin = rebuild(model, config)
    plumbing = flavour.of(model)
    plumbing.set_values(_copy_or_fill(twin, model, config, np.random.RandomState(seed)))
    return twin


def _without_config(model):
    graph = Graph(model)
    entries = graph.entries()
    removed = {}
    for name, node in graph.nodes.items():
        if is_model(node.layer):
            entries[name]["config"] = _without_config(node.layer)
        elif is_batch_norm(node.layer):
            removed[name] = node.calls[0].args[0]
            producer = entries.get(removed[name].layer)
            if producer is not None and "use_bias" in producer["config"]:
                producer["config"]["use_bias"] = True
    return graph.without(removed)


def _copy_or_fill(twin, model, config, rs):
    plumbing = flavour.of(model)
    for _, layer, source, entry in _matched(twin, model, config):
        if is_model(layer):
            yield from _copy_or_fill(layer, source, entry["config"], rs)
            continue
        original = _arrays(source) if getattr(source, "weights", None) else {}
        for weight in getattr(layer, "weights", []):
            value = original.get(_short(weight))
            if value is None or value.shape != tuple(weight.shape):
                value = (rs.randn(*weight.shape) * 0.01).astype(plumbing.numpy_dtype(weight))
            yield weight, value


#: Float dtypes (and mixed-precision policies) a float64 twin computes in float64 instead.
_WIDENED = {"float16", "bfloat16", "float32", "mixed_float16", "mixed_bfloat16"}


def in_float64(model):
    """The same model, every float layer computing in float64, with the same weights: the
    reference against which `verify` measures what float32 rounding alone does to the
    model's outputs. The model is only read.

    Raises:
      Exception: whatever Keras or TensorFlow raise where a layer cannot be built or run
        in float64 (an op without a float64 kernel, a custom layer that hard-codes
        float32); the caller reports the noise as not measured.
    """
    config = _widened(Graph(model).without({}))
    twin = rebuild(model, config)
    plumbing = flavour.of(model)
    plumbing.set_values((weight, np.asarray(value).astype(plumbing.numpy_dtype(weight)))
                        for weight, value in _weight_pairs(twin, model, {}, config))
    return twin


def _widened(value):
    """A copy of a config with every float dtype (a name, or a dtype policy's) float64."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "dtype" and isinstance(item, str) and item in _WIDENED:
                item = "float64"
            elif key == "dtype" and isinstance(item, dict) and item.get("config", {}).get(
                    "name") in _WIDENED:
                item = {**item, "config": {**item["config"], "name": "float64"}}
            out[key] = _widened(item)
        return out
    if isinstance(value, list):
        return [_widened(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_widened(item) for item in value)
    return value
