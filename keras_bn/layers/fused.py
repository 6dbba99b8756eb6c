"""The layers' TensorFlow-only paths: TensorFlow's fused batch-norm kernel and the
statistics of the global batch over `tf.distribute` replicas.

Both flavours use them on TensorFlow (tf-keras, and Keras 3 on its TensorFlow backend);
nothing else in `keras_bn.layers` imports TensorFlow. The conventions are those of
`keras_bn.layers.statistics` (biased batch variance returned, count per channel).
"""

import tensorflow as tf

#: TensorFlow's fused kernel clamps epsilon to this value; below it we use the generic path.
FUSED_MIN_EPSILON = 1.001e-5
#: The input dtypes the fused kernel takes.
FUSED_DTYPES = ("float16", "bfloat16", "float32")

#: Below this many elements a reshaped (non-4-D/5-D) input is faster on the generic path:
#: the fused kernel costs ~0.8 ms a training step on 2 CPU cores whatever the size
#: (measured: 256x256 0.96 ms fused vs 0.54 ms generic; 32x4096 1.30 vs 1.77 ms).
FUSED_MIN_ELEMENTS = 2**17
#: The batch size assumed when the batch dimension is unknown (Keras's default).
ASSUMED_BATCH = 32


def fused_is_faster(shape, channel_axis):
    """Whether the fused kernel beats the generic path for an input of `shape`.

    4-D and 5-D inputs with channels first or last always take it (as tf-keras does);
    other layouts only from `FUSED_MIN_ELEMENTS` elements on.
    """
    rank = len(shape)
    if (rank, channel_axis) in ((4, 3), (4, 1), (5, 4), (5, 1)):
        return True
    elements = 1
    for i, dim in enumerate(shape):
        elements *= dim if dim is not None else (ASSUMED_BATCH if i == 0 else 1)
    return elements >= FUSED_MIN_ELEMENTS


def can_fuse(dtype, epsilon, shape, channel_axis):
    """Whether an input of `dtype` (a name) and `shape`, normalized over one
    `channel_axis` with `epsilon`, trains on the fused kernel (and it is the faster path).
    The caller has excluded masks, ghost batches and synchronized statistics."""
    return (dtype in FUSED_DTYPES and epsilon >= FUSED_MIN_EPSILON
            and fused_is_faster(shape, channel_axis))


def _fused_layout(x, channel_axis):
    """`x` as the fused kernel takes it, and its data format.

    4-D and 5-D inputs with channels first or last go to the kernel as they are (the same
    reductions as tf-keras's fused path); any other rank or channel position is reshaped
    (free, no copy) to 4-D: channels last becomes NHWC `(1, rows, 1, C)`, otherwise NCHW
    `(outer, C, inner, 1)`.
    """
    rank = x.shape.rank
    channels = x.shape[channel_axis]
    native = {(4, 3): "NHWC", (4, 1): "NCHW", (5, 4): "NDHWC", (5, 1): "NCDHW"}
    if (rank, channel_axis) in native:
        return x, native[rank, channel_axis]
    if channel_axis == rank - 1:
        return tf.reshape(x, [1, -1, 1, channels]), "NHWC"
    outer = tf.reduce_prod(tf.shape(x)[:channel_axis])
    return tf.reshape(x, [outer, channels, -1, 1]), "NCHW"


def _fused(x, scale, offset, epsilon, data_format, mean=None, variance=None):
    training = mean is None
    empty = tf.constant([], scale.dtype)
    return tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=empty if training else mean,
        variance=empty if training else variance, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format=data_format, is_training=training)


def _biased(unbiased, x, channels, dtype):
    count = tf.cast(tf.size(x) // channels, dtype)
    return unbiased * tf.maximum(count - 1, 1) / count, count


def fused_batch_norm(x, scale, offset, epsilon, channel_axis):
    """Training-mode batch norm through TensorFlow's fused kernel, for one channel axis.

    Returns:
      `(y, mean, variance, count)` with the biased `variance`, as `moments`.
    """
    x4, data_format = _fused_layout(x, channel_axis)
    y, mean, unbiased, *_ = _fused(x4, scale, offset, epsilon, data_format)
    variance, count = _biased(unbiased, x, scale.shape[0], scale.dtype)
    return tf.reshape(y, tf.shape(x)), mean, variance, count


def fused_batch_norm_with_transform(x, transform, param_dtype, epsilon, channel_axis):
    """Training-mode batch norm whose scale and offset depend on the batch statistics.

    `transform(mean, variance) -> (scale, offset)` must be gradient-free in the
    statistics (as BRN's `r` and `d` are). Two kernels, no slower path: the fused kernel
    takes the statistics (and the saved values its gradient needs), the inference kernel
    applies them with `transform`'s scale and offset, and the gradient is the fused
    training gradient, so it flows through the batch statistics exactly as in BN.

    Returns:
      `(y, mean, variance, count)`, as `fused_batch_norm`.
    """
    x4, data_format = _fused_layout(x, channel_axis)
    channels = x.shape[channel_axis]
    ones, zeros = tf.ones([channels], param_dtype), tf.zeros([channels], param_dtype)
    _, mean, unbiased, saved_1, saved_2, saved_3 = _fused(
        tf.stop_gradient(x4), ones, zeros, epsilon, data_format)
    variance, count = _biased(unbiased, x, channels, param_dtype)
    scale, offset = transform(mean, variance)

    @tf.custom_gradient
    def normalize_with_batch_statistics(x4, scale, offset):
        y = _fused(x4, scale, offset, epsilon, data_format, mean, variance)[0]

        def grad(dy):
            dx, dscale, doffset, *_ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x4, scale=scale, reserve_space_1=saved_1,
                reserve_space_2=saved_2, reserve_space_3=saved_3, epsilon=epsilon,
                data_format=data_format, is_training=True)
            return dx, dscale, doffset

        return y, grad

    y = normalize_with_batch_statistics(x4, scale, offset)
    return tf.reshape(y, tf.shape(x)), mean, variance, count


def synchronized_moments(x, reduction_axes, mask=None):
    """The batch mean, biased variance and count per channel of the global batch across
    the replicas of the active `tf.distribute` strategy (`keepdims=True`); without a
    strategy, or with one replica, those of this batch.

    Args:
      x: float32 (or float64) tensor.
      reduction_axes: the axes statistics are taken over.
      mask: optional weights broadcastable to `x` (1 = counts, 0 = ignored).

    Returns:
      `(mean, variance, count)`; `count` is the (global) number of elements per channel,
      as a tensor of `x`'s dtype broadcastable to `mean`.
    """
    weights = None if mask is None else tf.broadcast_to(tf.cast(mask, x.dtype), tf.shape(x))
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        if weights is None:
            mean, variance = tf.nn.moments(x, reduction_axes, keepdims=True)
            count = tf.cast(tf.size(x) // tf.size(mean), x.dtype)
        else:
            count = tf.reduce_sum(weights, reduction_axes, keepdims=True)
            safe = tf.maximum(count, 1)
            mean = tf.reduce_sum(x * weights, reduction_axes, keepdims=True) / safe
            variance = tf.reduce_sum(
                tf.square(x - tf.stop_gradient(mean)) * weights, reduction_axes,
                keepdims=True) / safe
            # The gradient of the variance through the mean is zero, as in tf.nn.moments.
        return mean, variance, count
    # Global statistics from per-replica sums (Welford is not all-reducible in one pass).
    weights = tf.ones_like(x) if weights is None else weights
    local = [tf.reduce_sum(x * weights, reduction_axes, keepdims=True),
             tf.reduce_sum(tf.square(x) * weights, reduction_axes, keepdims=True),
             tf.reduce_sum(weights, reduction_axes, keepdims=True)]
    total, total_sq, count = replica.all_reduce(tf.distribute.ReduceOp.SUM, local)
    safe = tf.maximum(count, 1)
    mean = total / safe
    variance = tf.nn.relu(total_sq / safe - tf.square(mean))
    return mean, variance, count


def global_range(x):
    """`(min, max)` of `x` over the global batch across the replicas of the active
    `tf.distribute` strategy (scalars); without a strategy, or with one replica, this
    batch's. (`ReduceOp` has only SUM and MEAN: the replicas' extremes are gathered.)"""
    low, high = tf.reduce_min(x), tf.reduce_max(x)
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return low, high
    gathered = replica.all_gather(tf.stack([-low, high])[tf.newaxis], axis=0)
    extremes = tf.reduce_max(gathered, axis=0)
    return -extremes[0], extremes[1]
