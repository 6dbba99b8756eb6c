"""`keras-bn demo`: the whole path on real data, in a few minutes on 2 CPU cores.

Trains a small CNN that uses both keras_bn layers on scikit-learn's 8x8 handwritten digits
(1,797 images that ship with scikit-learn), folds its BN layers, exports ONNX, TFLite
float32 and TFLite int8, runs every file in its runtime, and prints one table: format,
file size, held-out accuracy, max abs error against Keras, latency per batch of 32. It
writes a PNG with the training curves and the accuracy per format.
"""

import os

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError


def load_digits(seed=0):
    """`(x_train, y_train, x_test, y_test)`: digits as (N, 8, 8, 1) floats in [0, 1],
    a stratified 75/25 split."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:  # pragma: no cover - the demo extra is missing
        raise InputError("the demo needs scikit-learn: pip install 'keras-bn[demo]'") from error
    digits = sklearn_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    return x_train, y_train, x_test, y_test


def build_model(seed=0):
    """A small CNN with keras_bn's BatchNormalization and BatchRenormalization.

    Momentum 0.9 rather than 0.99: 1,347 images make 43 steps an epoch, and the moving
    statistics should settle within the demo's few hundred steps."""
    import keras_bn
    tf_keras = flavour.named("tf_keras").keras

    tf_keras.utils.set_random_seed(seed)
    L = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="digit"),
        L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1"),
        keras_bn.BatchNormalization(momentum=0.9, name="bn1"),
        L.ReLU(name="relu1"),
        L.Conv2D(32, 3, padding="same", use_bias=False, name="conv2"),
        keras_bn.BatchRenormalization(momentum=0.9, renorm_momentum=0.9, warmup_steps=100,
                                      rmax_ramp_steps=200, dmax_ramp_steps=150, name="brn2"),
        L.ReLU(name="relu2"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(64, 3, padding="same", use_bias=False, name="conv3"),
        keras_bn.BatchNormalization(momentum=0.9, name="bn3"),
        L.ReLU(name="relu3"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(64, use_bias=False, name="fc"),
        keras_bn.BatchRenormalization(momentum=0.9, renorm_momentum=0.9, warmup_steps=100,
                                      rmax_ramp_steps=200, dmax_ramp_steps=150, name="brn_fc"),
        L.ReLU(name="relu_fc"),
        L.Dense(10, name="logits"),
    ], name="digits_cnn")


def train(model, x_train, y_train, x_test, y_test, epochs, verbose=2):
    tf_keras = flavour.named("tf_keras").keras

    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose,
                     validation_data=(x_test, y_test)).history


def keras_row(name, model, x_test, y_test):
    """The table row of a Keras model: size of its weights file without optimizer state
    (.h5), accuracy and max error, latency of a batch of 32 in `tf.function`."""
    import tempfile

    import tensorflow as tf

    from keras_bn.export.checks import accuracy, latency_ms, predict

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5")
        model.save(path, include_optimizer=False)
        size = os.path.getsize(path)
    call = tf.function(lambda x: model(x, training=False))
    batch = x_test[:32]
    return {"format": name, "size_kib": size / 1024,
            "accuracy": accuracy(predict(model, [x_test]), y_test), "max_error": 0.0,
            "latency_ms": latency_ms(lambda inputs: call(inputs[0]).numpy(), [batch])}


def export_row(result):
    return {"format": result.format, "size_kib": result.size_bytes / 1024,
            "accuracy": result.accuracy, "max_error": result.max_error,
            "latency_ms": result.latency_ms}


def table(rows):
    lines = [f"{'format':16s} {'size':>10s} {'accuracy':>9s} {'max abs error':>14s} "
             f"{'latency/batch32':>16s}"]
    for r in rows:
        lines.append(f"{r['format']:16s} {r['size_kib']:8.1f}KiB {r['accuracy']:9.4f} "
                     f"{r['max_error']:14.2e} {r['latency_ms']:13.3f} ms")
    return "\n".join(lines)


def plot(history, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_fmt) = plt.subplots(1, 3, figsize=(15, 4.2))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax_loss.plot(epochs, history["loss"], "o-", label="train")
    ax_loss.plot(epochs, history["val_loss"], "s--", label="held-out")
    ax_loss.set(title="loss", xlabel="epoch", yscale="log")
    ax_acc.plot(epochs, history["accuracy"], "o-", label="train (training mode)")
    ax_acc.plot(epochs, history["val_accuracy"], "s--", label="held-out (inference mode)")
    ax_acc.set(title="accuracy", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    names = [r["format"] for r in rows]
    accuracies = [100 * r["accuracy"] for r in rows]
    bars = ax_fmt.bar(names, accuracies, color="tab:blue")
    ax_fmt.bar_label(bars, fmt="%.2f")
    ax_fmt.set(title="held-out accuracy per format (%)", ylim=(min(accuracies) - 3, 100.5))
    ax_fmt.tick_params(axis="x", rotation=20)
    fig.suptitle("keras-bn demo: scikit-learn digits, BN + BRN CNN, folded and exported")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def main(epochs=12, out="demo_results", verbose=2):
    """Runs the demo; returns the table rows (list of dicts)."""
    import keras_bn
    from keras_bn.cli.progress import Steps
    from keras_bn.export import QuantizationOptions, to_onnx, to_tflite

    os.makedirs(out, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits()
    print(f"scikit-learn digits: {len(x_train)} training and {len(x_test)} held-out images "
          "of 8x8 pixels, 10 classes")
    model = build_model()
    steps = Steps(6)
    history = steps.run(f"train {epochs} epochs", train, model, x_train, y_train, x_test,
                        y_test, epochs, verbose)
    folded, plan = steps.run("fold and verify", keras_bn.fold, model, return_plan=True)
    print(plan.table())
    kwargs = dict(samples=x_test, labels=y_test, latency_batch=32)
    onnx_result = steps.run("export ONNX", to_onnx, model, os.path.join(out, "digits.onnx"),
                            **kwargs)
    tflite_result = steps.run("export TFLite float32", to_tflite, model,
                              os.path.join(out, "digits.tflite"), **kwargs)
    int8_result = steps.run("export TFLite int8", to_tflite, model,
                            os.path.join(out, "digits_int8.tflite"),
                            quantize=QuantizationOptions("int8", calibration=x_train), **kwargs)
    rows = [keras_row("keras", model, x_test, y_test),
            keras_row("keras (folded)", folded, x_test, y_test)]
    rows[1]["max_error"] = plan.max_error
    rows += [export_row(r) for r in (onnx_result, tflite_result, int8_result)]
    png = os.path.join(out, "demo.png")
    steps.run("plot", plot, history, rows, png)
    print()
    print(table(rows))
    print(f"\nfiles in {os.path.abspath(out)}; plot: {os.path.abspath(png)}")
    return rows
