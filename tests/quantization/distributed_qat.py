"""Trains a quantization-aware model (`keras_bn.quantization.quantize_aware`) with
`fit` for a few steps on one device, under `tf.distribute.MirroredStrategy` over 2
logical CPUs, or under Keras 3's `DataParallel` over 2 virtual CPU devices (JAX), and
writes its weights and predictions as JSON.

Used by tests/quantization/test_distributed_qat.py as a subprocess: the devices and the
backend are fixed when TensorFlow or JAX starts.

Usage: python distributed_qat.py MODE FLAVOUR OUT.json  (MODE single|mirrored|data_parallel,
FLAVOUR tf_keras|keras3; Keras 3's backend from KERAS_BACKEND)
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODE, FLAVOUR, OUT = sys.argv[1:4]
REPLICAS, GLOBAL_BATCH, STEPS = 2, 16, 6
FREEZE_AFTER = 4  # the last two steps run the frozen (inference) graph

if MODE == "mirrored":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

if FLAVOUR == "tf_keras":
    import tf_keras as k

    import keras_bn
    BN = keras_bn.BatchNormalization
else:
    import keras as k
    BN = k.layers.BatchNormalization

from keras_bn.quantization import quantize_aware  # noqa: E402


def data():
    """Rows whose second half of every batch is shifted and scaled: a replica's own
    statistics and ranges differ from the global batch's."""
    rs = np.random.RandomState(0)
    x = rs.randn(STEPS * GLOBAL_BATCH, 8, 8, 3).astype("float32")
    second = (np.arange(len(x)) % GLOBAL_BATCH) >= GLOBAL_BATCH // REPLICAS
    x[second] = x[second] * 3.0 + 2.0
    return x, rs.randint(0, 3, len(x))


def model():
    inputs = k.Input((8, 8, 3))
    x = k.layers.ReLU()(BN()(k.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)))
    y = BN()(k.layers.Conv2D(8, 1, use_bias=True)(x))
    x = k.layers.ReLU()(k.layers.Add()([x, y]))
    x = k.layers.GlobalAveragePooling2D()(x)
    net = k.Model(inputs, k.layers.Dense(3)(x))
    rs = np.random.RandomState(1)  # the same weights however variables are created
    net.set_weights([np.abs(rs.randn(*w.shape)) + 0.5 if "variance" in w.name
                     else rs.randn(*w.shape) * 0.3 for w in net.weights])
    return net


def train():
    x, y = data()
    qat = quantize_aware(model(), x[:GLOBAL_BATCH], freeze_after=FREEZE_AFTER)
    qat.compile(k.optimizers.SGD(0.1),
                k.losses.SparseCategoricalCrossentropy(from_logits=True))
    return qat


def main():
    x, y = data()
    if MODE == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            qat = train()
    else:
        if MODE == "data_parallel":
            import jax

            assert len(jax.devices()) == REPLICAS, jax.devices()
            k.distribution.set_distribution(k.distribution.DataParallel(
                devices=jax.devices()))
        qat = train()
    qat.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    weights = {f"{i}:{w.name}": np.asarray(w.numpy() if hasattr(w, "numpy") else w,
                                           np.float64).tolist()
               for i, w in enumerate(qat.weights)}
    predictions = np.asarray(qat.predict(x, batch_size=GLOBAL_BATCH, verbose=0))
    with open(OUT, "w") as f:
        json.dump({"weights": weights, "predictions": predictions.tolist()}, f)


if __name__ == "__main__":
    main()
