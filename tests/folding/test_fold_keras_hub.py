"""keras-hub models (Keras 3's own model library), built from their constructors
(`benchmarks/hub_models.py`; presets would download weights): functional subclasses
whose config holds constructor arguments, BNs inside keras-hub's custom blocks, blocks
whose constructors drop their names. In this process: the TensorFlow backend."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_bn  # noqa: E402
from benchmarks import hub_models  # noqa: E402
from benchmarks.models import realistic_bn  # noqa: E402
from helpers import assert_close  # noqa: E402
from keras_bn.verification import predict, random_inputs  # noqa: E402
from keras_bn.layers.find import batch_norm_layers  # noqa: E402

# Folding reorders float32 arithmetic in one layer: 1e-5 of the output scale.
RTOL = 1e-5
#: In float32 here; every model of hub_models is folded in float64 by tests/test_zoo.py
#: (DeepLabV3's float32 rounding is at the fixed tolerance: the noise-floor work's case).
MODELS = {name: hub_models.ALL[name] for name in
          ("ResNetV1", "ResNetV2", "MobileNetV3", "HGNetV2", "ResNetImageClassifier")}


def _all_bn(model):
    """Every BatchNormalization object the model holds, counted by Keras's own layer
    tracking (independently of keras_bn's walk)."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _names(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras_hub_model_folds(name):
    model = realistic_bn(MODELS[name]())
    before = [np.array(w) for w in model.weights]
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert type(folded).__name__ == "Functional" and folded.name == model.name
    # Every BN accounted for: the plan sees as many as Keras tracks.
    assert len(plan.decisions) == len(_all_bn(model)) > 0
    for decision in plan.kept:
        assert decision.category in ("custom layer", "no weights"), decision
        if decision.category == "custom layer":
            assert "inside custom layer" in decision.reason
    folded_names = {d.path[0] for d in plan.folded if len(d.path) == 1}
    # The same names (a rebuilt graph may list its layers in another topological order).
    assert sorted(_names(folded)) == sorted(n for n in _names(model) if n not in folded_names)
    x = random_inputs(model, batch=2, seed=1)
    for got, want in zip(predict(folded, x), predict(model, x)):  # HGNetV2: a dict
        assert_close(got, want, RTOL)
    for a, w in zip(before, model.weights):  # the original is untouched
        np.testing.assert_array_equal(a, np.array(w))


def test_what_each_family_folds():
    """ResNet's BNs all follow a conv: all fold; MobileNetV3 and HGNetV2 hold theirs in
    custom blocks (kept, with the reason)."""
    counts = {}
    for name in ("ResNetV1", "MobileNetV3", "HGNetV2"):
        plan = keras_bn.fold_plan(MODELS[name]())
        counts[name] = (len(plan.folded), len(plan.kept))
    assert counts["ResNetV1"] == (10, 0)
    assert counts["MobileNetV3"][0] >= 1 and counts["MobileNetV3"][1] >= 10
    assert counts["HGNetV2"] == (0, 13)


def test_tools_reach_the_bns_in_keras_hub_blocks():
    model = MODELS["HGNetV2"]()
    assert len(list(batch_norm_layers(model))) == len(_all_bn(model)) == 13
    assert len(keras_bn.summary(model, print_fn=lambda *_: None)) == 13
    assert len(keras_bn.freeze(model)) == 13
    assert not any(bn.trainable for bn in _all_bn(model))
    assert len(keras_bn.unfreeze(model)) == 13
