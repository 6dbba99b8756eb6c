"""Functional subclasses (keras-hub's Backbone and Task are ones) and BNs inside custom
layers, in either flavour: the graph is read from the live model, rebuilt as a plain
functional model with the same names, weights matched by graph position."""

import numpy as np
import pytest

import keras_bn
from custom_models import classes
from helpers import assert_close, trained_statistics

# Folding reorders float32 arithmetic in one layer: 1e-5 of the output scale.
RTOL = 1e-5


def _block(model):
    """The Block layer (its name is whatever Keras gave it: its constructor drops it)."""
    return next(layer for layer in model.layers if type(layer).__name__ == "Block")


def _names(model):
    found = []
    for layer in model.layers:
        found.append(layer.name)
        if hasattr(layer, "layers"):
            found.extend(f"{layer.name}/{name}" for name in _names(layer))
    return found


@pytest.mark.parametrize("nested", [False, True], ids=["backbone", "task"])
def test_functional_subclass_folds_to_a_plain_functional_model(flavour, nested):
    keras, _ = flavour
    _, Net, Task = classes(keras)
    model = net = Net(name="net")
    if nested:
        model = Task(net, name="task")
    model = trained_statistics(model)
    block = _block(net).name
    before = [np.array(w) for w in model.weights]
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert type(folded).__name__ == "Functional" and folded.name == model.name
    prefix = "net/" if nested else ""
    by_path = {d.bn: d for d in plan.decisions}
    assert by_path[f"{prefix}bn"].into == "conv"
    inner = by_path[f"{prefix}{block}/inner_bn"]
    assert not inner.folded and inner.category == "custom layer"
    assert f"inside custom layer '{block}'" in inner.reason
    if nested:
        assert by_path["head_bn"].position == "before" and by_path["head_bn"].into == "logits"
    # Same names (the block's constructor drops its name: given back), BN ones removed.
    gone = {f"{prefix}bn"} | ({"head_bn"} if nested else set())
    assert _names(folded) == [n for n in _names(model) if n not in gone]
    x = np.random.RandomState(1).randn(4, 8, 8, 3).astype("float32")
    assert_close(folded.predict(x, verbose=0), model.predict(x, verbose=0), RTOL)
    for a, w in zip(before, model.weights):  # the original is untouched
        np.testing.assert_array_equal(a, np.array(w))


def test_tools_find_the_bn_inside_a_custom_layer(flavour):
    keras, _ = flavour
    _, Net, _ = classes(keras)
    model = trained_statistics(Net(name="net"))
    block = _block(model)
    rows = keras_bn.summary(model, print_fn=lambda *_: None)
    assert [r["name"] for r in rows] == [f"{block.name}/inner_bn", "bn"]
    x = (np.random.RandomState(0).randn(32, 8, 8, 3) * 2 + 1).astype("float32")
    keras_bn.recalibrate(model, x, batch_size=8)
    h = np.asarray(block.conv(x), np.float64)  # what the inner BN sees
    np.testing.assert_allclose(block.bn.moving_mean, h.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(block.bn.moving_variance, h.var((0, 1, 2), ddof=1), rtol=1e-5)
    names = [f"{block.name}/inner_bn", "bn"]
    assert keras_bn.freeze(model) == names and not block.bn.trainable
    assert keras_bn.unfreeze(model) == names and block.bn.trainable
