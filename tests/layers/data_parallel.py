"""keras_bn.keras3 layers under Keras 3's distribution API on JAX
(`keras.distribution.DataParallel` over virtual CPU devices): the same training as on
one device. Run as a subprocess (the device count and the backend are fixed at import):
`XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax python
tests/layers/data_parallel.py OUT.json`.

Writes, per quantity, the max error of the data-parallel run against the single-device
one relative to the quantity's scale: predictions, the weight change of one SGD step with
learning rate 1 (the gradients), the moving statistics after training; and recalibrate's
statistics under the distribution against numpy's.
"""

import json
import sys

import jax
import keras
import numpy as np

import keras_bn
from keras_bn import keras3 as kbn


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def build():
    L = keras.layers
    model = keras.Sequential([
        keras.Input((6, 6, 3)), L.Conv2D(8, 3), kbn.BatchNormalization(name="bn"), L.ReLU(),
        L.Conv2D(8, 1), kbn.BatchRenormalization(name="brn", warmup_steps=1,
                                                 rmax_ramp_steps=2, dmax_ramp_steps=2),
        L.GlobalAveragePooling2D(), L.Dense(3)])
    model.compile(keras.optimizers.SGD(1.0), "mse")
    return model


def train(initial, x, y):
    """(weights after one SGD step, predictions, statistics after 4 more steps)."""
    model = build()
    model.set_weights(initial)
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0)
    one_step = [np.array(w) for w in model.weights]
    model.optimizer.learning_rate.assign(0.05)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    statistics = {w.path.split("/", 1)[1]: np.array(w) for w in model.non_trainable_weights}
    return model, one_step, model.predict(x, batch_size=32, verbose=0), statistics


def main(out):
    assert len(jax.devices()) == 4, jax.devices()
    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    x = (rs.randn(128, 6, 6, 3) * 2 + 1).astype("float32")
    y = rs.randn(128, 3).astype("float32")
    initial = build().get_weights()
    _, single_step, single_out, single_stats = train(initial, x, y)
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=jax.devices()))
    model, step, out_parallel, stats = train(initial, x, y)
    deltas = [relative(p - i, s - i) for p, s, i in zip(step, single_step, initial)]
    result = {"outputs": relative(out_parallel, single_out), "gradients": max(deltas),
              "statistics": max(relative(stats[k], single_stats[k]) for k in stats),
              "variables_sharded": str(model.weights[0].value.sharding)}
    keras_bn.recalibrate(model, x, batch_size=32, verbose=0)
    h = np.asarray(keras.Sequential(model.layers[:1])(x), np.float64)
    bn = model.get_layer("bn")
    result["recalibrate_mean"] = relative(bn.moving_mean, h.mean((0, 1, 2)))
    result["recalibrate_variance"] = relative(bn.moving_variance, h.var((0, 1, 2), ddof=1))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
