"""Which BatchNormalization folds into which neighbour, or why it stays.

The plan reads the model's graph from its (public) config and its layers; it changes
nothing. `rewrite` carries the plan out.
"""

from dataclasses import dataclass, field

from keras_bn import _keras
from keras_bn._table import aligned
from keras_bn.layers import BatchNormalization as _OurBatchNormalization

_L = _keras.keras.layers

# Layer -> BN: the kinds whose output channels can absorb a following BN.
AFTER_KINDS = {
    _L.Conv1D: "conv", _L.Conv2D: "conv", _L.Conv3D: "conv", _L.Dense: "dense",
    _L.DepthwiseConv1D: "depthwise", _L.DepthwiseConv2D: "depthwise",
    _L.SeparableConv1D: "separable", _L.SeparableConv2D: "separable",
    _L.Conv1DTranspose: "conv_transpose", _L.Conv2DTranspose: "conv_transpose",
    _L.Conv3DTranspose: "conv_transpose",
}
# BN -> layer: the kinds whose input channels can absorb a preceding BN (when exact).
BEFORE_KINDS = {
    _L.Dense: "dense", _L.Conv1D: "conv", _L.Conv2D: "conv", _L.Conv3D: "conv",
    _L.DepthwiseConv1D: "depthwise", _L.DepthwiseConv2D: "depthwise",
}


def _kind(layer, table):
    # Exact class match first: Conv1DTranspose subclasses Conv1D but folds differently.
    if type(layer) in table:
        return table[type(layer)]
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None


def is_batch_norm(layer):
    """A tf-keras BatchNormalization or a keras_bn one (BatchRenormalization included)."""
    return isinstance(layer, (_keras.BuiltinBatchNormalization, _OurBatchNormalization))


def bn_axes(layer):
    """The BN layer's channel axes as non-negative integers (it must be built)."""
    if isinstance(layer, _OurBatchNormalization):
        return list(layer.channel_axes)
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_shape)
    return sorted(a % rank for a in axis)


def channel_axis(layer, rank):
    """The channel axis of `layer`'s output (or input) of `rank`."""
    data_format = getattr(layer, "data_format", "channels_last")
    return 1 if data_format == "channels_first" else rank - 1


@dataclass
class Decision:
    """What happens to one BN layer.

    Attributes:
      bn: the BN layer's name (`outer/inner` inside a nested model).
      kind: its class name.
      folded: whether it is folded away.
      into: the layer that absorbs it (None when kept).
      position: "after" (layer -> BN) or "before" (BN -> layer); None when kept.
      reason: why it is kept (or how it folds).
    """

    bn: str
    kind: str
    folded: bool
    into: str = None
    position: str = None
    reason: str = ""


@dataclass
class FoldPlan:
    """The decision for every BN layer of a model, in graph order; prints as a table."""

    decisions: list = field(default_factory=list)
    max_error: float = None
    tolerance: float = None

    @property
    def folded(self):
        return [d for d in self.decisions if d.folded]

    @property
    def kept(self):
        return [d for d in self.decisions if not d.folded]

    def as_dicts(self):
        return [vars(d).copy() for d in self.decisions]

    def table(self):
        rows = [("BN layer", "kind", "result", "reason")]
        for d in self.decisions:
            result = f"folded {d.position} -> {d.into}" if d.folded else "kept"
            rows.append((d.bn, d.kind, result, d.reason))
        summary = f"{len(self.folded)} folded, {len(self.kept)} kept"
        if self.max_error is not None:
            summary += (f"; verified: max abs error {self.max_error:.3g} "
                        f"(tolerance {self.tolerance:.3g})")
        return aligned(rows, rule=True) + "\n" + summary

    def __str__(self):
        return self.table()


@dataclass
class Node:
    """One layer of the graph: its object, config entry and inputs as `(name, node, tensor)`."""

    name: str
    layer: object
    inputs: list
    calls: int
    kwargs: dict


class Graph:
    """The model's layer graph, read from its config (Sequential or functional).

    Raises:
      ValueError: a subclassed model, whose graph cannot be read or rebuilt.
    """

    def __init__(self, model):
        """Reads `model.get_config()` (a fresh dict: `rewrite` edits it in place)."""
        if not _keras.is_graph_model(model):
            raise ValueError(
                f"Model '{model.name}' is a subclassed model ({type(model).__name__}): its "
                "layers are connected by Python code in `call`, which cannot be read or "
                "rebuilt. Build it as a Sequential or functional model to fold it.")
        self.model = model
        self.config = model.get_config()
        self.sequential = isinstance(model, _keras.keras.Sequential)
        self.nodes = {}
        layers = {layer.name: layer for layer in model.layers}
        previous = None
        for entry in self.config["layers"]:
            name = entry["config"]["name"] if self.sequential else entry["name"]
            if self.sequential:
                inputs = [(previous, 0, 0)] if previous else []
                calls, kwargs = 1, {}
                previous = name
            else:
                calls = len(entry["inbound_nodes"])
                first = entry["inbound_nodes"][0] if calls else []
                inputs = [tuple(ref[:3]) for ref in first]
                kwargs = first[0][3] if first and len(first[0]) > 3 else {}
            # None for the InputLayer of a Sequential model, which is not in `layers`.
            self.nodes[name] = Node(name, layers.get(name), inputs, calls, kwargs)
        self.outputs = ([(previous, 0, 0)] if self.sequential
                        else [tuple(ref) for ref in self.config["output_layers"]])
        self.consumers = {}
        for node in self.nodes.values():
            for ref in node.inputs:
                self.consumers.setdefault(ref, []).append(node.name)
        if not self.sequential:  # every call of a shared layer consumes too
            for entry in self.config["layers"]:
                for call in entry["inbound_nodes"][1:]:
                    for ref in call:
                        self.consumers.setdefault(tuple(ref[:3]), []).append(entry["name"])


def is_model(layer):
    """Whether a layer of a model is itself a (nested) model."""
    return isinstance(layer, _keras.keras.Model)


def batch_norm_layers(model, prefix=""):
    """`(name, layer)` for every BN layer of `model`, nested models included
    (`outer/inner` names), in layer order."""
    for layer in model.layers:
        if is_model(layer):
            yield from batch_norm_layers(layer, prefix + layer.name + "/")
        elif is_batch_norm(layer):
            yield prefix + layer.name, layer


def plan_model(model, prefix=""):
    """The FoldPlan of `model` with its nested models' decisions in graph order."""
    graph = Graph(model)
    own = {d.bn: d for d in plan(graph, prefix).decisions}
    decisions = []
    for name, node in graph.nodes.items():
        if is_model(node.layer):
            decisions.extend(plan_model(node.layer, prefix + name + "/").decisions)
        elif prefix + name in own:
            decisions.append(own[prefix + name])
    return FoldPlan(decisions)


def plan(graph, prefix=""):
    """The FoldPlan for `graph` (nested models are planned by `rewrite`, recursively)."""
    decisions = []
    absorbed_after = set()
    for node in graph.nodes.values():
        if node.layer is None or not is_batch_norm(node.layer):
            continue
        source = "keras_bn" if isinstance(node.layer, _OurBatchNormalization) else "tf_keras"
        decision = Decision(prefix + node.name, f"{source}.{type(node.layer).__name__}", False)
        reason = _why_not_at_all(graph, node)
        if reason:
            decision.reason = reason
        else:
            after_target, after_reason = _after(graph, node, absorbed_after)
            if after_target:
                absorbed_after.add(after_target)
                decision.folded, decision.into, decision.position = True, after_target, "after"
                decision.reason = "BN follows the layer directly"
            else:
                before_target, before_reason = _before(graph, node)
                if before_target:
                    decision.folded, decision.into = True, before_target
                    decision.position = "before"
                    decision.reason = "BN feeds the layer directly"
                else:
                    decision.reason = f"{after_reason}; {before_reason}"
        decisions.append(decision)
    return FoldPlan(decisions)


def _why_not_at_all(graph, node):
    layer = node.layer
    if node.calls != 1:
        return f"shared layer: called {node.calls} times, each call would need other weights"
    if node.kwargs.get("training") is True:
        return ("called with training=True: it normalizes with batch statistics even at "
                "inference, which no weight can hold")
    if len(bn_axes(layer)) != 1:
        return f"normalizes over several axes {bn_axes(layer)}, no layer has such channels"
    if len(node.inputs) != 1:
        return "has several inputs"
    return None


def _after(graph, node, absorbed):
    """(producer name, None) if the BN folds into the layer before it, else (None, why)."""
    ref = node.inputs[0]
    producer = graph.nodes.get(ref[0])
    layer = producer.layer if producer else None
    kind = _kind(layer, AFTER_KINDS) if layer is not None else None
    label = f"{type(layer).__name__} '{ref[0]}'" if layer is not None else f"'{ref[0]}'"
    if kind is None:
        return None, f"input comes from {label}, which has no weights to fold into"
    if producer.calls != 1:
        return None, f"input comes from {label}, a shared layer"
    others = [c for c in graph.consumers.get(ref, []) if c != node.name]
    if others or ref in graph.outputs:
        feeds = ", ".join(f"'{c}'" for c in others) or "the model output"
        return None, f"{label}'s output also feeds {feeds}"
    activation = getattr(layer, "activation", None)
    if activation is not None and activation is not _keras.keras.activations.linear:
        return None, (f"{label} applies activation '{activation.__name__}' before the BN")
    rank = len(layer.output_shape)
    if bn_axes(node.layer) != [channel_axis(layer, rank)]:
        return None, (f"BN axis {bn_axes(node.layer)} is not {label}'s channel axis "
                      f"{channel_axis(layer, rank)}")
    if ref[0] in absorbed:
        return None, f"{label} already absorbs another BN"
    return ref[0], None


def _before(graph, node):
    """(consumer name, None) if the BN folds into the layer after it, else (None, why)."""
    ref = (node.name, 0, 0)
    consumers = graph.consumers.get(ref, [])
    if ref in graph.outputs:
        return None, "its output is a model output"
    if len(consumers) != 1:
        return None, f"its output feeds {len(consumers)} layers"
    consumer = graph.nodes[consumers[0]]
    layer = consumer.layer
    label = f"{type(layer).__name__} '{consumer.name}'"
    kind = _kind(layer, BEFORE_KINDS)
    if kind is None:
        return None, f"output goes to {label}, which cannot absorb a BN in front of it"
    if consumer.calls != 1:
        return None, f"output goes to {label}, a shared layer"
    rank = len(layer.input_shape)
    if bn_axes(node.layer) != [channel_axis(layer, rank)]:
        return None, (f"BN axis {bn_axes(node.layer)} is not {label}'s input channel axis "
                      f"{channel_axis(layer, rank)}")
    if kind != "dense":
        if getattr(layer, "groups", 1) != 1:
            return None, f"output goes to {label} with groups={layer.groups}"
        if layer.padding != "valid" and any(k != 1 for k in layer.kernel_size):
            return None, (f"output goes to {label} with padding='{layer.padding}': its zero "
                          "padding would see the BN's offset at the borders, so folding "
                          "would change the border outputs")
    return consumer.name, None
