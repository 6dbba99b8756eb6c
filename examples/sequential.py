"""A Keras Sequential CNN with keras_bn layers: train, evaluate, save, load.

Shows that keras_bn.BatchNormalization and BatchRenormalization are ordinary Keras layers:
they train with `fit`, evaluate in inference mode, and save to `.keras` and load back
without `custom_objects`, giving identical predictions.
Data: scikit-learn's 8x8 digits. Time: ~15 s on 2 cores (`--quick`: ~5 s).

    python examples/sequential.py [--quick]
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402,F401  (import TensorFlow before tf_keras)
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn.cli.demo import load_digits  # noqa: E402


def build():
    L = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", use_bias=False),
        keras_bn.BatchNormalization(momentum=0.9),
        L.ReLU(),
        L.Conv2D(32, 3, padding="same", use_bias=False),
        keras_bn.BatchRenormalization(momentum=0.9, warmup_steps=50, rmax_ramp_steps=100,
                                      dmax_ramp_steps=100),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(10),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs instead of 10")
    args = parser.parse_args(argv)
    tf_keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = load_digits()
    model = build()
    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=2 if args.quick else 10, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"held-out accuracy (inference mode): {accuracy:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.keras")
        model.save(path)
        loaded = tf_keras.models.load_model(path)  # no custom_objects needed
        same = np.array_equal(model.predict(x_test, verbose=0),
                              loaded.predict(x_test, verbose=0))
        print(f"saved to .keras and loaded: predictions identical: {same}")
    return accuracy, same


if __name__ == "__main__":
    main()
