"""The digits MLP the training-tool tests train, in either flavour."""

import numpy as np


def mlp(keras, bn, momentum=0.99):
    keras.utils.set_random_seed(0)
    L = keras.layers
    return keras.Sequential([
        keras.Input((64,)), L.Dense(64, use_bias=False), bn(momentum=momentum), L.ReLU(),
        L.Dense(32, use_bias=False), bn(momentum=momentum), L.ReLU(), L.Dense(10)])


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def fit(keras, model, x, y, batch_size, epochs=1):
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)


def trained_classifier():
    """A tf-keras digits MLP with keras_bn's BN trained 5 epochs (held-out accuracy ~0.9;
    int8 changes a few of its answers), with `(calibration rows, held-out rows, held-out
    labels)`: the first 300 training rows and the 397 rows after the 1,400 trained on."""
    import tf_keras
    from sklearn.datasets import load_digits

    import keras_bn

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    model = mlp(tf_keras, keras_bn.BatchNormalization)
    fit(tf_keras, model, x[:1400], y[:1400], 32, epochs=5)
    return model, x[:300], x[1400:], y[1400:]
