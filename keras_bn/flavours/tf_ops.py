"""The tensor operations the layers use, under `keras.ops`'s names, in TensorFlow.

The tf-keras flavour's `ops`: the layer core (`keras_bn.layers`) is written once against
these names, and the Keras 3 flavour hands it `keras.ops` itself. Each function has the
signature and the semantics of its `keras.ops` namesake for the arguments the core passes.
"""

import tensorflow as tf

cast = tf.cast
convert_to_tensor = tf.convert_to_tensor
reshape = tf.reshape
expand_dims = tf.expand_dims
broadcast_to = tf.broadcast_to
size = tf.size
ones = tf.ones
zeros = tf.zeros
ones_like = tf.ones_like
where = tf.where
maximum = tf.maximum
minimum = tf.minimum
clip = tf.clip_by_value
sqrt = tf.sqrt
rsqrt = tf.math.rsqrt
square = tf.square
greater = tf.greater
isfinite = tf.math.is_finite
logical_and = tf.logical_and
logical_not = tf.logical_not
stop_gradient = tf.stop_gradient
sign = tf.sign
floor = tf.floor
abs = tf.abs  # noqa: A001 -- keras.ops's name
zeros_like = tf.zeros_like
equal = tf.equal
matmul = tf.matmul


def sum(x, axis=None, keepdims=False):  # noqa: A001 -- keras.ops's name
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return tf.reduce_mean(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 -- keras.ops's name
    return tf.reduce_max(x, axis=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001 -- keras.ops's name
    return tf.reduce_min(x, axis=axis, keepdims=keepdims)


def all(x, axis=None, keepdims=False):  # noqa: A001 -- keras.ops's name
    return tf.reduce_all(x, axis=axis, keepdims=keepdims)


def moments(x, axes, keepdims=False):
    return tf.nn.moments(x, axes, keepdims=keepdims)


def shape(x):
    """The static dimensions where known, scalar tensors where not (as Keras 3's
    TensorFlow backend), so a reshape to it keeps every static dimension."""
    static = x.shape.as_list()
    if None not in static:
        return tuple(static)
    dynamic = tf.shape(x)
    return tuple(dynamic[i] if dim is None else dim for i, dim in enumerate(static))


def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """A channels-last convolution of any rank, grouped where `kernel` has fewer input
    channels than `inputs` (as `keras.ops.conv`)."""
    del data_format  # channels last: the only layout the core passes
    return tf.nn.convolution(inputs, kernel, strides=strides, padding=padding.upper(),
                             dilations=dilation_rate)


def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None,
                   dilation_rate=1):
    """A channels-last 2-D depthwise convolution (as `keras.ops.depthwise_conv`)."""
    del data_format
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    dilation_rate = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else tuple(
        dilation_rate)
    return tf.nn.depthwise_conv2d(inputs, kernel, (1, *strides, 1), padding.upper(),
                                  dilations=dilation_rate)
