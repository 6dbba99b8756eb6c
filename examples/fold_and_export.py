"""A trained model -> fold -> ONNX and TFLite -> the parity table.

Trains a small CNN with BN layers on scikit-learn's digits, shows the fold plan (every BN,
into which layer), exports ONNX (tf2onnx) and TFLite (float32, and int8 calibrated on
training images), runs each file in its runtime (onnxruntime, LiteRT) and prints one table:
max abs error against Keras, held-out accuracy, size, op count.
Time: ~20 s on 2 cores (`--quick`: ~10 s).

    python examples/fold_and_export.py [--quick] [--out DIR]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402,F401  (import TensorFlow before tf_keras)
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import export  # noqa: E402
from keras_bn.cli.demo import build_model, load_digits  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 8")
    parser.add_argument("--out", default="fold_and_export_results")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_digits()
    model = build_model()
    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=32, epochs=1 if args.quick else 8, verbose=0)

    print(keras_bn.fold_plan(model))
    folded = keras_bn.fold(model)
    print(f"\n{len(model.layers)} layers -> {len(folded.layers)} after folding\n")

    os.makedirs(args.out, exist_ok=True)
    check = dict(samples=x_test, labels=y_test)
    results = [
        export.to_onnx(model, os.path.join(args.out, "digits.onnx"), **check),
        export.to_tflite(model, os.path.join(args.out, "digits.tflite"), **check),
        export.to_tflite(model, os.path.join(args.out, "digits_int8.tflite"),
                         quantize=export.QuantizationOptions("int8", calibration=x_train),
                         **check),
    ]
    print(f"{'format':16s}{'max abs error':>15s}{'accuracy':>10s}{'Keras acc.':>11s}"
          f"{'size KiB':>10s}{'ops':>6s}")
    for r in results:
        print(f"{r.format:16s}{r.max_error:15.2e}{r.accuracy:10.4f}{r.keras_accuracy:11.4f}"
              f"{r.size_bytes / 1024:10.1f}{sum(r.op_counts.values()):6d}")
    return results


if __name__ == "__main__":
    main()
