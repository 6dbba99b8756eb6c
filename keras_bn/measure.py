"""What a BN layer's inputs are: per-channel count, mean and sum of squared deviations,
recorded from every call of the layer while a model runs, merged exactly across batches."""

import contextlib

import numpy as np
import tensorflow as tf

from keras_bn.walk import bn_axes


def merge(a, b):
    """Chan et al.'s parallel update of `(count, mean, m2)` triples (per channel, float64):
    the statistics of the union of two sets from those of each."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    safe = np.maximum(n, 1)
    delta = mb - ma
    return n, ma + delta * nb / safe, sa + sb + delta ** 2 * na * nb / safe


def batch_moments(x, axes, mask=None):
    """`(count, mean, m2)` per channel of one batch, reduced over all but `axes`."""
    # float64: a float32 sum of squares over a few thousand elements of a small variance
    # was measured 2e-5 off (ReLU outputs); the reductions are a small part of the pass.
    x = tf.cast(x, tf.float64)
    reduce = [i for i in range(x.shape.rank) if i not in axes]
    if mask is None:
        weights = tf.ones_like(x)
    else:
        weights = tf.cast(mask, x.dtype)
        while weights.shape.rank < x.shape.rank:
            weights = tf.expand_dims(weights, -1)
        weights = tf.broadcast_to(weights, tf.shape(x))
    count = tf.reduce_sum(weights, reduce, keepdims=True)
    mean = tf.reduce_sum(x * weights, reduce, keepdims=True) / tf.maximum(count, 1)
    m2 = tf.reduce_sum(tf.square(x - mean) * weights, reduce)
    return tf.squeeze(count, reduce), tf.squeeze(mean, reduce), m2


@contextlib.contextmanager
def recording(layers):
    """Makes each BN layer record `(count, mean, m2)` of its inputs on every call (a
    shared layer once per call) into the yielded dict, name -> list."""
    records = {name: [] for name, _ in layers}
    for name, layer in layers:

        @tf.autograph.experimental.do_not_convert
        def call(inputs, *args, _layer=layer, _name=name, **kwargs):
            records[_name].append(batch_moments(inputs, bn_axes(_layer), kwargs.get("mask")))
            return type(_layer).call(_layer, inputs, *args, **kwargs)

        layer.call = call  # an instance attribute: Keras's __call__ looks `call` up
    try:
        yield records
    finally:
        for _, layer in layers:
            del layer.call
