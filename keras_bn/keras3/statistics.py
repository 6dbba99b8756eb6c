"""The layers' math in `keras.ops`, for every Keras 3 backend: small functions, no layers.

The same formulas and conventions as `keras_bn.layers.statistics` (biased batch variance
for the output, Bessel-corrected moving variance; the paper's r, d and schedule), which
holds the TensorFlow versions and the fused kernel that the Keras 3 layers also use on
the TensorFlow backend. The two pure-arithmetic formulas are imported from there.
"""

from keras_bn._keras3 import keras, ops
from keras_bn.layers.statistics import compose_transforms, moving_average  # noqa: F401

INF = float("inf")


def moments(x, axes, mask=None):
    """Batch mean, biased variance and element count per channel (`keepdims=True`).

    Args:
      x: float tensor.
      axes: the axes statistics are taken over.
      mask: optional weights of x's rank, broadcastable to it (1 counts, 0 is ignored).

    Returns:
      `(mean, variance, count)`; `count` broadcastable to `mean`, in x's dtype.
    """
    if mask is None:
        mean, variance = ops.moments(x, axes, keepdims=True)
        count = ops.cast(ops.size(x), x.dtype) / ops.cast(ops.size(mean), x.dtype)
        return mean, variance, count
    weights = ops.broadcast_to(ops.cast(mask, x.dtype), ops.shape(x))
    count = ops.sum(weights, axes, keepdims=True)
    safe = ops.maximum(count, 1.0)
    mean = ops.sum(x * weights, axes, keepdims=True) / safe
    # The gradient of the variance through the mean is zero, as in ops.moments.
    variance = ops.sum(ops.square(x - ops.stop_gradient(mean)) * weights, axes,
                       keepdims=True) / safe
    return mean, variance, count


def unbiased_variance(variance, count):
    """Bessel's correction `variance * n / (n - 1)`; a single element keeps its 0."""
    return variance * count / ops.maximum(count - 1.0, 1.0)


def inference_transform(mean, variance, gamma, beta, epsilon):
    """The per-channel `(scale, offset)` with `y = x * scale + offset` at inference."""
    scale = gamma * ops.rsqrt(variance + epsilon)
    return scale, beta - mean * scale


def renorm_correction(mean, variance, renorm_mean, renorm_stddev, epsilon, rmax, dmax):
    """Batch Renormalization's gradient-free `r` and `d` (Ioffe 2017, Algorithm 1);
    `sigma` is floored at `sqrt(epsilon)`, as in the TensorFlow version."""
    sigma = ops.maximum(renorm_stddev, epsilon ** 0.5)
    r = ops.clip(ops.sqrt(variance + epsilon) / sigma, 1.0 / rmax, rmax)
    d = ops.clip((mean - renorm_mean) / sigma, -dmax, dmax)
    return ops.stop_gradient(r), ops.stop_gradient(d)


def renorm_limits(step, rmax, dmax, warmup_steps, rmax_ramp_steps, dmax_ramp_steps):
    """The clipping limits `(rmax_t, dmax_t)` at training step `step` (a tensor): plain
    BN for `warmup_steps`, then linear ramps to `rmax`, `dmax` (Ioffe 2017, section 4)."""
    after = ops.cast(step, "float32") - float(warmup_steps)

    def progress(ramp_steps):
        if ramp_steps <= 0:
            return ops.where(after >= 0, 1.0, 0.0)
        return ops.clip(after / float(ramp_steps), 0.0, 1.0)

    def ramp(start, end, fraction):
        # `start` itself at fraction 0, so an infinite `end` never meets `inf * 0`.
        value = end if end == INF else start + (end - start) * fraction
        return ops.where(fraction > 0, value, start)

    return (ramp(1.0, rmax, progress(rmax_ramp_steps)),
            ramp(0.0, dmax, progress(dmax_ramp_steps)))


def all_finite(*tensors):
    """A scalar boolean: every element of every tensor is finite."""
    finite = [ops.all(ops.isfinite(t)) for t in tensors]
    result = finite[0]
    for f in finite[1:]:
        result = ops.logical_and(result, f)
    return result


def has_elements(count):
    """A scalar boolean: every channel's statistics came from at least one element."""
    return ops.all(ops.greater(count, 0))


def is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)
