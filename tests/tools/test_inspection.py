"""summary: the BN table a user reads before folding, in either flavour."""

import keras_bn
from helpers import randomize_bn


def test_summary_table_and_data(flavour):
    keras, layers = flavour
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    x = layers.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="conv")(inputs))
    x = L.BatchNormalization(name="bn2", momentum=0.9, epsilon=1e-5)(L.ReLU()(x))
    model = randomize_bn(keras.Model(inputs, x))
    model.get_layer("bn1").gamma.assign([0.0, 1.0, -2.0, 1e-5])
    model.get_layer("bn2").moving_variance.assign([0.0, 1.0, 1.0, 1e-8])
    printed = []
    rows = keras_bn.summary(model, print_fn=printed.append)
    assert [r["name"] for r in rows] == ["bn1", "bn2"]
    assert rows[0]["kind"] == f"{layers.__name__}.BatchNormalization"
    assert rows[0]["channels"] == 4
    assert rows[0]["dead_channels"] == 2 and rows[0]["gamma_range"] == (-2.0, 1.0)
    assert rows[1]["zero_variance_channels"] == 2 and rows[1]["epsilon"] == 1e-5
    assert rows[0]["foldable"] == "conv (after)"
    assert rows[1]["foldable"].startswith("no: input comes from ReLU")
    assert "bn1" in printed[0] and "conv (after)" in printed[0]


def test_fold_and_summary_say_why_group_and_layer_norms_stay(flavour):
    """GroupNormalization and LayerNormalization (here one inside a nested model) are not
    passed over: the plan, fold's table and summary name them in one line with the
    reason; a model without them gets no such line."""
    k, _ = flavour
    inner = k.Sequential([k.Input((4,)), k.layers.Dense(4),
                          k.layers.LayerNormalization(name="ln")], name="head")
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, name="conv")(inputs)
    x = k.layers.GroupNormalization(groups=2, name="gn")(x)
    x = k.layers.BatchNormalization(name="bn")(k.layers.Conv2D(4, 1, name="pw")(x))
    x = inner(k.layers.GlobalAveragePooling2D()(x))
    model = k.Model(inputs, x)
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert plan.others is not None and plan.others.count("\n") == 0
    for part in ("'gn' (GroupNormalization)", "'head/ln' (LayerNormalization)",
                 "cannot fold"):
        assert part in plan.others and part in str(plan).splitlines()[-1], part
    printed = []
    keras_bn.summary(model, print_fn=printed.append)
    assert plan.others in printed
    assert [d.bn for d in plan.folded] == ["bn"]
    plain = k.Sequential([k.Input((4,)), k.layers.Dense(4), k.layers.BatchNormalization()])
    assert keras_bn.fold_plan(plain).others is None
