"""The layers' math: small functions of tensors, for both flavours and every backend.

Each function takes the flavour's `ops` first (`keras.ops`, or its TensorFlow namesakes
in `keras_bn.flavours.tf_ops` for tf-keras), so one formula serves every layer.
TensorFlow's fused kernel and the synchronized statistics are in `fused`.

Conventions used throughout:

* `variance` is the *biased* batch variance (divided by the count); it is what the
  training output is normalized with.
* The *moving* variance stores the Bessel-corrected (unbiased) estimate
  `variance * n / (n - 1)`, as Ioffe & Szegedy (2015, Algorithm 2) and TensorFlow's fused
  kernel do; `unbiased_variance` converts.
"""

INF = float("inf")


def moments(ops, x, axes, mask=None):
    """Batch mean, biased variance and element count per channel (`keepdims=True`).

    Args:
      ops: the flavour's tensor operations.
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
    # The gradient of the variance through the mean is zero, as in the unmasked moments.
    variance = ops.sum(ops.square(x - ops.stop_gradient(mean)) * weights, axes,
                       keepdims=True) / safe
    return mean, variance, count


def unbiased_variance(ops, variance, count):
    """Bessel's correction `variance * n / (n - 1)`; a single element keeps its 0."""
    return variance * count / ops.maximum(count - 1.0, 1.0)


def normalize(ops, x, mean, variance, scale, offset, epsilon):
    """`scale * (x - mean) / sqrt(variance + epsilon) + offset`, all broadcastable to x.

    As `x * inv + (offset - mean * inv)`, the per-channel factors first (as
    tf.nn.batch_normalization and keras.ops.batch_normalization): measured on JAX (CPU,
    8x112x112x32), the literal formula made the jitted training step 2.7-5x slower than
    Keras 3's own layer.
    """
    inv = ops.rsqrt(variance + epsilon) * scale
    return x * inv + (offset - mean * inv)


def inference_transform(ops, mean, variance, gamma, beta, epsilon):
    """The per-channel `(scale, offset)` with `y = x * scale + offset` at inference."""
    scale = gamma * ops.rsqrt(variance + epsilon)
    return scale, beta - mean * scale


def compose_transforms(gamma, beta, r, d):
    """`gamma * (x_hat * r + d) + beta` as one scale and offset on `x_hat`."""
    return gamma * r, gamma * d + beta


def renorm_correction(ops, mean, variance, renorm_mean, renorm_stddev, epsilon, rmax, dmax):
    """Batch Renormalization's `r` and `d` (Ioffe 2017, Algorithm 1), gradient-free.

    `r = clip(sigma_B / sigma, 1/rmax, rmax)`, `d = clip((mu_B - mu) / sigma, -dmax, dmax)`
    with `sigma_B = sqrt(variance + epsilon)`; `sigma` is floored at `sqrt(epsilon)`.
    """
    sigma = ops.maximum(renorm_stddev, epsilon ** 0.5)
    r = ops.clip(ops.sqrt(variance + epsilon) / sigma, 1.0 / rmax, rmax)
    d = ops.clip((mean - renorm_mean) / sigma, -dmax, dmax)
    return ops.stop_gradient(r), ops.stop_gradient(d)


def renorm_limits(ops, step, rmax, dmax, warmup_steps, rmax_ramp_steps, dmax_ramp_steps):
    """The clipping limits `(rmax_t, dmax_t)` at training step `step` (0-based), as
    float32 tensors.

    Plain BN (`rmax_t = 1`, `dmax_t = 0`) for `warmup_steps`, then each limit moves linearly
    to its final value over its ramp (a ramp of 0 steps jumps at once), as Ioffe (2017, §4).
    """
    after = ops.cast(step, "float32") - float(warmup_steps)

    def progress(ramp_steps):
        if ramp_steps <= 0:
            return ops.where(after >= 0, 1.0, 0.0)
        return ops.clip(after / float(ramp_steps), 0.0, 1.0)

    def ramp(start, end, fraction):
        # `start` itself at fraction 0, so an infinite `end` (no clipping) never meets
        # `inf * 0`; past 0 it is `inf` at once.
        value = end if end == INF else start + (end - start) * fraction
        return ops.where(fraction > 0, value, start)

    return (ramp(1.0, rmax, progress(rmax_ramp_steps)),
            ramp(0.0, dmax, progress(dmax_ramp_steps)))


def moving_average(moving, value, momentum):
    """`moving * momentum + value * (1 - momentum)`."""
    return moving * momentum + value * (1.0 - momentum)


def all_finite(ops, *tensors):
    """A scalar boolean: every element of every tensor is finite."""
    result = None
    for t in tensors:
        finite = ops.all(ops.isfinite(t))
        result = finite if result is None else ops.logical_and(result, finite)
    return result


def has_elements(ops, count):
    """A scalar boolean: every channel's statistics came from at least one element (a
    fully masked batch has none)."""
    return ops.all(ops.greater(count, 0))
