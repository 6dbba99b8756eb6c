"""Models using keras_bn layers save and load in every tf-keras format, outputs identical."""

import numpy as np
import pytest
import tf_keras

import keras_bn


def _model():
    inputs = tf_keras.Input((6, 6, 3))
    x = tf_keras.layers.Conv2D(4, 3)(inputs)
    x = keras_bn.BatchNormalization(momentum=0.8, epsilon=1e-4, virtual_batch_size=None)(x)
    x = tf_keras.layers.Conv2D(4, 3)(x)
    x = keras_bn.BatchRenormalization(axis=-1, rmax=2.0, dmax=1.0, warmup_steps=1,
                                      rmax_ramp_steps=3, dmax_ramp_steps=2)(x)
    x = tf_keras.layers.Flatten()(x)
    outputs = tf_keras.layers.Dense(2)(x)
    model = tf_keras.Model(inputs, outputs)
    rs = np.random.RandomState(0)
    for _ in range(3):  # move the statistics and counters off their initial values
        model(rs.randn(8, 6, 6, 3).astype("float32"), training=True)
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5", "savedmodel"])
def test_round_trip(tmp_path, suffix):
    model = _model()
    x = np.random.RandomState(1).randn(5, 6, 6, 3).astype("float32")
    path = str(tmp_path / ("model" + (suffix if suffix.startswith(".") else "")))
    model.save(path) if suffix != "savedmodel" else model.save(path, save_format="tf")
    loaded = tf_keras.models.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  model(x, training=False).numpy())
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert isinstance(loaded.layers[2], keras_bn.BatchNormalization)
    assert isinstance(loaded.layers[4], keras_bn.BatchRenormalization)


@pytest.mark.parametrize("cls", ["BatchNormalization", "BatchRenormalization"])
def test_config_round_trip(flavour, cls):
    keras, layers = flavour
    cls = getattr(layers, cls)
    layer = cls(axis=[1, 2], momentum=0.7, epsilon=2e-3, center=False,
                gamma_regularizer="l2", virtual_batch_size=4, name="x")
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is cls and restored.get_config() == config


def test_renorm_config_round_trip(flavour):
    cls = flavour[1].BatchRenormalization
    layer = cls(axis=1, rmax=2.0, dmax=float("inf"), warmup_steps=7, virtual_batch_size=4,
                name="brn")
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()
