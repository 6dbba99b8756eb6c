"""`keras_bn.summary`: what every BN layer of a model holds, as a table and as data."""

from collections.abc import Callable

import numpy as np

from keras_bn import flavour
from keras_bn.flavour import Model
from keras_bn.folding.plan import plan_model
from keras_bn.layers.find import batch_norm_layers, bn_axes, per_sample_note, revived_layers
from keras_bn.tools.table import aligned

#: |gamma| below this (relative to the layer's largest |gamma|) counts as a dead channel.
DEAD_GAMMA = 1e-3
#: Moving variance below this counts as a constant channel (it divides by ~sqrt(epsilon)).
ZERO_VARIANCE = 1e-6

COLUMNS = [("name", "BN layer"), ("kind", "kind"), ("channels", "ch"),
           ("momentum", "momentum"), ("epsilon", "epsilon"), ("mean_range", "moving mean"),
           ("variance_range", "moving variance"), ("gamma_range", "gamma"),
           ("dead_channels", "dead"), ("zero_variance_channels", "var~0"),
           ("foldable", "foldable into")]


def _range(values):
    return None if values is None else (float(np.min(values)), float(np.max(values)))


def summary(model: Model, print_fn: Callable[[str], object] | None = print) -> list:
    """Prints a table of every BatchNormalization layer of `model` and returns it as data.

    One row per BN layer (tf-keras's, keras_bn's BN and BRN; nested models included, named
    `outer/inner`): channels, momentum, epsilon, the range of the moving mean and
    variance and of gamma, the number of dead channels (|gamma| below 1e-3 of the layer's
    largest), of channels with moving variance below 1e-6, and what `keras_bn.fold` would
    fold the layer into (or why not). A line after the table names the per-sample
    normalization layers (GroupNormalization, LayerNormalization, ...) and why they stay.

    Args:
      model: A built tf-keras or Keras 3 model (any kind; a subclassed model's BNs are
        listed, with no fold plan).
      print_fn: Called with the table text; None prints nothing.

    Returns:
      A list of dicts, one per BN layer, with the keys `name`, `kind`, `channels`,
      `momentum`, `epsilon`, `mean_range`, `variance_range`, `gamma_range` ((min, max) or
      None), `dead_channels`, `zero_variance_channels`, `foldable`.
    """
    if flavour.of(model).is_graph_model(model):
        decisions = {d.bn: d for d in plan_model(model).decisions}
        why_no_plan = None
    else:  # no layer graph to fold
        decisions = {}
        why_no_plan = f"Model '{model.name}' is a subclassed model ({type(model).__name__})"
    rows = []
    for name, layer in batch_norm_layers(model):
        mean = np.reshape(layer.moving_mean.numpy(), -1)
        variance = np.reshape(layer.moving_variance.numpy(), -1)
        gamma = None if layer.gamma is None else np.reshape(layer.gamma.numpy(), -1)
        largest = 0.0 if gamma is None else float(np.max(np.abs(gamma)))
        decision = decisions.get(name)
        if decision is None:
            foldable = f"no: {why_no_plan or 'not in the model graph'}"
        elif decision.folded:
            foldable = f"{decision.into} ({decision.position})"
        else:
            foldable = f"no: {decision.reason}"
        rows.append({
            "name": name,
            "kind": decision.kind if decision else type(layer).__name__,
            "channels": int(mean.size),
            "axis": bn_axes(layer),
            "momentum": float(layer.momentum),
            "epsilon": float(layer.epsilon),
            "mean_range": _range(mean),
            "variance_range": _range(variance),
            "gamma_range": _range(gamma),
            "dead_channels": 0 if gamma is None else int(
                np.sum(np.abs(gamma) <= DEAD_GAMMA * largest)),
            "zero_variance_channels": int(np.sum(variance < ZERO_VARIANCE)),
            "foldable": foldable,
        })
    if print_fn is not None:
        print_fn(format_table(rows, model.name))
        others = per_sample_note(model)
        if others:
            print_fn(others)
        revived = revived_layers(model)
        if revived:
            print_fn("Revived from a SavedModel without their classes (their saved graphs "
                     "run; BNs inside them stay): "
                     + ", ".join(f"{name} ({cls})" for name, cls in revived))
    return rows


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"[{value[0]:.3g}, {value[1]:.3g}]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(rows, title="model"):
    """The rows of `summary` as aligned text."""
    table = [[header for _, header in COLUMNS]]
    table += [[_cell(row[key]) for key, _ in COLUMNS] for row in rows]
    return f"BatchNormalization layers of '{title}': {len(rows)}\n" + aligned(table, rule=True)
