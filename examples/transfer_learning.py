"""Fine-tuning with keras_bn.freeze, compared with not freezing.

Pretrains a CNN on digits 0-4 (all their training images), then fine-tunes it on digits
5-9 from only a few labelled images per class in batches of 4, starting from the same
weights each time. Three ways, in two situations (new images like the old ones, or from a
different "camera": brighter, more contrast):

* not frozen: BN statistics re-estimated from the tiny fine-tuning batches;
* frozen (`keras_bn.freeze`): BN layers in inference mode, statistics kept;
* frozen + recalibrated: frozen, then `keras_bn.recalibrate` on the new images (no labels
  needed) so the statistics match the new inputs.

Prints held-out accuracy on the new classes for each. Which wins depends on the
situation; the script shows it rather than assuming it.
Time: ~60 s on 2 cores (`--quick`: ~20 s).

    python examples/transfer_learning.py [--quick] [--shots N]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402,F401  (import TensorFlow before tf_keras)
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn.cli.demo import build_model, load_digits  # noqa: E402

SITUATIONS = {"same camera": lambda x: x,
              "new camera": lambda x: np.clip(x * 1.5 + 0.2, 0.0, 2.0)}
WAYS = ("not frozen", "frozen", "frozen + recalibrated")


def compile_model(model, lr):
    model.compile(tf_keras.optimizers.Adam(lr),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def fine_tune(model, weights, way, x_few, y_few, x_unlabeled, epochs):
    model.set_weights(weights)
    keras_bn.unfreeze(model)
    if way != "not frozen":
        keras_bn.freeze(model)
    if way == "frozen + recalibrated":
        keras_bn.recalibrate(model, x_unlabeled, verbose=0)
    compile_model(model, 1e-3)
    model.fit(x_few, y_few, batch_size=4, epochs=epochs, verbose=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--shots", type=int, default=10, help="labelled images per new class")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_digits()
    old, new, test = y_train < 5, y_train >= 5, y_test >= 5
    model = build_model(seed=0)
    compile_model(model, 3e-3)
    model.fit(x_train[old], y_train[old], batch_size=32, epochs=2 if args.quick else 8,
              verbose=0)
    weights = model.get_weights()
    rs = np.random.RandomState(0)
    few = np.concatenate([rs.choice(np.where(y_train == c)[0], args.shots, replace=False)
                          for c in range(5, 10)])
    results = {}
    print(f"fine-tuning on {args.shots} images per new class; held-out accuracy on digits 5-9")
    print(f"{'':24s}" + "".join(f"{s:>14s}" for s in SITUATIONS))
    for way in WAYS:
        row = []
        for situation, camera in SITUATIONS.items():
            fine_tune(model, weights, way, camera(x_train[few]), y_train[few],
                      camera(x_train[new]), epochs=5 if args.quick else 20)
            _, accuracy = model.evaluate(camera(x_test[test]), y_test[test], verbose=0)
            results[way, situation] = accuracy
            row.append(accuracy)
        print(f"{way:24s}" + "".join(f"{a:14.4f}" for a in row))
    return results


if __name__ == "__main__":
    main()
