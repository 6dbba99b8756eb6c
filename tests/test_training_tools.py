"""recalibrate, freeze/unfreeze and summary on real models and real data (digits)."""

import numpy as np
import pytest
import tf_keras

import keras_bn
from conftest import randomize_bn

L = tf_keras.layers


def _mlp(momentum=0.99, bn=keras_bn.BatchNormalization):
    tf_keras.utils.set_random_seed(0)
    return tf_keras.Sequential([
        tf_keras.Input((64,)), L.Dense(64, use_bias=False), bn(momentum=momentum), L.ReLU(),
        L.Dense(32, use_bias=False), bn(momentum=momentum), L.ReLU(), L.Dense(10)])


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _fit(model, x, y, batch_size, epochs=1):
    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)


def test_recalibration_recovers_a_model_trained_with_small_batches(digits):
    """Small batches, one short epoch, momentum 0.999: the moving averages still hold
    mostly their initial values and early-training statistics when training stops."""
    x_train, y_train, x_test, y_test = digits
    model = _mlp(momentum=0.999)
    _fit(model, x_train, y_train, batch_size=8)
    before = _accuracy(model, x_test, y_test)
    kernels = [w.numpy().copy() for w in model.trainable_weights]
    summary = keras_bn.recalibrate(model, x_train, batch_size=64, verbose=0)
    after = _accuracy(model, x_test, y_test)
    print(f"small batches: accuracy {before:.4f} -> {after:.4f} after recalibration")
    assert after > before + 0.05 and after > 0.9  # measured: 0.816 -> 0.936
    assert [row["name"] for row in summary] == [layer.name for layer in model.layers
                                                if isinstance(layer, keras_bn.BatchNormalization)]
    assert all(row["mean_shift"] > 0 for row in summary)
    for old, new in zip(kernels, model.trainable_weights):  # nothing else changed
        np.testing.assert_array_equal(old, new.numpy())


def test_recalibration_adapts_to_shifted_inputs(digits):
    x_train, y_train, x_test, y_test = digits
    model = _mlp(momentum=0.9, bn=L.BatchNormalization)  # tf-keras's own BN works too
    _fit(model, x_train, y_train, batch_size=32, epochs=5)
    shift = lambda x: x * 3.0 + 1.0  # e.g. another sensor's gain and offset
    clean, shifted = _accuracy(model, x_test, y_test), _accuracy(model, shift(x_test), y_test)
    keras_bn.recalibrate(model, shift(x_train), verbose=0)  # unlabeled new data
    adapted = _accuracy(model, shift(x_test), y_test)
    print(f"shift: clean {clean:.4f}, shifted {shifted:.4f}, recalibrated {adapted:.4f}")
    assert shifted < clean - 0.2 and adapted > clean - 0.03


def test_recalibrate_without_bn_or_data_is_a_clear_error():
    with pytest.raises(ValueError, match="no BatchNormalization"):
        keras_bn.recalibrate(tf_keras.Sequential([tf_keras.Input((2,)), L.Dense(1)]),
                             np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no batch"):
        keras_bn.recalibrate(_mlp(), [], verbose=0)


@pytest.mark.parametrize("bn", [keras_bn.BatchNormalization, L.BatchNormalization])
def test_fitting_a_frozen_model_keeps_the_statistics(digits, bn):
    x_train, y_train, _, _ = digits
    model = _mlp(bn=bn)
    _fit(model, x_train[:256], y_train[:256], batch_size=32)
    frozen = keras_bn.freeze(model)
    assert len(frozen) == 2
    stats = [w.numpy().copy() for w in model.non_trainable_weights]
    bn_params = [layer.gamma.numpy().copy() for layer in model.layers if hasattr(layer, "gamma")]
    dense = model.layers[0].kernel.numpy().copy()
    _fit(model, x_train * 2.0, y_train, batch_size=32)  # another distribution
    for old, new in zip(stats, model.non_trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    for old, layer in zip(bn_params, [l for l in model.layers if hasattr(l, "gamma")]):
        np.testing.assert_array_equal(old, layer.gamma.numpy())  # not trained either
    assert not np.array_equal(dense, model.layers[0].kernel.numpy())  # the rest learns
    assert keras_bn.unfreeze(model) == frozen
    _fit(model, x_train * 2.0, y_train, batch_size=32)
    assert not np.array_equal(stats[0], model.non_trainable_weights[0].numpy())


def test_freeze_keeping_gamma_beta_trainable(digits):
    x_train, y_train, _, _ = digits
    model = _mlp()
    keras_bn.freeze(model, train_gamma_beta=True)
    bn = model.layers[1]
    mean, gamma = bn.moving_mean.numpy().copy(), bn.gamma.numpy().copy()
    _fit(model, x_train[:256], y_train[:256], batch_size=32)
    np.testing.assert_array_equal(mean, bn.moving_mean.numpy())
    assert not np.array_equal(gamma, bn.gamma.numpy())
    with pytest.raises(ValueError, match=r"tf-keras BatchNormalization.*'batch_normalization"):
        keras_bn.freeze(_mlp(bn=L.BatchNormalization), train_gamma_beta=True)


def test_freeze_keeping_gamma_beta_trainable_on_keras3(digits):
    """Keras 3 models take the same freeze: keras_bn.keras3 layers stay trainable in
    inference mode, unfreeze puts them back, Keras 3's own BN is refused by name."""
    import keras

    from keras_bn import keras3 as kbn

    x_train, y_train, _, _ = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16),
                              kbn.BatchNormalization(name="bn"), keras.layers.Dense(10)])
    assert keras_bn.freeze(model, train_gamma_beta=True) == ["bn"]
    bn = model.get_layer("bn")
    mean, gamma = np.array(bn.moving_mean), np.array(bn.gamma)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train[:256], y_train[:256], batch_size=32, epochs=1, verbose=0)
    np.testing.assert_array_equal(mean, np.array(bn.moving_mean))
    assert not np.array_equal(gamma, np.array(bn.gamma))
    assert keras_bn.unfreeze(model) == ["bn"] and bn.frozen is False
    builtin = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="k")])
    with pytest.raises(ValueError, match=r"Keras 3 BatchNormalization.*'k'"):
        keras_bn.freeze(builtin, train_gamma_beta=True)


def test_freeze_reaches_nested_models():
    inner = tf_keras.Sequential([tf_keras.Input((4,)), L.BatchNormalization(name="inner_bn")],
                                name="inner")
    outer = tf_keras.Sequential([tf_keras.Input((4,)), inner,
                                 keras_bn.BatchNormalization(name="outer_bn")])
    assert keras_bn.freeze(outer) == ["inner/inner_bn", "outer_bn"]
    assert not inner.layers[0].trainable and outer.layers[1].trainable is False


def test_summary_table_and_data():
    inputs = tf_keras.Input((6, 6, 3))
    x = keras_bn.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="conv")(inputs))
    x = L.BatchNormalization(name="bn2", momentum=0.9, epsilon=1e-5)(L.ReLU()(x))
    model = randomize_bn(tf_keras.Model(inputs, x))
    model.get_layer("bn1").gamma.assign([0.0, 1.0, -2.0, 1e-5])
    model.get_layer("bn2").moving_variance.assign([0.0, 1.0, 1.0, 1e-8])
    printed = []
    rows = keras_bn.summary(model, print_fn=printed.append)
    assert [r["name"] for r in rows] == ["bn1", "bn2"]
    assert rows[0]["kind"] == "keras_bn.BatchNormalization" and rows[0]["channels"] == 4
    assert rows[0]["dead_channels"] == 2 and rows[0]["gamma_range"] == (-2.0, 1.0)
    assert rows[1]["zero_variance_channels"] == 2 and rows[1]["epsilon"] == 1e-5
    assert rows[0]["foldable"] == "conv (after)"
    assert rows[1]["foldable"].startswith("no: input comes from ReLU")
    assert "bn1" in printed[0] and "conv (after)" in printed[0]
