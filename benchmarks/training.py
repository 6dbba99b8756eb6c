"""Training-step cases: forward + backward through one normalization layer in tf.function
(tf-keras layers, and Keras 3 layers on the TensorFlow backend)."""

import tensorflow as tf
import tf_keras

import keras_bn

SHAPES = {"NHWC 32x56x56x64": (32, 56, 56, 64), "NHWC 8x112x112x32": (8, 112, 112, 32),
          "2-D 256x1024": (256, 1024)}
QUICK_SHAPES = {"NHWC 8x28x28x32": (8, 28, 28, 32), "2-D 64x256": (64, 256)}

# BRN with its clipping fully open, so the measured step does all of BRN's work.
BRN_KWARGS = dict(warmup_steps=0, rmax_ramp_steps=0, dmax_ramp_steps=0)


def train_step(layer, shape):
    """A compiled forward + backward step of `layer` on a fixed random batch."""
    x = tf.random.normal(shape)
    layer.build(shape)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return lambda: [g.numpy() for g in step()][0]


def contenders(shape):
    """name -> step function, for one input shape."""
    make = {
        # tf-keras's default: its fused kernel on 4-D inputs, its generic path on 2-D.
        "tf-keras BN": lambda: tf_keras.layers.BatchNormalization(),
        "tf-keras BN, control": lambda: tf_keras.layers.BatchNormalization(),
        "keras_bn BN": lambda: keras_bn.BatchNormalization(),
        "keras_bn BRN": lambda: keras_bn.BatchRenormalization(**BRN_KWARGS),
        "tf-keras renorm": lambda: tf_keras.layers.BatchNormalization(
            renorm=True, renorm_clipping={"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0}),
    }
    return {name: train_step(factory(), shape) for name, factory in make.items()}


def jax_train_step(layer, shape):
    """A jitted forward + backward step of a Keras 3 layer on the JAX backend (the
    layer's variables passed in and out, as Keras 3's JAX trainer does)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.asarray(np.random.RandomState(0).randn(*shape).astype("float32"))
    layer.build(shape)
    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x):
        y, updated = layer.stateless_call(trainable, fixed, x, training=True)
        return jnp.sum(y * y), updated

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return lambda: jax.block_until_ready(step(trainable, x)[1][1])


def keras3_contenders(shape):
    """name -> step function for the Keras 3 layers against
    `keras.layers.BatchNormalization`, on the active backend (TensorFlow: our fused kernel
    path; JAX: `keras.ops` on both sides, jitted)."""
    import keras

    from keras_bn import keras3 as kbn

    make = {
        "Keras 3 BN": lambda: keras.layers.BatchNormalization(),
        "Keras 3 BN, control": lambda: keras.layers.BatchNormalization(),
        "keras_bn.keras3 BN": lambda: kbn.BatchNormalization(),
        "keras_bn.keras3 BRN": lambda: kbn.BatchRenormalization(**BRN_KWARGS),
        "Keras 3 renorm": lambda: keras.layers.BatchNormalization(
            renorm=True, renorm_clipping={"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0}),
    }
    step = train_step if keras.backend.backend() == "tensorflow" else jax_train_step
    return {name: step(factory(), shape) for name, factory in make.items()}
