"""The math shared by the normalization layers: small functions of tensors, no Keras.

Conventions used throughout:

* `variance` is the *biased* batch variance (divided by the count); it is what the
  training output is normalized with.
* The *moving* variance stores the Bessel-corrected (unbiased) estimate
  `variance * n / (n - 1)`, as Ioffe & Szegedy (2015, Algorithm 2) and TensorFlow's fused
  kernel do; `unbiased_variance` converts.
"""

import tensorflow as tf

#: TensorFlow's fused kernel clamps epsilon to this value; below it we use the generic path.
FUSED_MIN_EPSILON = 1.001e-5
FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


def moments(x, reduction_axes, mask=None, synchronized=False):
    """Batch mean, biased variance and count per channel, with `keepdims=True`.

    Args:
      x: float32 (or float64) tensor.
      reduction_axes: the axes statistics are taken over.
      mask: optional weights broadcastable to `x` (1 = counts, 0 = ignored).
      synchronized: all-reduce sums over the replicas of the active `tf.distribute`
        strategy, so the statistics are those of the global batch.

    Returns:
      `(mean, variance, count)`; `count` is the (global) number of elements per channel,
      as a tensor of `x`'s dtype broadcastable to `mean`.
    """
    weights = None if mask is None else tf.broadcast_to(tf.cast(mask, x.dtype), tf.shape(x))
    replica = tf.distribute.get_replica_context() if synchronized else None
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


def unbiased_variance(variance, count):
    """Bessel's correction `variance * n / (n - 1)`; a single element keeps its 0."""
    return variance * count / tf.maximum(count - 1, 1)


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


def normalize(x, mean, variance, scale, offset, epsilon):
    """`scale * (x - mean) / sqrt(variance + epsilon) + offset`, all broadcastable to x."""
    return tf.nn.batch_normalization(x, mean, variance, offset, scale, epsilon)


def inference_transform(mean, variance, gamma, beta, epsilon):
    """The per-channel `(scale, offset)` with `y = x * scale + offset` at inference."""
    scale = gamma * tf.math.rsqrt(variance + epsilon)
    return scale, beta - mean * scale


def compose_transforms(gamma, beta, r, d):
    """`gamma * (x_hat * r + d) + beta` as one scale and offset on `x_hat`."""
    return gamma * r, gamma * d + beta


def renorm_correction(mean, variance, renorm_mean, renorm_stddev, epsilon, rmax, dmax):
    """Batch Renormalization's `r` and `d` (Ioffe 2017, Algorithm 1), gradient-free.

    `r = clip(sigma_B / sigma, 1/rmax, rmax)`, `d = clip((mu_B - mu) / sigma, -dmax, dmax)`
    with `sigma_B = sqrt(variance + epsilon)`; `sigma` is floored at `sqrt(epsilon)`.
    """
    sigma = tf.maximum(renorm_stddev, tf.sqrt(tf.cast(epsilon, renorm_stddev.dtype)))
    r = tf.sqrt(variance + epsilon) / sigma
    d = (mean - renorm_mean) / sigma
    r = tf.clip_by_value(r, 1.0 / rmax, rmax)
    d = tf.clip_by_value(d, -dmax, dmax)
    return tf.stop_gradient(r), tf.stop_gradient(d)


def renorm_limits(step, rmax, dmax, warmup_steps, rmax_ramp_steps, dmax_ramp_steps):
    """The clipping limits `(rmax_t, dmax_t)` at training step `step` (0-based).

    Plain BN (`rmax_t = 1`, `dmax_t = 0`) for `warmup_steps`, then each limit moves linearly
    to its final value over its ramp (a ramp of 0 steps jumps at once), as Ioffe (2017, §4).
    Works on Python numbers and on tensors.
    """
    def progress(ramp_steps):
        after = step - warmup_steps
        if ramp_steps <= 0:
            return tf.where(after >= 0, 1.0, 0.0) if tf.is_tensor(step) else float(after >= 0)
        fraction = after / ramp_steps
        if tf.is_tensor(step):
            return tf.clip_by_value(tf.cast(fraction, tf.float32), 0.0, 1.0)
        return min(max(fraction, 0.0), 1.0)

    def ramp(start, end, fraction):
        # `start` itself at fraction 0, so an infinite `end` (no clipping) never meets
        # `inf * 0`; past 0 it is `inf` at once.
        value = start + (end - start) * fraction
        if tf.is_tensor(fraction):
            return tf.where(fraction > 0, value if end != float("inf") else end, start)
        return value if fraction > 0 else start

    return (ramp(1.0, rmax, progress(rmax_ramp_steps)),
            ramp(0.0, dmax, progress(dmax_ramp_steps)))


def moving_average(moving, value, momentum):
    """`moving * momentum + value * (1 - momentum)`."""
    return moving * momentum + value * (1.0 - momentum)


def has_elements(count):
    """A scalar boolean: every channel's statistics came from at least one element (a
    fully masked batch has none)."""
    return tf.reduce_all(tf.convert_to_tensor(count) > 0)


def all_finite(*tensors):
    """A scalar boolean: every element of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])
