"""recalibrate on trained models and real data (digits), in either flavour."""

import numpy as np
import pytest

import keras_bn
from digits_models import accuracy, fit, mlp
from keras_bn.layers.find import is_batch_norm


def test_recalibration_recovers_a_model_trained_with_small_batches(digits, flavour):
    """Small batches, one short epoch, momentum 0.999: the moving averages still hold
    mostly their initial values and early-training statistics when training stops."""
    keras, layers = flavour
    x_train, y_train, x_test, y_test = digits
    model = mlp(keras, layers.BatchNormalization, momentum=0.999)
    fit(keras, model, x_train, y_train, batch_size=8)
    before = accuracy(model, x_test, y_test)
    kernels = [np.array(w) for w in model.trainable_weights]
    summary = keras_bn.recalibrate(model, x_train, batch_size=64, verbose=0)
    after = accuracy(model, x_test, y_test)
    print(f"small batches: accuracy {before:.4f} -> {after:.4f} after recalibration")
    assert after > before + 0.05 and after > 0.9  # measured (tf-keras): 0.816 -> 0.936
    assert [row["name"] for row in summary] == [layer.name for layer in model.layers
                                                if is_batch_norm(layer)]
    assert all(row["mean_shift"] > 0 for row in summary)
    for old, new in zip(kernels, model.trainable_weights):  # nothing else changed
        np.testing.assert_array_equal(old, np.array(new))


def test_recalibration_adapts_to_shifted_inputs(digits, flavour):
    keras, _ = flavour
    x_train, y_train, x_test, y_test = digits
    model = mlp(keras, keras.layers.BatchNormalization, momentum=0.9)  # Keras's own BN
    fit(keras, model, x_train, y_train, batch_size=32, epochs=5)
    shift = lambda x: x * 3.0 + 1.0  # e.g. another sensor's gain and offset
    clean, shifted = accuracy(model, x_test, y_test), accuracy(model, shift(x_test), y_test)
    keras_bn.recalibrate(model, shift(x_train), verbose=0)  # unlabeled new data
    adapted = accuracy(model, shift(x_test), y_test)
    print(f"shift: clean {clean:.4f}, shifted {shifted:.4f}, recalibrated {adapted:.4f}")
    assert shifted < clean - 0.2 and adapted > clean - 0.03


def test_recalibrate_without_bn_or_data_is_a_clear_error(flavour):
    keras, layers = flavour
    with pytest.raises(ValueError, match="no BatchNormalization"):
        keras_bn.recalibrate(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
                             np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no batch"):
        keras_bn.recalibrate(mlp(keras, layers.BatchNormalization), [], verbose=0)
