"""The model's layer graph, read from (and edited in) its public config: the one place
that knows the config schemas of tf-keras and Keras 3.

A functional model's config lists each layer with its `inbound_nodes`, one entry per call.
tf-keras writes a call as a nested structure (a tensor, a list or dict of tensors) whose
leaves are *tensor references* `[layer_name, node_index, tensor_index, kwargs]` (kwargs
optional), or `["_CONSTANT_VALUE", -1, value, kwargs]` for a constant first argument of
an op layer (`x * 0.5`, `tf.nn.relu6(x)`: `TFOpLambda`, `SlicingOpLambda`). The keyword
arguments may hold tensor references too (`x + y` stores `y` there). A list counts as a
reference exactly when tf-keras's own loader treats it as one: 3 or 4 items, a string
first. Layer names may contain `/`; they are never split here.

Keras 3 writes each call as `{"args": [...], "kwargs": {...}}` (every positional
argument, constants as plain values), a tensor as `{"class_name": "__keras_tensor__",
"config": {"keras_history": [layer_name, node_index, tensor_index], ...}}`, and its ops
(`x * 2.0`, `keras.ops.*`) as nodes of their own that are not layers. Both schemas list
the model outputs as `[layer_name, node_index, tensor_index]`.

A Sequential model's config is a list of layers, each reading the previous one's output.
"""

from dataclasses import dataclass, field

from keras_bn import flavour
from keras_bn.errors import InputError

CONSTANT = "_CONSTANT_VALUE"  # tf-keras's marker for a constant first argument
KERAS_TENSOR = "__keras_tensor__"  # Keras 3's class name of a tensor reference


@dataclass(frozen=True)
class Ref:
    """A tensor: output `tensor` of call `call` of layer `layer`."""

    layer: str
    call: int = 0
    tensor: int = 0


@dataclass
class Call:
    """One call of a layer: the tensors it reads and its keyword arguments.

    Attributes:
      layer: the called layer's name.
      index: which call of the layer (its node index in the config).
      args: the tensors of its first (positional) argument, in order.
      kwargs: its keyword arguments, tensors in them as `Ref`.
      reads: every tensor the call reads (first argument and keyword arguments).
    """

    layer: str
    index: int
    args: list
    kwargs: dict
    reads: list


@dataclass
class Node:
    """One layer of the graph: its name, object (None for a Sequential InputLayer) and calls."""

    name: str
    layer: object
    calls: list = field(default_factory=list)


def _is_ref(value):
    return isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)


def _walk(value, on_ref, into_kwargs=True):
    """Calls `on_ref(list)` on every tensor reference in a nested config value and, with
    `into_kwargs`, in the keyword arguments a reference carries."""
    if _is_ref(value):
        on_ref(value)
        if into_kwargs and len(value) == 4:
            _walk(value[3], on_ref)
    elif isinstance(value, (list, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            _walk(item, on_ref, into_kwargs)


def _as_ref(value):
    return Ref(value[0], int(value[1]), int(value[2]))


def _to_refs(value):
    """A nested config value with tensor references replaced by `Ref`."""
    if _is_ref(value) and value[0] != CONSTANT:
        return _as_ref(value)
    if isinstance(value, list):
        return [_to_refs(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_refs(item) for key, item in value.items()}
    return value


def _walk_keras3(value, on_ref):
    """Calls `on_ref(keras_history)` (a mutable `[layer, node, tensor]` list) on every
    tensor reference of a Keras 3 call config."""
    if isinstance(value, dict) and value.get("class_name") == KERAS_TENSOR:
        on_ref(value["config"]["keras_history"])
    elif isinstance(value, (list, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            _walk_keras3(item, on_ref)


def _to_refs_keras3(value):
    if isinstance(value, dict) and value.get("class_name") == KERAS_TENSOR:
        return _as_ref(value["config"]["keras_history"])
    if isinstance(value, list):
        return [_to_refs_keras3(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_refs_keras3(item) for key, item in value.items()}
    return value


def _read_call_keras3(name, index, data):
    """A `Call` from one entry of a Keras 3 layer's `inbound_nodes`."""
    args, reads = [], []
    positional = data.get("args", [])
    _walk_keras3(positional[:1], lambda ref: args.append(_as_ref(ref)))
    _walk_keras3(data, lambda ref: reads.append(_as_ref(ref)))
    kwargs = _to_refs_keras3(data.get("kwargs", {}))
    return Call(name, index, args, kwargs, list(dict.fromkeys(reads)))


def _read_call(name, index, data):
    """A `Call` from one entry of a tf-keras layer's `inbound_nodes`."""
    args, kwargs, reads = [], {}, []

    def first_argument(ref):
        nonlocal kwargs
        if ref[0] != CONSTANT:
            args.append(_as_ref(ref))
        if len(ref) == 4 and ref[3]:
            kwargs = _to_refs(ref[3])

    # The first argument's references sit at the top of the structure; their kwargs are
    # the call's keyword arguments (the same dict, repeated in each reference).
    _walk(data, first_argument, into_kwargs=False)
    _walk(data, lambda ref: ref[0] != CONSTANT and reads.append(_as_ref(ref)))
    return Call(name, index, args, kwargs, list(dict.fromkeys(reads)))


class Graph:
    """The layer graph of a Sequential or functional model, read from its config.

    Attributes:
      model: the model.
      config: `model.get_config()`, a fresh dict that `without` edits.
      sequential: whether the model is Sequential.
      nodes: layer name -> `Node`, in config (topological) order.
      outputs: the model's output tensors as `Ref`.
      consumers: `Ref` -> the calls that read it.

    Raises:
      ValueError: a subclassed model, whose graph cannot be read or rebuilt.
    """

    def __init__(self, model):
        self.flavour = flavour.of(model)
        if not self.flavour.is_graph_model(model):
            raise InputError(
                f"Model '{model.name}' is a subclassed model ({type(model).__name__}): its "
                "layers are connected by Python code in `call`, which cannot be read or "
                "rebuilt. Build it as a Sequential or functional model to fold it.")
        self.model = model
        self.keras3 = flavour.is_keras3(model)
        self.config = model.get_config()
        if self.keras3:  # tuples, as a saved-and-loaded config has lists
            self.config = _as_lists(self.config)
        self.sequential = isinstance(model, self.flavour.keras.Sequential)
        layers = self.flavour.operations(model)
        self.nodes = {name: Node(name, layers.get(name), calls)
                      for name, calls in self._read_calls()}
        self.outputs = ([Ref(name) for name in list(self.nodes)[-1:]] if self.sequential else
                        [_as_ref(ref) for ref in _flat_refs(self.config["output_layers"])])
        self.consumers = {}
        for node in self.nodes.values():
            for call in node.calls:
                for ref in call.reads:
                    self.consumers.setdefault(ref, []).append(call)

    def _read_calls(self):
        if self.sequential:
            previous = None
            for entry in self.config["layers"]:
                name = entry["config"]["name"]
                args = [Ref(previous)] if previous else []
                yield name, [Call(name, 0, args, {}, list(args))]
                previous = name
            return
        read = _read_call_keras3 if self.keras3 else _read_call
        for entry in self.config["layers"]:
            yield entry["name"], [read(entry["name"], i, data)
                                  for i, data in enumerate(entry["inbound_nodes"])]

    def entries(self):
        """Layer name -> its config entry (to edit in place before `without`)."""
        return {(e["config"]["name"] if self.sequential else e["name"]): e
                for e in self.config["layers"]}

    def without(self, removed):
        """The (edited) config without the `removed` layers.

        Args:
          removed: layer name -> the `Ref` its output is replaced by (its input). Each
            removed layer is called once and has one output.

        Returns:
          The config dict, every reference to a removed layer's output (in call
          arguments, keyword arguments and the model outputs) pointing at its input.
        """
        def resolve(ref):
            while ref.layer in removed:
                ref = removed[ref.layer]
            return ref

        def rewire(value):
            if value[0] in removed:
                target = resolve(_as_ref(value))
                value[:3] = [target.layer, target.call, target.tensor]

        config = self.config
        if self.sequential:
            layers = config["layers"]
            for i, entry in enumerate(layers):
                if entry["config"]["name"] in removed and "batch_input_shape" in entry["config"]:
                    following = layers[i + 1]["config"]  # the input shape moves along
                    following.setdefault("batch_input_shape",
                                         entry["config"]["batch_input_shape"])
            config["layers"] = [e for e in layers if e["config"]["name"] not in removed]
            return config
        config["layers"] = [e for e in config["layers"] if e["name"] not in removed]
        for entry in config["layers"]:
            if self.keras3:
                _walk_keras3(entry["inbound_nodes"], rewire)
            else:
                _walk(entry["inbound_nodes"], rewire)
        _walk(config["output_layers"], rewire)
        return config


def _as_lists(value):
    """A config with every tuple turned into a list (Keras 3's `get_config` holds tuples;
    the same config read back from a `.keras` file holds lists, and loads the same)."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    return value


def _flat_refs(value):
    found = []
    _walk(value, found.append)
    return found
