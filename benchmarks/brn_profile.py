"""`python -m benchmarks.brn_profile [SHAPE]`: where BatchRenormalization's extra training
time goes, against tf-keras's fused BN (issue: BRN <= 1.10x BN on NHWC 32x56x56x64).

Interleaved variants of one compiled training step (forward, backward, updates), CPU time
of the process (medians), printed as ratios to tf-keras's BN:

* the layers: tf-keras BN, keras_bn BN, keras_bn BRN, and BRN with its correction
  replaced by constants (`r = 1`, `d = 0`: no schedule, no r/d, same kernels);
* the bare kernels: BN's fused training kernel, and BRN's two (the training kernel for
  the batch statistics, the inference kernel applying `gamma * r`, `gamma * d + beta`,
  the fused gradient);
* other ways to compute BRN, measured and rejected: statistics from `tf.nn.moments` and
  one training kernel taking `r`, `d` as its scale and offset; two training kernels; the
  whole forward in XLA.
"""

import sys

import tensorflow as tf
import tf_keras

import keras_bn
from benchmarks import harness, training
from keras_bn.layers import fused

EPSILON = 1e-3


def _raw_step(body, x, weights):
    """A compiled forward + backward step of `body(x)` (the loss of `training.train_step`)."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(body(x)))
        return tape.gradient(loss, [x] + weights)

    return lambda: step()[0].numpy()


class _ConstantCorrection(keras_bn.BatchRenormalization):
    """BRN's kernels and updates with `r = 1`, `d = 0`: what the correction itself costs."""

    def _training_transform(self, gamma, beta, mean, variance):
        return gamma, beta


def contenders(shape):
    channels, axes = shape[-1], list(range(len(shape) - 1))
    x = tf.random.normal(shape)
    gamma, beta = tf.Variable(tf.ones([channels])), tf.Variable(tf.zeros([channels]))
    weights = [gamma, beta]

    def correction(mean, variance):  # gradient-free r = 1, d = 0 from the statistics
        return tf.stop_gradient(1.0 + 0.0 * mean), tf.stop_gradient(0.0 * variance)

    def bn_kernel(x):
        return fused.fused_batch_norm(x, gamma, beta, EPSILON, len(shape) - 1)[0]

    def brn_kernels(x):
        return fused.fused_batch_norm_with_transform(
            x, lambda m, v: (gamma * correction(m, v)[0], beta + gamma * correction(m, v)[1]),
            tf.float32, EPSILON, len(shape) - 1)[0]

    def moments_then_kernel(x):
        r, d = correction(*tf.nn.moments(tf.stop_gradient(x), axes))
        return fused._fused(x, gamma * r, gamma * d + beta, EPSILON, "NHWC")[0]

    def two_training_kernels(x):
        _, mean, variance, *_ = fused._fused(tf.stop_gradient(x), tf.ones([channels]),
                                             tf.zeros([channels]), EPSILON, "NHWC")
        r, d = correction(mean, variance)
        return fused._fused(x, gamma * r, gamma * d + beta, EPSILON, "NHWC")[0]

    @tf.function(jit_compile=True)
    def xla_forward(x, gamma, beta):
        mean, variance = tf.nn.moments(x, axes)
        r, d = correction(mean, variance)
        inv = tf.math.rsqrt(variance + EPSILON) * gamma * r
        return x * inv + (beta + gamma * d - mean * inv)

    kwargs = training.BRN_KWARGS
    return {
        "tf-keras BN": training.train_step(tf_keras.layers.BatchNormalization(), shape),
        "keras_bn BN": training.train_step(keras_bn.BatchNormalization(), shape),
        "keras_bn BRN": training.train_step(keras_bn.BatchRenormalization(**kwargs), shape),
        "keras_bn BRN, r = 1, d = 0": training.train_step(_ConstantCorrection(**kwargs), shape),
        "bare BN kernel": _raw_step(bn_kernel, x, weights),
        "bare BRN kernels": _raw_step(brn_kernels, x, weights),
        "moments + 1 training kernel": _raw_step(moments_then_kernel, x, weights),
        "2 training kernels": _raw_step(two_training_kernels, x, weights),
        "XLA forward": _raw_step(lambda x: xla_forward(x, gamma, beta), x, weights),
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    shape = tuple(int(d) for d in argv[0].split("x")) if argv else (32, 56, 56, 64)
    if len(shape) != 4:
        raise SystemExit("give an NHWC shape, e.g. 32x56x56x64")
    timings = harness.interleave(contenders(shape), repeats=15, warmup=3, inner=3)
    base = timings["tf-keras BN"].cpu_median
    print(f"training step, NHWC {'x'.join(map(str, shape))}: CPU ms (median), ratio to "
          "tf-keras BN")
    for name, timing in timings.items():
        print(f"  {name:30s} {timing.cpu_median * 1e3:8.2f}  {timing.cpu_median / base:6.3f}")


if __name__ == "__main__":
    main()
