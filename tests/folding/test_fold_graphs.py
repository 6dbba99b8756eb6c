"""Fold on the graphs users really build: TensorFlow ops on Keras tensors, odd names,
shared and nested layers, BN chains, Lambda layers, mixed precision, unsupported kinds.

Parity: 1e-5 of the output scale (float32 rounding of the reordered arithmetic of one
layer per folded BN; measured errors are below 2e-6).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn.folding import graph as graph_module
from keras_bn.verification import predict, random_inputs
from keras_bn.layers.find import batch_norm_layers
from helpers import assert_close, randomize_bn

L = tf_keras.layers
RTOL = 1e-5


def _fold_and_check(model, left=0):
    folded, plan = keras_bn.fold(model, return_plan=True)
    remaining = sorted(name for name, _ in batch_norm_layers(folded))
    assert remaining == sorted(d.bn for d in plan.kept)
    assert len(remaining) == left, plan
    x = random_inputs(model, seed=5)
    for want, got in zip(predict(model, x), predict(folded, x)):
        assert_close(got, want, RTOL)
    return folded, {d.bn: d for d in plan.decisions}


def _variables(model):
    return [v.numpy().copy() for v in model.variables]


def test_tensorflow_ops_on_keras_tensors():
    inputs = tf_keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="c1")(inputs))
    x = tf.nn.relu6(x) * 0.5                              # constant in kwargs
    y = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1, name="c2")(x))
    z = x + y                                             # a tensor in kwargs
    z = tf.concat([z, x[:, :, :, :2]], axis=-1)           # list input, slicing
    z = L.Conv2D(5, 1, name="c3")(L.BatchNormalization(name="bn3")(z))
    z = 1.0 - z                                           # constant first argument
    model = randomize_bn(tf_keras.Model(inputs, z))
    _, plan = _fold_and_check(model)
    assert (plan["bn1"].into, plan["bn2"].into, plan["bn3"].into) == ("c1", "c2", "c3")
    assert plan["bn3"].position == "before"


def test_graph_reader_sees_tensors_in_keyword_arguments():
    inputs = tf_keras.Input((4,))
    a = L.Dense(4, name="a")(inputs)
    b = L.BatchNormalization(name="bn")(L.Dense(4, name="b")(inputs))
    model = tf_keras.Model(inputs, a + b)
    graph = graph_module.Graph(model)
    readers = [c.layer for c in graph.consumers[graph_module.Ref("bn")]]
    assert len(readers) == 1 and readers[0] != "bn"
    # `a` feeds the op too (in its first argument): the op reads both.
    op_call = graph.consumers[graph_module.Ref("a")][0]
    assert set(op_call.reads) == {graph_module.Ref("a"), graph_module.Ref("bn")}


def test_bn_before_a_transposed_conv_is_kept_not_folded_with_conv_math():
    for channels in (3, 5):  # equal channels once gave a silently wrong fold
        inputs = tf_keras.Input((5, 5, 3))
        x = L.BatchNormalization(name="bn")(inputs)
        x = L.Conv2DTranspose(channels, 3, strides=2, name="up")(x)
        model = randomize_bn(tf_keras.Model(inputs, x))
        _, plan = _fold_and_check(model, left=1)
        assert "transposed convolution" in plan["bn"].reason
        tf_keras.backend.clear_session()


def test_subclass_of_a_supported_layer_does_not_take_its_parents_path():
    class MyConv(L.Conv2D):
        def call(self, x):
            return super().call(x) * 2.0

    inputs = tf_keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(MyConv(4, 3, name="mine")(inputs))
    model = randomize_bn(tf_keras.Model(inputs, x))
    plan = {d.bn: d for d in keras_bn.fold_plan(model).decisions}
    assert not plan["bn"].folded and "does not support" in plan["bn"].reason


@pytest.mark.parametrize("training,folds", [(1, False), (True, False),
                                            (0, True), (False, True), (None, True)])
def test_training_flag_of_the_call(training, folds):
    inputs = tf_keras.Input((4,))
    x = L.BatchNormalization(name="bn")(L.Dense(3, name="d")(inputs), training=training)
    model = randomize_bn(tf_keras.Model(inputs, L.ReLU()(x)))
    decision = keras_bn.fold_plan(model).decisions[0]
    assert decision.folded == folds, decision
    if not folds:
        assert "training=" in decision.reason
        before = _variables(model)
        folded = keras_bn.fold(model)
        for a, b in zip(before, _variables(model)):  # the verification run restored it
            np.testing.assert_array_equal(a, b)
        assert len(list(batch_norm_layers(folded))) == 1


def test_frozen_bn_called_with_training_true_folds():
    inputs = tf_keras.Input((4,))
    bn = keras_bn.BatchNormalization(name="bn")
    x = bn(L.Dense(3, name="d")(inputs), training=True)
    model = randomize_bn(tf_keras.Model(inputs, x))
    bn.trainable = False  # inference mode whatever `training` says
    _fold_and_check(model)


def test_verification_never_changes_the_input_model():
    inputs = tf_keras.Input((6, 6, 2))
    x = L.BatchNormalization(name="train_bn")(L.Conv2D(3, 3)(inputs), training=True)
    x = keras_bn.BatchRenormalization(name="brn")(L.Conv2D(3, 3)(L.ReLU()(x)),
                                                  training=True)
    model = randomize_bn(tf_keras.Model(inputs, x))
    before = _variables(model)
    keras_bn.fold(model)
    after = _variables(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_names_with_slashes_fold_and_the_plan_says_so():
    inputs = tf_keras.Input((7, 7, 3))
    x = L.Conv2D(4, 3, name="conv1/conv")(inputs)
    x = L.BatchNormalization(name="conv1/bn")(x)
    x = L.Activation("relu", name="conv1/relu")(x)
    inner_in = tf_keras.Input((5, 5, 4))
    inner = tf_keras.Model(inner_in, L.BatchNormalization(name="blk/bn")(
        L.Conv2D(2, 1, name="blk/conv")(inner_in)), name="stage/1")
    model = randomize_bn(tf_keras.Model(inputs, inner(x)))
    folded, plan = _fold_and_check(model)
    assert set(plan) == {"conv1/bn", "stage/1/blk/bn"}
    assert all(d.folded for d in plan.values())


def test_bn_chains_compose_into_one():
    inputs = tf_keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="c1")(inputs)
    x = L.BatchNormalization(name="a")(x)
    x = keras_bn.BatchRenormalization(name="b")(x)
    x = keras_bn.BatchNormalization(name="c")(x)
    x = L.ReLU()(x)
    x = L.BatchNormalization(name="d")(x)
    x = L.BatchNormalization(name="e", epsilon=0.1)(x)
    x = L.Conv2D(2, 1, name="c2")(x)
    model = randomize_bn(tf_keras.Model(inputs, x))
    _, plan = _fold_and_check(model)
    assert {n: (plan[n].into, plan[n].position) for n in "abcde"} == {
        "a": ("c1", "after"), "b": ("c1", "after"), "c": ("c1", "after"),
        "d": ("c2", "before"), "e": ("c2", "before")}
    assert plan["a"].chain == ("a", "b", "c")


def test_a_chain_with_a_fan_out_in_the_middle_is_not_merged():
    inputs = tf_keras.Input((4,))
    x = L.BatchNormalization(name="a")(L.Dense(3, name="d")(inputs))
    y = L.BatchNormalization(name="b")(x)
    model = randomize_bn(tf_keras.Model(inputs, [x, L.Dense(2, name="e")(y)]))
    _, plan = _fold_and_check(model)
    assert (plan["a"].into, plan["a"].position, plan["a"].chain) == ("d", "after", ("a",))
    assert (plan["b"].into, plan["b"].position, plan["b"].chain) == ("e", "before", ("b",))


def test_layer_and_nested_model_called_twice():
    inner_in = tf_keras.Input((4,))
    inner = tf_keras.Model(inner_in, L.BatchNormalization(name="inner_bn")(
        L.Dense(4, name="inner_d")(inner_in)), name="inner")
    shared = L.Dense(4, name="shared")
    inputs = tf_keras.Input((4,))
    a, b = inner(inputs), inner(shared(inputs))
    c = L.BatchNormalization(name="after_shared")(shared(a))
    model = randomize_bn(tf_keras.Model(inputs, L.Concatenate()([b, c])))
    _, plan = _fold_and_check(model, left=1)
    assert plan["inner/inner_bn"].folded
    assert "shared layer" in plan["after_shared"].reason


def test_nested_model_with_dict_inputs():
    ins = {"a": tf_keras.Input((4,), name="a"), "b": tf_keras.Input((4,), name="b")}
    merged = L.Concatenate()([ins["a"], ins["b"]])
    inner = tf_keras.Model(ins, L.BatchNormalization(name="bn")(L.Dense(3, name="d")(merged)))
    outer_a, outer_b = tf_keras.Input((4,), name="oa"), tf_keras.Input((4,), name="ob")
    model = randomize_bn(tf_keras.Model([outer_a, outer_b], inner({"a": outer_a, "b": outer_b})))
    _fold_and_check(model)


def test_unsupported_layers_with_weights_say_not_supported():
    inputs = tf_keras.Input((5, 4))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 3), name="einsum")(inputs)
    x = L.BatchNormalization(name="after_einsum")(x)
    x = L.TimeDistributed(L.Dense(3), name="td")(x)
    x = L.BatchNormalization(name="after_td")(x)
    model = randomize_bn(tf_keras.Model(inputs, L.ReLU()(x)))
    plan = {d.bn: d for d in keras_bn.fold_plan(model).decisions}
    for name, layer in (("after_einsum", "EinsumDense"), ("after_td", "TimeDistributed")):
        assert plan[name].category == "unsupported", plan[name]
        after_part = plan[name].reason.split(";")[0]
        assert f"{layer} " in after_part and "does not support" in after_part
        assert "has no weights" not in after_part


def test_model_with_a_lambda_loaded_unsafely_folds(tmp_path):
    inputs = tf_keras.Input((4,))
    x = L.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(inputs)
    x = L.BatchNormalization(name="bn")(L.Dense(3, name="d")(x))
    randomize_bn(tf_keras.Model(inputs, x)).save(tmp_path / "m.keras")
    model = tf_keras.models.load_model(tmp_path / "m.keras", safe_mode=False)
    _fold_and_check(model)
    # The lift is for the rebuild only: loading the file safely still refuses.
    with pytest.raises(ValueError, match="safe_mode"):
        tf_keras.models.load_model(tmp_path / "m.keras")


@pytest.fixture
def mixed_float16():
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_model_folds_and_exports_with_its_own_tolerance(mixed_float16,
                                                                      tmp_path):
    inputs = tf_keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.Conv2D(8, 3)(inputs))
    x = keras_bn.BatchNormalization()(L.Conv2D(8, 3)(L.ReLU()(x)))
    x = L.Dense(4, dtype="float32")(L.GlobalAveragePooling2D()(L.ReLU()(x)))
    model = randomize_bn(tf_keras.Model(inputs, x))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert len(plan.folded) == 2 and plan.max_error <= plan.tolerance
    scale = max(float(np.max(np.abs(o))) for o in predict(model, random_inputs(model)))
    # 10 float16 ulps of the output scale (2^-10 each), plus atol (plus 8x the model's
    # own rounding noise, had the error exceeded that).
    noise = plan.noise or 0.0  # measured only where the error exceeds the floor
    assert plan.tolerance == pytest.approx(10 * 2.0 ** -10 * scale + 1e-6 + 8 * noise,
                                           rel=1e-6)
    from keras_bn import export
    result = export.to_onnx(model, str(tmp_path / "m.onnx"))
    assert result.max_error is not None and (tmp_path / "m.onnx").exists()
