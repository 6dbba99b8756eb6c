"""The model's layer graph, read from (and edited in) its public config.

How a call's tensors are written in a config is each flavour's (`read_call`,
`walk_references` in `keras_bn.flavours`); both schemas list the model outputs as
`[layer_name, node_index, tensor_index]`. A Sequential model's config is a list of
layers, each reading the previous one's output.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Flavour, Layer, Model


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
    reads: list[Ref]


@dataclass
class Node:
    """One layer of the graph: its name, object (None for a Sequential InputLayer) and calls."""

    name: str
    layer: Layer  # None for a Sequential model's InputLayer
    calls: list[Call] = field(default_factory=list)


def _as_ref(value):
    return Ref(value[0], int(value[1]), int(value[2]))


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
        self.config = self.flavour.model_config(model)
        self.sequential = isinstance(model, self.flavour.keras.Sequential)
        self._index(self.flavour.operations(model))

    @classmethod
    def of_config(cls, plumbing: Flavour, config: dict, sequential: bool) -> "Graph":
        """The graph a config describes (an edited one, before a model is built from it):
        its nodes have no layer objects."""
        graph = cls.__new__(cls)
        graph.flavour, graph.model, graph.config = plumbing, None, config
        graph.sequential = sequential
        graph._index({})
        return graph

    def _index(self, layers):
        self.nodes = {name: Node(name, layers.get(name), calls)
                      for name, calls in self._read_calls()}
        self.outputs = ([Ref(name) for name in list(self.nodes)[-1:]] if self.sequential else
                        [_as_ref(ref) for ref in _flat_refs(self.config["output_layers"])])
        self.consumers: dict[Ref, list[Call]] = {}
        for node in self.nodes.values():
            for call in node.calls:
                for ref in call.reads:
                    self.consumers.setdefault(ref, []).append(call)

    def _read_calls(self):
        if self.sequential:
            previous = None
            for entry in self.config["layers"]:
                name = entry["config"]["name"]
                args: list[Ref] = [Ref(previous)] if previous else []
                yield name, [Call(name, 0, args, {}, list(args))]
                previous = name
            return
        for entry in self.config["layers"]:
            yield entry["name"], [self._read_call(entry["name"], i, data)
                                  for i, data in enumerate(entry["inbound_nodes"])]

    def _read_call(self, name, index, data):
        args, kwargs, reads = self.flavour.read_call(data, _as_ref)
        return Call(name, index, args, kwargs, list(dict.fromkeys(reads)))

    def entries(self):
        """Layer name -> its config entry (to edit in place before `without`)."""
        return {(e["config"]["name"] if self.sequential else e["name"]): e
                for e in self.config["layers"]}

    def without(self, removed):
        """The (edited) config without the `removed` layers.

        Args:
          removed: layer name -> the `Ref` its output is replaced by (its input), or a
            list of them, one per call of the layer. Each removed layer has one output.

        Returns:
          The config dict, every reference to a removed layer's output (in call
          arguments, keyword arguments and the model outputs) pointing at its input.
        """
        def resolve(ref):
            while ref.layer in removed:
                target = removed[ref.layer]
                ref = target[ref.call] if isinstance(target, list) else target
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
            self.flavour.walk_references(entry["inbound_nodes"], rewire)
        walk_outputs(config["output_layers"], rewire)
        return config


def corresponding(graph: Graph, rebuilt: Model) -> dict:
    """Node name in `graph` -> node name in `rebuilt`, a graph of the same topology (the
    model built from `graph`'s config), matched by position, never by name: a custom
    layer whose constructor drops its `name` comes back under another one. Sequential
    layers pair in order; functional ones from the outputs, in order, then each call's
    inputs in the order the call reads them."""
    if graph.sequential:
        return dict(zip(graph.nodes, rebuilt.nodes))
    pairs = {}
    todo = list(zip(graph.outputs, rebuilt.outputs))
    while todo:
        mine, theirs = todo.pop()
        if mine.layer in pairs:
            continue
        pairs[mine.layer] = theirs.layer
        for call, other in zip(graph.nodes[mine.layer].calls,
                               rebuilt.nodes[theirs.layer].calls):
            todo.extend(zip(call.reads, other.reads))
    return pairs


def pointing_at(target: list) -> Callable[[list], None]:
    """An `on_reference` for `walk_references` that points each tensor reference at
    `target` (`[layer name, node index, tensor index]`)."""
    def point(reference: list) -> None:
        reference[0:3] = target
    return point


def walk_outputs(value, on_ref):
    """Calls `on_ref(list)` on every `[layer, node, tensor]` of a model's `output_layers`
    (one, or a list or dict of them)."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        on_ref(value)
    elif isinstance(value, (list, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            walk_outputs(item, on_ref)


def _flat_refs(value: list) -> list:
    found: list = []
    walk_outputs(value, found.append)
    return found
