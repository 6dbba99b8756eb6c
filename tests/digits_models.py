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
