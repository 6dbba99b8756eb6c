"""freeze / unfreeze on trained models and real data (digits), in either flavour."""

import numpy as np
import pytest

import keras_bn
from digits_models import fit, mlp


@pytest.mark.parametrize("ours", [True, False], ids=["keras_bn", "keras"])
def test_fitting_a_frozen_model_keeps_the_statistics(digits, flavour, ours):
    keras, layers = flavour
    x_train, y_train, _, _ = digits
    bn = layers.BatchNormalization if ours else keras.layers.BatchNormalization
    model = mlp(keras, bn)
    fit(keras, model, x_train[:256], y_train[:256], batch_size=32)
    frozen = keras_bn.freeze(model)
    assert len(frozen) == 2
    stats = [np.array(w) for w in model.non_trainable_weights]
    bns = [layer for layer in model.layers if hasattr(layer, "gamma")]
    gammas = [np.array(layer.gamma) for layer in bns]
    dense = np.array(model.layers[0].kernel)
    fit(keras, model, x_train * 2.0, y_train, batch_size=32)  # another distribution
    for old, new in zip(stats, model.non_trainable_weights):
        np.testing.assert_array_equal(old, np.array(new))
    for old, layer in zip(gammas, bns):
        np.testing.assert_array_equal(old, np.array(layer.gamma))  # not trained either
    assert not np.array_equal(dense, np.array(model.layers[0].kernel))  # the rest learns
    assert keras_bn.unfreeze(model) == frozen
    fit(keras, model, x_train * 2.0, y_train, batch_size=32)
    assert not np.array_equal(stats[0], np.array(model.non_trainable_weights[0]))


def test_freeze_keeping_gamma_beta_trainable(digits, flavour):
    """keras_bn layers stay trainable in inference mode, unfreeze puts them back, Keras's
    own BN (which has no such mode) is refused by name."""
    keras, layers = flavour
    x_train, y_train, _, _ = digits
    model = mlp(keras, layers.BatchNormalization)
    names = keras_bn.freeze(model, train_gamma_beta=True)
    assert len(names) == 2
    bn = model.layers[1]
    mean, gamma = np.array(bn.moving_mean), np.array(bn.gamma)
    fit(keras, model, x_train[:256], y_train[:256], batch_size=32)
    np.testing.assert_array_equal(mean, np.array(bn.moving_mean))
    assert not np.array_equal(gamma, np.array(bn.gamma))
    assert keras_bn.unfreeze(model) == names and bn.frozen is False
    builtin = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="k")])
    title = "tf-keras" if keras.__name__ == "tf_keras" else "Keras 3"
    with pytest.raises(ValueError, match=rf"{title} BatchNormalization.*'k'"):
        keras_bn.freeze(builtin, train_gamma_beta=True)


def test_freeze_reaches_nested_models(flavour):
    keras, layers = flavour
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(
        name="inner_bn")], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner,
                              layers.BatchNormalization(name="outer_bn")])
    assert keras_bn.freeze(outer) == ["inner/inner_bn", "outer_bn"]
    assert not inner.layers[0].trainable and outer.layers[1].trainable is False
