"""fold on Keras 3 models (`import keras`, TensorFlow backend in this process; the JAX
backend runs in `keras3_checks.py`): the same plan, reasons and verification as for
tf-keras, on Keras 3's BatchNormalization (renorm included) and keras_bn.keras3's."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import keras_bn  # noqa: E402
from keras_bn import keras3 as kbn  # noqa: E402

L = keras.layers


def _statistics(model, seed=0):
    """Non-trivial BN statistics and affine parameters, as a trained model has."""
    rs = np.random.RandomState(seed)
    for w in model.weights:
        name = w.path.split("/")[-1]
        if name in ("moving_variance", "moving_stddev", "renorm_stddev"):
            w.assign(rs.uniform(0.5, 2.0, w.shape))
        elif name in ("moving_mean", "renorm_mean", "beta"):
            w.assign(rs.randn(*w.shape) * 0.3)
        elif name == "gamma":
            w.assign(rs.uniform(0.5, 1.5, w.shape))
    return model


def _digest(model):
    return [v.numpy().copy() for v in model.variables]


def test_functional_model_with_every_bn_class_ops_and_nesting():
    inputs = keras.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, use_bias=False, name="conv.a-1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)                      # Keras 3's, after conv
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = kbn.BatchRenormalization(name="brn")(x)                  # ours, after depthwise
    y = keras.ops.multiply(x, 2.0)                               # a Keras 3 op node
    y = L.BatchNormalization(renorm=True, name="renorm")(y)      # kept: after an op
    inner = keras.Sequential([keras.Input((8, 8, 8)), L.Conv2D(4, 1),
                              kbn.BatchNormalization(name="inner_bn")], name="inner")
    y = inner(y)                                                 # nested: folded inside
    t = L.BatchNormalization(name="train_bn")(y, training=True)  # kept: may train
    p = L.GlobalAveragePooling2D()(t)
    p = kbn.BatchNormalization(name="before_head")(p)           # folds into the head
    model = _statistics(keras.Model(inputs, L.Dense(3, name="head")(p)))
    before = _digest(model)
    folded, plan = keras_bn.fold(model, return_plan=True)
    by_name = {d.bn: d for d in plan.decisions}
    assert by_name["bn1"].into == "conv.a-1" and by_name["brn"].into == "dw"
    assert by_name["inner/inner_bn"].folded
    assert by_name["before_head"].position == "before"
    assert by_name["renorm"].category == "no weights" and "Multiply" in by_name["renorm"].reason
    assert by_name["train_bn"].category == "training"
    assert by_name["renorm"].kind == "keras.BatchNormalization"
    assert by_name["brn"].kind == "keras_bn.keras3.BatchRenormalization"
    assert isinstance(folded, keras.Model) and not isinstance(folded, keras.Sequential)
    # The error is float32 rounding of the reordered products (tolerance 1e-5 of scale).
    assert plan.max_error <= plan.tolerance
    for a, b in zip(before, _digest(model)):  # the original is untouched
        np.testing.assert_array_equal(a, b)
    x = np.random.RandomState(3).randn(4, 12, 12, 3).astype("float32")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_sequential_stays_sequential_and_round_trips(tmp_path):
    model = _statistics(keras.Sequential([
        keras.Input((6,)), L.Dense(5), kbn.BatchNormalization(), L.Dense(4),
        L.BatchNormalization(), L.Activation("relu"), L.Dense(2)]))
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert type(folded) is keras.Sequential and len(plan.folded) == 2 and not plan.kept
    assert not any("normalization" in type(layer).__name__.lower() for layer in folded.layers)
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    x = np.random.RandomState(0).randn(3, 6).astype("float32")
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_kept_reasons_activation_fanout_and_shared():
    inputs = keras.Input((8,))
    d = L.Dense(4, activation="relu", name="act")(inputs)
    a = L.BatchNormalization(name="after_activation")(d)
    e = L.Dense(4, name="fan")(L.Activation("tanh")(a))
    b = L.BatchNormalization(name="fan_out")(e)
    shared = L.BatchNormalization(name="shared")
    out = L.Concatenate()([shared(b), shared(e), b])
    model = _statistics(keras.Model(inputs, out))
    plan = keras_bn.fold_plan(model)
    by_name = {d.bn: d for d in plan.decisions}
    assert by_name["after_activation"].category == "activation"
    assert "relu" in by_name["after_activation"].reason
    assert by_name["fan_out"].category == "fan-out"
    assert by_name["shared"].category == "shared"
    folded = keras_bn.fold(model)  # nothing folds, and the model still verifies
    assert len(folded.layers) == len(model.layers)


def test_recalibrate_and_freeze_keras3_models():
    """The training tools take Keras 3 models too (TensorFlow backend): recalibrate gives
    each BN the exact statistics of its inputs (numpy, 1e-5 relative), freeze puts them
    in inference mode."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), kbn.BatchNormalization(),
                              L.BatchNormalization(renorm=True)])
    x = (np.random.RandomState(0).randn(64, 4) * 3 + 1).astype("float32")
    order = np.argsort(x[:, 0])  # sorted data: the exact merge must not care
    keras_bn.recalibrate(model, x[order], batch_size=16)
    h = np.asarray(model.layers[0](x), np.float64)
    np.testing.assert_allclose(model.layers[1].moving_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.layers[1].moving_variance, h.var(0, ddof=1), rtol=1e-5)
    keras_bn.freeze(model)
    assert not model.layers[1].trainable and not model.layers[2].trainable
