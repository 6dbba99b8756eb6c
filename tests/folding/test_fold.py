"""keras_bn.fold on models: every layer kind, both data formats, refusals, structure."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from hypothesis import HealthCheck, given, settings, strategies as st

import keras_bn
from keras_bn.verification import predict, random_inputs
from keras_bn.layers.find import is_batch_norm
from helpers import assert_close, randomize_bn, trained_statistics

L = tf_keras.layers
# Folding reorders float32 arithmetic in one layer: 1e-5 of the output scale.
RTOL = 1e-5
BN_KINDS = [L.BatchNormalization, keras_bn.BatchNormalization, keras_bn.BatchRenormalization]

AFTER = [  # (layer factory, input shape without batch, channels_first?)
    (lambda f: L.Conv1D(4, 3, data_format=f, use_bias=False), (9, 3)),
    (lambda f: L.Conv2D(6, 3, data_format=f, groups=3), (7, 7, 3)),
    (lambda f: L.Conv3D(4, 2, data_format=f), (5, 5, 5, 2)),
    (lambda f: L.DepthwiseConv1D(3, depth_multiplier=2, data_format=f), (9, 3)),
    (lambda f: L.DepthwiseConv2D(3, depth_multiplier=2, data_format=f, use_bias=False),
     (7, 7, 3)),
    (lambda f: L.SeparableConv1D(4, 3, depth_multiplier=2, data_format=f), (9, 3)),
    (lambda f: L.SeparableConv2D(4, 3, data_format=f, use_bias=False), (7, 7, 3)),
    (lambda f: L.Conv1DTranspose(4, 3, data_format=f), (6, 3)),
    (lambda f: L.Conv2DTranspose(4, 3, strides=2, data_format=f, use_bias=False), (5, 5, 3)),
    (lambda f: L.Conv3DTranspose(3, 2, data_format=f), (4, 4, 4, 2)),
]
BEFORE = [
    (lambda f: L.Conv1D(4, 3, data_format=f), (9, 3)),
    (lambda f: L.Conv2D(5, 3, strides=2, data_format=f, use_bias=False), (9, 9, 3)),
    (lambda f: L.Conv2D(5, 1, padding="same", data_format=f), (6, 6, 3)),
    (lambda f: L.Conv3D(4, 2, data_format=f), (5, 5, 5, 2)),
    (lambda f: L.DepthwiseConv2D(3, depth_multiplier=2, data_format=f), (7, 7, 3)),
    (lambda f: L.DepthwiseConv1D(2, data_format=f, use_bias=False), (7, 3)),
    (lambda f: L.Conv2D(6, 3, groups=3, data_format=f), (7, 7, 3)),
    (lambda f: L.SeparableConv2D(4, 3, depth_multiplier=2, data_format=f), (7, 7, 3)),
    (lambda f: L.SeparableConv1D(4, 1, padding="same", data_format=f, use_bias=False),
     (9, 3)),
]


def _shape(shape, data_format):
    return shape if data_format == "channels_last" else (shape[-1],) + shape[:-1]


def _bn_axis(data_format):
    return -1 if data_format == "channels_last" else 1


def _check_folded(model, folded, expect_bn_left=0):
    left = [layer for layer in folded.layers if is_batch_norm(layer)]
    assert len(left) == expect_bn_left, [layer.name for layer in left]
    x = random_inputs(model, seed=3)
    for want, got in zip(predict(model, x), predict(folded, x)):
        assert_close(got, want, RTOL)


@pytest.mark.parametrize("bn_kind", BN_KINDS, ids=lambda c: c.__module__.split(".")[0])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("make,shape", AFTER, ids=lambda v: "" if callable(v) else str(v))
def test_layer_then_bn_folds(make, shape, data_format, bn_kind):
    inputs = tf_keras.Input(_shape(shape, data_format))
    layer = make(data_format)
    x = bn_kind(axis=_bn_axis(data_format), name="bn")(layer(inputs))
    model = randomize_bn(tf_keras.Model(inputs, L.ReLU()(x)))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert [(d.bn, d.into, d.position) for d in plan.decisions] == [
        ("bn", layer.name, "after")]
    _check_folded(model, folded)
    assert folded.get_layer(layer.name).use_bias


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("make,shape", BEFORE, ids=lambda v: "" if callable(v) else str(v))
def test_bn_then_layer_folds(make, shape, data_format):
    inputs = tf_keras.Input(_shape(shape, data_format))
    layer = make(data_format)
    x = keras_bn.BatchNormalization(axis=_bn_axis(data_format), name="bn")(inputs)
    model = randomize_bn(tf_keras.Model(inputs, layer(x)))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert [(d.bn, d.into, d.position) for d in plan.decisions] == [
        ("bn", layer.name, "before")]
    _check_folded(model, folded)


@pytest.mark.parametrize("rank", [2, 3])
def test_dense_before_and_after_on_2d_and_3d_inputs(rank):
    inputs = tf_keras.Input((5,) * (rank - 1))
    x = L.BatchNormalization(name="pre")(inputs)
    x = L.Dense(4, use_bias=False, name="d1")(x)
    x = keras_bn.BatchNormalization(name="post", scale=False)(x)
    x = L.Dense(3, name="d2")(L.ReLU()(x))
    model = randomize_bn(tf_keras.Model(inputs, x))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert {(d.bn, d.into, d.position) for d in plan.decisions} == {
        ("post", "d1", "after"), ("pre", "d1", "before")}
    _check_folded(model, folded)


def test_each_bn_uses_its_own_epsilon_and_center_scale_flags():
    inputs = tf_keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="c1")(inputs)
    x = L.BatchNormalization(epsilon=0.5, center=False, name="b1")(x)
    x = L.Conv2D(3, 3, name="c2")(L.ReLU()(x))
    x = keras_bn.BatchRenormalization(epsilon=1e-5, scale=False, name="b2")(x)
    model = randomize_bn(tf_keras.Model(inputs, x))
    _check_folded(model, keras_bn.fold(model))


def _kept_reason(model, bn_name):
    plan = keras_bn.fold_plan(model)
    decision = {d.bn: d for d in plan.decisions}[bn_name]
    assert not decision.folded
    folded = keras_bn.fold(model)  # still folds the rest, and still verifies
    assert bn_name in [layer.name for layer in folded.layers]
    return decision.reason


def test_refuses_activation_inside_the_conv(flavour):
    keras, _ = flavour
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, activation="relu", padding="same")
    model = randomize_bn(keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(
        conv(inputs))))
    assert "applies activation 'relu' before the BN" in _kept_reason(model, "bn")


def test_refuses_producer_that_feeds_another_layer(flavour):
    keras, _ = flavour
    inputs = keras.Input((6, 6, 2))
    y = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Add(name="add")([keras.layers.BatchNormalization(name="bn")(y), y])
    model = randomize_bn(keras.Model(inputs, x))
    assert "output also feeds 'add'" in _kept_reason(model, "bn")


def test_refuses_bn_on_a_non_channel_axis(flavour):
    keras, layers = flavour
    inputs = keras.Input((6, 5, 2))
    x = layers.BatchNormalization(axis=1, name="bn")(
        keras.layers.Conv2D(3, 1, name="conv")(inputs))
    model = randomize_bn(keras.Model(inputs, keras.layers.Flatten()(x)))
    assert "BN axis [1] is not Conv2D 'conv''s channel axis 3" in _kept_reason(model, "bn")


def test_refuses_bn_called_in_training_mode(flavour):
    keras, _ = flavour
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3)(inputs),
                                                   training=True)
    model = randomize_bn(keras.Model(inputs, x))
    decision = keras_bn.fold_plan(model).decisions[0]
    assert "training=True" in decision.reason and decision.category == "training"
    assert not decision.folded


def test_refuses_shared_bn_and_shared_producer(flavour):
    keras, _ = flavour
    L = keras.layers
    inputs = keras.Input((4,))
    bn = L.BatchNormalization(name="bn")
    dense = L.Dense(4, name="shared_dense")
    a = bn(L.Dense(4)(inputs))
    b = bn(L.Dense(4)(inputs))
    c = L.BatchNormalization(name="bn2")(dense(L.Add()([a, b])))
    d = dense(c)
    model = randomize_bn(keras.Model(inputs, [c, d]))
    plan = {d.bn: d for d in keras_bn.fold_plan(model).decisions}
    assert plan["bn"].reason.startswith("shared layer: called 2 times")
    assert plan["bn"].category == "shared"
    assert "a shared layer" in plan["bn2"].reason
    _check_folded(model, keras_bn.fold(model), expect_bn_left=2)


def test_kept_after_an_activation_layer_and_at_a_fan_out(flavour):
    keras, _ = flavour
    L = keras.layers
    inputs = keras.Input((8,))
    a = L.BatchNormalization(name="after_activation")(L.Dense(4, activation="relu")(inputs))
    e = L.Dense(4, name="fan")(L.Activation("tanh")(a))
    b = L.BatchNormalization(name="fan_out")(e)
    model = randomize_bn(keras.Model(inputs, L.Concatenate()([b, e])))
    by_name = {d.bn: d for d in keras_bn.fold_plan(model).decisions}
    assert by_name["after_activation"].category == "activation"
    assert "relu" in by_name["after_activation"].reason
    assert by_name["fan_out"].category == "fan-out"
    assert len(keras_bn.fold(model).layers) == len(model.layers)  # and still verifies


def test_refuses_bn_before_zero_padded_conv_and_folds_before_grouped_conv():
    inputs = tf_keras.Input((6, 6, 4))
    x = L.Conv2D(4, 3, padding="same", name="same")(L.BatchNormalization(name="b1")(inputs))
    x = L.Conv2D(6, 3, groups=2, name="grouped")(L.BatchNormalization(name="b2")(L.ReLU()(x)))
    model = randomize_bn(tf_keras.Model(inputs, x))
    plan = {d.bn: d for d in keras_bn.fold_plan(model).decisions}
    assert "padding='same'" in plan["b1"].reason and "border" in plan["b1"].reason
    assert (plan["b2"].into, plan["b2"].position) == ("grouped", "before")
    _check_folded(model, keras_bn.fold(model), expect_bn_left=1)


def test_plan_table_lists_every_bn():
    inputs = tf_keras.Input((4,))
    x = L.BatchNormalization(name="kept_bn")(L.ReLU()(L.Dense(3, name="d")(inputs)))
    x = L.Dense(2, name="e")(L.ReLU()(x))
    model = randomize_bn(tf_keras.Model(inputs, L.BatchNormalization(name="bn_out")(x)))
    table = str(keras_bn.fold_plan(model))
    assert "kept_bn" in table and "kept" in table and "folded after -> e" in table
    assert "1 folded, 1 kept" in table
    assert keras_bn.fold_plan(model).as_dicts()[1]["into"] == "e"
    assert "input comes from ReLU" in table and "output goes to ReLU" in table


def test_sequential_stays_sequential_keeps_input_shape_and_round_trips(flavour, tmp_path):
    keras, layers = flavour
    L = keras.layers
    model = randomize_bn(keras.Sequential([
        keras.Input((5,)), L.BatchNormalization(), L.Dense(4, name="d"),
        layers.BatchNormalization(), L.ReLU(name="r"), L.Dense(2, name="out")]))
    folded = keras_bn.fold(model)
    assert type(folded) is keras.Sequential
    assert [layer.name for layer in folded.layers] == ["d", "r", "out"]
    _check_folded(model, folded)
    folded.save(tmp_path / "folded.keras")
    x = np.random.RandomState(0).randn(3, 5).astype("float32")
    assert_close(keras.models.load_model(tmp_path / "folded.keras").predict(x, verbose=0),
                 model.predict(x, verbose=0), RTOL)


def test_every_bn_class_op_nodes_nesting_and_training_calls(flavour):
    """One functional model with each flavour's BN classes (renorm included), an op node
    (a TensorFlow op on tf-keras, `keras.ops` on Keras 3), a nested model, a BN called with
    training=True and one before the head: each folded or kept for its own reason."""
    keras, layers = flavour
    L = keras.layers
    multiply = keras.ops.multiply if hasattr(keras, "ops") else tf.multiply
    inputs = keras.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, use_bias=False, name="conv.a-1")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn1")(x))            # Keras's, after conv
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = layers.BatchRenormalization(name="brn")(x)               # ours, after depthwise
    y = multiply(x, 2.0)                                         # an op node
    y = L.BatchNormalization(renorm=True, name="renorm")(y)      # kept: after an op
    inner = keras.Sequential([keras.Input((8, 8, 8)), L.Conv2D(4, 1),
                              layers.BatchNormalization(name="inner_bn")], name="inner")
    y = inner(y)                                                 # nested: folded inside
    t = L.BatchNormalization(name="train_bn")(y, training=True)  # kept: may train
    p = layers.BatchNormalization(name="before_head")(L.GlobalAveragePooling2D()(t))
    model = trained_statistics(keras.Model(inputs, L.Dense(3, name="head")(p)))
    before = [v.numpy().copy() for v in model.weights]
    folded, plan = keras_bn.fold(model, return_plan=True)
    by_name = {d.bn: d for d in plan.decisions}
    assert by_name["bn1"].into == "conv.a-1" and by_name["brn"].into == "dw"
    assert by_name["inner/inner_bn"].folded
    assert by_name["before_head"].position == "before"
    assert by_name["renorm"].category == "no weights"
    assert by_name["train_bn"].category == "training"
    prefix = keras.__name__.split(".")[0]
    assert by_name["renorm"].kind == f"{prefix}.BatchNormalization"
    assert by_name["brn"].kind == f"{layers.__name__}.BatchRenormalization"
    assert type(folded) is keras.Model or type(folded).__name__ == "Functional"
    assert plan.max_error <= plan.tolerance
    for a, b in zip(before, model.weights):  # the original is untouched
        np.testing.assert_array_equal(a, b.numpy())
    _check_folded(model, folded, expect_bn_left=2)


def test_functional_keeps_names_inputs_outputs_and_folds_nested_models():
    inner_in = tf_keras.Input((6, 6, 3))
    inner = tf_keras.Model(inner_in, L.ReLU()(keras_bn.BatchNormalization(name="inner_bn")(
        L.Conv2D(4, 3, name="inner_conv")(inner_in))), name="block")
    inputs = tf_keras.Input((6, 6, 3), name="image")
    x = inner(inputs)
    out = L.Dense(2, name="head")(L.BatchNormalization(name="outer_bn")(L.Flatten()(x)))
    model = randomize_bn(tf_keras.Model(inputs, out, name="net"))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert [d.bn for d in plan.folded] == ["block/inner_bn", "outer_bn"]
    assert folded.name == "net" and folded.input_names == ["image"]
    assert folded.output_names == ["head"]
    _check_folded(model, folded)
    assert not any(is_batch_norm(layer) for layer in folded.get_layer("block").layers)


def test_input_model_and_its_file_are_untouched(tmp_path):
    inputs = tf_keras.Input((5, 5, 2))
    x = keras_bn.BatchNormalization()(L.Conv2D(3, 3, use_bias=False)(inputs))
    randomize_bn(tf_keras.Model(inputs, x)).save(tmp_path / "m.keras")
    digest = hashlib.sha256((tmp_path / "m.keras").read_bytes()).hexdigest()
    model = tf_keras.models.load_model(tmp_path / "m.keras")
    before = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    folded = keras_bn.fold(model)
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.tobytes() == b.tobytes()
    assert [layer.name for layer in model.layers] == names
    assert not model.layers[1].use_bias and folded.layers[1].use_bias
    assert hashlib.sha256((tmp_path / "m.keras").read_bytes()).hexdigest() == digest
    # The folded model shares no variables with the original.
    assert not {id(v) for v in folded.weights} & {id(v) for v in model.weights}


def test_subclassed_model_is_a_clear_error(flavour):
    keras, _ = flavour

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(keras_bn.InputError, match="subclassed model.*Sequential or functional"):
        keras_bn.fold(net)


def test_verification_failure_raises():
    inputs = tf_keras.Input((4,))
    model = randomize_bn(tf_keras.Model(inputs, L.BatchNormalization()(L.Dense(3)(inputs))))
    bn = model.layers[-1]
    bn.moving_variance.assign([1.0, np.nan, 1.0])  # corrupted statistics
    with pytest.raises(keras_bn.VerificationError, match="NaN/Inf"):
        keras_bn.fold(model)


# -- property-based: random stacks fold with matching outputs ---------------------------

BLOCKS = ["conv_bn", "conv_bias_bn_relu", "bn_conv_valid", "depthwise_bn", "relu",
          "conv_relu_bn"]


def _stack(blocks, bn_kinds, functional):
    inputs = tf_keras.Input((12, 12, 3))
    x, skip = inputs, None
    for i, (block, bn_kind) in enumerate(zip(blocks, bn_kinds)):
        bn = BN_KINDS[bn_kind]()
        if block == "conv_bn":
            x = bn(L.Conv2D(4, 3, padding="same", use_bias=False)(x))
        elif block == "conv_bias_bn_relu":
            x = L.ReLU()(bn(L.Conv2D(4, 1)(x)))
        elif block == "bn_conv_valid":
            x = L.Conv2D(4, 3)(bn(x)) if x.shape[1] > 3 else bn(x)
        elif block == "depthwise_bn":
            x = bn(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x))
        elif block == "relu":
            x = L.ReLU()(x)
        else:
            x = bn(L.Conv2D(4, 3, padding="same", activation="relu")(x))
        if functional and i == 1:
            skip = x
    if functional and skip is not None and skip.shape == x.shape:
        x = L.Add()([x, skip])
    x = L.Dense(3)(L.BatchNormalization()(L.GlobalAveragePooling2D()(x)))
    return tf_keras.Model(inputs, x)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
       bn_kinds=st.lists(st.integers(0, 2), min_size=5, max_size=5),
       functional=st.booleans(), seed=st.integers(0, 1000))
def test_random_stacks_fold_with_matching_outputs(blocks, bn_kinds, functional, seed):
    tf_keras.backend.clear_session()
    model = randomize_bn(_stack(blocks, bn_kinds, functional), seed)
    if not functional:
        model = tf_keras.Sequential(model.layers[1:])
        model.build((None, 12, 12, 3))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert len(plan.decisions) == sum(is_batch_norm(layer) for layer in model.layers)
    _check_folded(model, folded, expect_bn_left=len(plan.kept))


# -- real architectures ------------------------------------------------------------------

@pytest.mark.heavy
@pytest.mark.parametrize("app", ["ResNet50", "MobileNetV2"])
def test_real_architectures_fold_completely(app):
    model = randomize_bn(getattr(tf_keras.applications, app)(weights=None,
                                                             classifier_activation=None))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert len(plan.kept) == 0 and len(plan.folded) == {"ResNet50": 53, "MobileNetV2": 52}[app]
    assert len(folded.layers) == len(model.layers) - len(plan.folded)
    _check_folded(model, folded)
