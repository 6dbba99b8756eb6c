"""Quantization-aware training's step against the float model's, per backend.

A small conv net (three conv -> BN -> ReLU blocks, a residual Add, pooling, a dense
head) and its `keras_bn.quantization.quantize_aware` copy (calibrated: weights and
activations fake-quantized) each take Keras's own training step (`train_on_batch`, the
same optimizer and loss) on the same batch, interleaved; the CPU-time ratio is the
cost of simulating int8 in training. Two QAT copies: with the BN statistics of the
batch every step (`freeze_after=None`, the whitepaper's correction) and frozen (the
default, `freeze_after=0`: the folded layer). The tf-keras and Keras 3 TensorFlow
cases run in the bench's process; JAX and torch each in a child process (`python -m
benchmarks.qat --backend jax`), as Keras 3 picks its backend at import.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import harness

#: Batch, image size, channels.
SHAPE = (32, 32, 32, 16)
QUICK_SHAPE = (8, 16, 16, 8)
BACKENDS = ("jax", "torch")


def _net(k, shape):
    inputs = k.Input(shape[1:])
    x = inputs
    for filters in (16, 32):
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = k.layers.ReLU()(k.layers.BatchNormalization()(x))
    y = k.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = k.layers.ReLU()(k.layers.Add()([x, k.layers.BatchNormalization()(y)]))
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(10)(x))


#: The contender whose BN statistics are frozen (`quantize_aware`'s default).
FROZEN = "QAT, statistics frozen"


def contenders(flavour, quick=False):
    """name -> one training step, for the "float" model of `flavour` ("tf_keras" or
    "keras3", on the active backend) and its QAT copies: "QAT" with the BN statistics
    never frozen (the batch-statistics correction every step) and `FROZEN`."""
    if flavour == "tf_keras":
        import tf_keras as k
    else:
        import keras as k
    from keras_bn.quantization import quantize_aware

    shape = QUICK_SHAPE if quick else SHAPE
    rs = np.random.RandomState(0)
    x = rs.randn(*shape).astype("float32")
    y = rs.randint(0, 10, shape[0])
    model = _net(k, shape)
    made = {"float": model,
            # never frozen: conv -> BN with the batch's statistics, as the float step
            "QAT": quantize_aware(model, x, freeze_after=None),
            # the default: statistics frozen, training runs the folded layer
            FROZEN: quantize_aware(model, x)}
    for m in made.values():
        m.compile(k.optimizers.SGD(1e-3),
                  k.losses.SparseCategoricalCrossentropy(from_logits=True))
    return {name: (lambda m=m: m.train_on_batch(x, y)) for name, m in made.items()}


def timings(flavour, quick=False):
    """`{name: Timing}` of the two steps, interleaved."""
    return harness.interleave(contenders(flavour, quick), repeats=5 if quick else 15,
                              warmup=3, inner=3)


def in_child(backend, quick=False):
    """`{name: Timing}` measured by a child process on Keras 3's `backend`."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "benchmarks.qat", "--backend", backend]
                         + (["--quick"] if quick else []), env=env, capture_output=True,
                         text=True, timeout=1200)
    if run.returncode != 0:
        raise RuntimeError(f"QAT bench on {backend} failed: {run.stderr[-2000:]}")
    data = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: harness.Timing(wall=t["wall"], cpu=t["cpu"]) for name, t in data.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != args.backend:
        raise SystemExit(f"KERAS_BACKEND is {keras.backend.backend()}, not {args.backend}")
    measured = timings("keras3", args.quick)
    print(json.dumps({name: {"wall": t.wall, "cpu": t.cpu} for name, t in measured.items()}))


if __name__ == "__main__":
    main()
