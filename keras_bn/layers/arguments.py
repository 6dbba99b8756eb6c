"""The layers' arguments, shared by both Keras flavours: plain Python, no Keras.

Their checks (each raises a ValueError that names the layer, `who`, the value and the
fix), their config dicts, and the shape arithmetic of the per-channel vectors.
"""

#: BatchRenormalization's own constructor arguments, as `get_config` writes them.
RENORM_ARGUMENTS = ("rmax", "dmax", "warmup_steps", "rmax_ramp_steps", "dmax_ramp_steps",
                    "renorm_momentum")


def check_batch_norm(who, axis, momentum, epsilon, virtual_batch_size):
    """Validates BatchNormalization's arguments; returns `axis` (a list stays a list)."""
    if isinstance(axis, (list, tuple)):
        axis = list(axis)
    if not (isinstance(axis, int) or (axis and all(isinstance(a, int) for a in axis))):
        raise ValueError(f"{who} got axis={axis!r}; pass an integer or a "
                         "non-empty list of integers, e.g. axis=-1 for channels-last.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{who} got momentum={momentum!r}; it must be in [0, 1) "
                         "(0.99 is the usual value).")
    if not epsilon > 0:
        raise ValueError(f"{who} got epsilon={epsilon!r}; it must be > 0 "
                         "(1e-3 is the default).")
    if virtual_batch_size is not None and (
            not isinstance(virtual_batch_size, int) or virtual_batch_size < 1):
        raise ValueError(f"{who} got virtual_batch_size={virtual_batch_size!r}; "
                         "pass a positive integer that divides the batch size, or None.")
    return axis


def check_renorm(who, rmax, dmax, warmup_steps, rmax_ramp_steps, dmax_ramp_steps,
                 renorm_momentum):
    """Validates BatchRenormalization's own arguments."""
    if not rmax >= 1.0:
        raise ValueError(f"{who} got rmax={rmax!r}; it must be >= 1 (r is clipped "
                         "to [1/rmax, rmax]; the paper uses 3).")
    if not dmax >= 0.0:
        raise ValueError(f"{who} got dmax={dmax!r}; it must be >= 0 (d is clipped "
                         "to [-dmax, dmax]; the paper uses 5).")
    for name, steps in (("warmup_steps", warmup_steps),
                        ("rmax_ramp_steps", rmax_ramp_steps),
                        ("dmax_ramp_steps", dmax_ramp_steps)):
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{who} got {name}={steps!r}; pass a non-negative "
                             "integer number of training steps (0 for none).")
    if not 0.0 <= renorm_momentum < 1.0:
        raise ValueError(f"{who} got renorm_momentum={renorm_momentum!r}; it must "
                         "be in [0, 1) (0.99 is the usual value).")


def channel_axes(who, axis, input_shape):
    """The channel axes of `axis` for an input of `input_shape` (a tuple with None for
    unknown dimensions), as sorted non-negative integers, and their dimensions."""
    rank = None if input_shape is None else len(input_shape)
    if rank is None or rank < 2:
        raise ValueError(
            f"{who} needs inputs of known rank >= 2 (batch, ..., channels); got "
            f"shape {input_shape}. Add a batch dimension, or reshape with "
            "keras.layers.Reshape before this layer.")
    axes = [axis] if isinstance(axis, int) else axis
    if any(not -rank <= a < rank for a in axes):
        raise ValueError(
            f"{who} got axis={axis!r} for inputs of rank {rank} (shape "
            f"{input_shape}); valid axes are {-rank}..{rank - 1}: use -1 for "
            "channels-last or 1 for channels-first.")
    resolved = sorted({a % rank for a in axes})
    if resolved == [0] or len(resolved) != len(axes):
        raise ValueError(
            f"{who} got axis={axis!r}: the axes must be distinct and not the "
            "batch axis 0; use -1 for channels-last or 1 for channels-first.")
    dims = [input_shape[a] for a in resolved]
    if any(d is None for d in dims):
        raise ValueError(
            f"{who}: the channel dimension(s) {resolved} of input shape "
            f"{input_shape} must be known when the layer is built; give the Input a "
            "full shape (e.g. keras.Input((32, 32, 3))).")
    return resolved, dims


def check_batch_divides(who, batch, virtual_batch_size):
    """A static batch size must be a multiple of the virtual batch size."""
    if batch is not None and batch % virtual_batch_size:
        raise ValueError(
            f"{who} got a batch of {batch} with virtual_batch_size={virtual_batch_size}; "
            "the virtual batch size must divide the batch size: pick a batch size that is a "
            f"multiple of {virtual_batch_size} (or drop_remainder=True in tf.data), or "
            "change it.")


def batch_norm_config(layer, initializers, regularizers, constraints):
    """BatchNormalization's own `get_config` entries, objects serialized with the given
    flavour's modules (`tf_keras.initializers` or `keras.initializers`, ...)."""
    return {
        "axis": layer.axis,
        "momentum": layer.momentum,
        "epsilon": layer.epsilon,
        "center": layer.center,
        "scale": layer.scale,
        "beta_initializer": initializers.serialize(layer.beta_initializer),
        "gamma_initializer": initializers.serialize(layer.gamma_initializer),
        "moving_mean_initializer": initializers.serialize(layer.moving_mean_initializer),
        "moving_variance_initializer": initializers.serialize(
            layer.moving_variance_initializer),
        "beta_regularizer": regularizers.serialize(layer.beta_regularizer),
        "gamma_regularizer": regularizers.serialize(layer.gamma_regularizer),
        "beta_constraint": constraints.serialize(layer.beta_constraint),
        "gamma_constraint": constraints.serialize(layer.gamma_constraint),
        "synchronized": layer.synchronized,
        "virtual_batch_size": layer.virtual_batch_size,
    }


def renorm_config(layer):
    """BatchRenormalization's own `get_config` entries."""
    return {name: getattr(layer, name) for name in RENORM_ARGUMENTS}


def broadcast_shape(channel_axes, channels, rank):
    """The shape that makes a per-channel vector (`channels` long on each of
    `channel_axes`) broadcast against a tensor of `rank`; None when it already does
    (one channel axis, the last)."""
    if list(channel_axes) == [rank - 1]:
        return None
    shape = [1] * rank
    for axis, dim in zip(channel_axes, channels):
        shape[axis] = dim
    return shape


def elements_per_channel(shape, channel_axes):
    """How many elements each channel has in a batch of `shape` (None dims unknown),
    or None when that is not known before the batch runs."""
    count = 1
    for i, dim in enumerate(shape):
        if i in channel_axes:
            continue
        if dim is None:
            return None
        count *= dim
    return count


def single_element_warning(who):
    return (f"{who} is training on a batch with one element per channel: its variance is "
            "0, so the output is just `beta` and the moving variance is pulled toward 0. "
            "Use a batch size of at least 2 (or run in inference mode).")
