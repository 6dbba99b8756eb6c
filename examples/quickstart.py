"""Quick start: a tiny CNN with keras_bn's two layers, trained on made data (~20 s on 2 cores).

Shows that BatchNormalization and BatchRenormalization drop into a tf-keras model, that the
loss falls, and what the layers hold after training (moving statistics, BRN's schedule).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402


def make_data(n, seed=0):
    """Noisy 12x12 images of a horizontal or a vertical bar: label 0 or 1."""
    rs = np.random.RandomState(seed)
    x = rs.randn(n, 12, 12, 1).astype("float32") * 0.8
    y = rs.randint(0, 2, n)
    pos = rs.randint(2, 10, n)
    for i in range(n):
        if y[i]:
            x[i, :, pos[i], 0] += 2.0
        else:
            x[i, pos[i], :, 0] += 2.0
    return x * 3.0 + 5.0, y  # far from zero mean, unit variance: BN has work to do


def build_model():
    return tf_keras.Sequential([
        tf_keras.Input((12, 12, 1)),
        tf_keras.layers.Conv2D(8, 3, use_bias=False),
        keras_bn.BatchNormalization(),
        tf_keras.layers.ReLU(),
        tf_keras.layers.Conv2D(16, 3, use_bias=False),
        keras_bn.BatchRenormalization(warmup_steps=20, rmax_ramp_steps=60,
                                      dmax_ramp_steps=40),
        tf_keras.layers.ReLU(),
        tf_keras.layers.GlobalMaxPooling2D(),
        tf_keras.layers.Dense(2),
    ])


def main(epochs=5):
    x, y = make_data(1200)
    x_test, y_test = make_data(400, seed=1)
    model = build_model()
    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=2)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    losses = history.history["loss"]
    print(f"\ntraining loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"held-out accuracy {accuracy:.3f} (inference mode, moving statistics)")
    for layer in model.layers:
        if isinstance(layer, keras_bn.BatchNormalization):
            line = (f"{layer.name:28s} moving_mean [{layer.moving_mean.numpy().min():+.2f}, "
                    f"{layer.moving_mean.numpy().max():+.2f}]  moving_variance "
                    f"[{layer.moving_variance.numpy().min():.2f}, "
                    f"{layer.moving_variance.numpy().max():.2f}]  skipped updates "
                    f"{int(layer.skipped_updates.numpy())}")
            if isinstance(layer, keras_bn.BatchRenormalization):
                rmax, dmax = (float(v) for v in layer.clip_limits())
                line += (f"  step {int(layer.renorm_step.numpy())}: "
                         f"rmax {rmax:.2f}, dmax {dmax:.2f}")
            print(line)
    return accuracy


if __name__ == "__main__":
    main()
