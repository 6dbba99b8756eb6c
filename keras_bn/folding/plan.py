"""Which BatchNormalization folds into which neighbour, or why it stays.

The plan reads the model's graph (`graph`) and its layers and changes nothing; `rewrite`
carries out exactly the plan it is given. BNs in a row (any of the three BN classes,
each called once in inference mode, the first feeding only the next) form a *chain*:
their affine maps compose into one, which folds like a single BN.
"""

from dataclasses import dataclass, field

from keras_bn import flavour
from keras_bn.flavour import Model
from keras_bn.folding.graph import Graph, Ref
from keras_bn.folding.kinds import channel_axis, kind_of, zero_padded
from keras_bn.layers.find import (batch_norm_paths, batch_norm_paths_in, bn_axes, bn_kind,
                                  is_batch_norm, is_model, per_sample_note)
from keras_bn.tools.table import aligned
from keras_bn.verification import Verdict, noise_label


@dataclass
class Decision:
    """What happens to one BN layer.

    Attributes:
      bn: the BN layer's name (`outer/inner` inside a nested model).
      kind: its class, e.g. `tf_keras.BatchNormalization`, `keras.BatchNormalization`.
      folded: whether it is folded away.
      into: the layer that absorbs it (None when kept).
      position: "after" (layer -> BN) or "before" (BN -> layer); None when kept.
      reason: why it is kept (or how it folds).
      category: the reason in a word or two (for tables): "folded", "activation",
        "fan-out", "no weights", "unsupported", "shared", "training", ...
      path: the names of the nested models it sits in, then its own name.
      chain: the names of the BN layers folded together with it (itself included), in
        data order; one name for a lone BN.
    """

    bn: str
    kind: str
    folded: bool
    into: str | None = None
    position: str | None = None
    reason: str = ""
    category: str = ""
    path: tuple[str, ...] = field(default=(), repr=False)
    chain: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class FoldPlan:
    """The decision for every BN layer of a model, in graph order; prints as a table.

    `verdict` (a `Verdict`: `max_error`, `tolerance`, the model's own float32 `noise`,
    the `inputs` used) is filled in by a verified `fold`.
    """

    decisions: list[Decision] = field(default_factory=list)
    verdict: Verdict | None = None
    #: One line naming the model's per-sample normalization layers (GroupNormalization,
    #: LayerNormalization, ...) and why they stay; None where it has none.
    others: str | None = None

    @property
    def max_error(self):
        return None if self.verdict is None else self.verdict.max_error

    @property
    def tolerance(self):
        return None if self.verdict is None else self.verdict.tolerance

    @property
    def noise(self):
        return None if self.verdict is None else self.verdict.noise

    @property
    def folded(self):
        return [d for d in self.decisions if d.folded]

    @property
    def kept(self):
        return [d for d in self.decisions if not d.folded]

    def as_dicts(self) -> list[dict]:
        return [{k: v for k, v in vars(d).items() if k not in ("path", "chain")}
                for d in self.decisions]

    def table(self) -> str:
        rows = [("BN layer", "kind", "result", "reason")]
        for d in self.decisions:
            result = f"folded {d.position} -> {d.into}" if d.folded else "kept"
            rows.append((d.bn, d.kind, result, d.reason))
        summary = f"{len(self.folded)} folded, {len(self.kept)} kept"
        if self.verdict is not None and self.max_error is not None:
            noise = ("not measured" if self.noise is None else f"{self.noise:.3g}")
            summary += (f"; verified on {self.verdict.inputs}: max abs error "
                        f"{self.max_error:.3g} (tolerance {self.tolerance:.3g}; the "
                        f"model's own {noise_label(self.verdict)} {noise})")
        others = "" if self.others is None else "\n" + self.others
        return aligned(rows, rule=True) + "\n" + summary + others

    def __str__(self):
        return self.table()


def plan_model(model: Model) -> FoldPlan:
    """The FoldPlan of `model`, nested models' decisions in graph order.

    Raises:
      ValueError: a subclassed model.
    """
    return FoldPlan(_plan(Graph(model), ()), others=per_sample_note(model))


def _plan(graph, path):
    own = {}
    for chain in _chains(graph):
        for decision in _decide(graph, chain, path):
            own[decision.path[-1]] = decision
    decisions = []
    for name, node in graph.nodes.items():
        if is_model(node.layer):
            decisions.extend(_plan_nested(node.layer, path + (name,)))
        elif name in own:
            decisions.append(own[name])
        elif node.layer is not None:
            decisions.extend(
                _kept(inner, layer, *_why_inside(name, node.layer))
                for inner, layer in batch_norm_paths_in(node.layer, path + (name,)))
    return decisions


def _why_inside(name, layer):
    """`(category, reason)` of a BN that a layer other than a model holds."""
    if flavour.of(layer).is_revived(layer):
        return ("revived", f"inside layer '{name}' ({type(layer).__name__}), revived from a "
                "SavedModel without its class: its saved graph runs as it is")
    return ("custom layer", f"inside custom layer '{name}' ({type(layer).__name__}), whose "
            "call keras_bn cannot see into")


def _plan_nested(model, path):
    if flavour.of(model).is_graph_model(model):
        return _plan(Graph(model), path)
    return [_kept(inner, layer, "subclassed",
                  f"inside subclassed model '{model.name}', whose graph cannot be rebuilt")
            for inner, layer in batch_norm_paths(model, path)]


def _kept(path, layer, category, reason):
    return Decision("/".join(path), bn_kind(layer), False, reason=reason,
                    category=category, path=path, chain=(path[-1],))


def _chains(graph):
    """Every BN of `graph` as chains of names in data order; a BN that cannot fold at all
    is a chain of one."""
    eligible = {name for name, node in graph.nodes.items()
                if is_batch_norm(node.layer) and _why_not_at_all(node) is None}
    chains: list[list[str]] = []
    chain_of: dict[str, list[str]] = {}
    for name, node in graph.nodes.items():
        if not is_batch_norm(node.layer):
            continue
        previous = node.calls[0].args[0].layer if name in eligible else None
        if (previous is not None and previous in eligible
                and _feeds_only(graph, previous, node.calls[0])
                and bn_axes(graph.nodes[previous].layer) == bn_axes(node.layer)):
            chain_of[name] = chain_of[previous]
            chain_of[name].append(name)
        else:
            chain_of[name] = [name]
            chains.append(chain_of[name])
    return chains


def _feeds_only(graph, name, call):
    ref = Ref(name)
    return ref not in graph.outputs and graph.consumers.get(ref, []) == [call]


def _why_not_at_all(node):
    """(category, reason) if this BN cannot fold whatever its neighbours, else None."""
    layer = node.layer
    if len(node.calls) != 1:
        return "shared", (f"shared layer: called {len(node.calls)} times, each call would "
                          "need other weights")
    call = node.calls[0]
    training = call.kwargs.get("training")
    # A BN with trainable=False runs in inference mode whatever `training` says (tf-keras
    # 2); otherwise any value that is not None/False/0 (a tensor included) may train.
    if layer.trainable and not (training is None or (
            isinstance(training, (bool, int, float)) and not training)):
        shown = "a tensor" if isinstance(training, Ref) else repr(training)
        return "training", (f"called with training={shown}: it normalizes with batch "
                            "statistics even at inference, which no weight can hold")
    if len(bn_axes(layer)) != 1:
        return "axes", (f"normalizes over several axes {bn_axes(layer)}, no layer has "
                        "such channels")
    if len(call.args) != 1 or len(call.reads) != 1:
        return "inputs", "has several inputs"
    return None


def _decide(graph, chain, path):
    """The decisions for one chain of BNs (all folded the same way, or all kept)."""
    head, tail = graph.nodes[chain[0]], graph.nodes[chain[-1]]
    why_not = _why_not_at_all(head)
    if why_not:
        category, reason = why_not
        into = position = None
    else:
        axes = bn_axes(head.layer)
        (into, category, reason) = _after(graph, head, axes)
        position = "after"
        if into is None:
            before_into, before_category, before_reason = _before(graph, tail, axes)
            if before_into is not None:
                into, category, reason, position = (before_into, before_category,
                                                    before_reason, "before")
            else:
                reason = f"{reason}; {before_reason}"
    if len(chain) > 1 and into is not None:
        reason += f" (BNs {', '.join(repr(n) for n in chain)} composed into one)"
    return [Decision("/".join(path + (name,)), bn_kind(graph.nodes[name].layer),
                     into is not None, into, position if into else None, reason, category,
                     path + (name,), tuple(chain)) for name in chain]


def _label(node):
    return f"{type(node.layer).__name__} '{node.name}'"


def _not_a_kind(node, what):
    """(category, reason) for a neighbour that is not in the kinds registry."""
    layer = node.layer
    if layer is None or flavour.of(layer).is_input_layer(layer):
        return "input", f"{what} the model input '{node.name}'"
    if is_model(layer):
        return "nested", (f"{what} nested model '{node.name}': fold does not reach across "
                          "a model's boundary")
    if not getattr(layer, "weights", None):  # Keras 3 ops have no weights at all
        return "no weights", f"{what} {_label(node)}, which has no weights to fold into"
    return "unsupported", (f"{what} {_label(node)}, a layer kind fold does not support "
                           "(the supported classes are listed in keras_bn.folding.kinds)")


def _after(graph, bn, axes):
    """(producer name, "folded", how) if the BN folds into the layer before it, else
    (None, category, why)."""
    ref = bn.calls[0].args[0]
    producer = graph.nodes[ref.layer]
    kind = kind_of(producer.layer)
    if kind is None or kind.after is None:
        return (None,) + _not_a_kind(producer, "input comes from")
    layer, label = producer.layer, _label(producer)
    if len(producer.calls) != 1:
        return None, "shared", f"input comes from {label}, a shared layer"
    others = [c.layer for c in graph.consumers.get(ref, []) if c.layer != bn.name]
    if others or ref in graph.outputs:
        feeds = ", ".join(f"'{c}'" for c in others) or "the model output"
        return None, "fan-out", f"{label}'s output also feeds {feeds}"
    activation = getattr(layer, "activation", None)
    if not flavour.of(layer).is_linear(activation):
        return None, "activation", (f"{label} applies activation "
                                    f"'{getattr(activation, '__name__', activation)}' "
                                    "before the BN")
    expected = channel_axis(layer, flavour.of(layer).output_rank(layer))
    if axes != [expected]:
        return None, "axis", f"BN axis {axes} is not {label}'s channel axis {expected}"
    return producer.name, "folded", "BN follows the layer directly"


def _before(graph, bn, axes):
    """(consumer name, "folded", how) if the BN folds into the layer after it, else
    (None, category, why)."""
    ref = Ref(bn.name)
    consumers = graph.consumers.get(ref, [])
    if ref in graph.outputs:
        return None, "output", "its output is a model output"
    if len(consumers) != 1:
        return None, "fan-out", f"its output feeds {len(consumers)} layers"
    call = consumers[0]
    consumer = graph.nodes[call.layer]
    kind = kind_of(consumer.layer)
    if kind is None:
        return (None,) + _not_a_kind(consumer, "output goes to")
    layer, label = consumer.layer, _label(consumer)
    if kind.before is None:
        return None, "unsupported", f"output goes to {label}: {kind.no_before}"
    if len(consumer.calls) != 1:
        return None, "shared", f"output goes to {label}, a shared layer"
    if call.reads != [ref]:
        return None, "inputs", f"output goes to {label} together with other tensors"
    expected = channel_axis(layer, flavour.of(layer).input_rank(layer))
    if axes != [expected]:
        return None, "axis", (f"BN axis {axes} is not {label}'s input channel axis "
                              f"{expected}")
    if kind.padded and zero_padded(layer):
        return None, "padding", (f"output goes to {label} with padding='{layer.padding}': "
                                 "its zero padding would see the BN's offset at the "
                                 "borders, so folding would change the border outputs")
    return consumer.name, "folded", "BN feeds the layer directly"
