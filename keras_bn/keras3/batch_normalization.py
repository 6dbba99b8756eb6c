"""`keras_bn.keras3.BatchNormalization`: the Keras 3 twin of `keras_bn.BatchNormalization`."""

import warnings

from keras_bn import _keras3 as K
from keras_bn.keras3 import statistics as stats
from keras_bn.layers import arguments

ops = K.ops


@K.register_serializable
class BatchNormalization(K.Layer):
    """Batch normalization (Ioffe & Szegedy, 2015) for Keras 3, on every backend.

    The same layer as `keras_bn.BatchNormalization` (tf-keras), written with `keras.ops`
    so it runs on the TensorFlow and JAX backends. In training (`training=True`) each
    channel is normalized with the statistics of the batch and the moving statistics are
    updated:

    ```
    y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta
    moving_mean     = moving_mean * momentum + mean_B * (1 - momentum)
    moving_variance = moving_variance * momentum + var_B * n / (n - 1) * (1 - momentum)
    ```

    with `n` the number of elements each channel has in the batch. In inference
    (`training=False`):

    ```
    y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta
    ```

    Differences from `keras.layers.BatchNormalization`, on purpose: **the moving variance
    is Bessel-corrected** (the paper's Algorithm 2, PyTorch, TensorFlow's fused kernel;
    Keras 3 stores the biased batch variance); **a batch whose statistics are not finite,
    or that is fully masked, does not touch the moving statistics** (counted in the
    weight `skipped_updates`); `axis` may be a list; ghost batches (`virtual_batch_size`).
    Forward pass and gradients are Keras 3's to float32 rounding.

    On the TensorFlow backend training runs on TensorFlow's fused batch-norm kernel where
    the input allows (one channel axis, float16/bfloat16/float32, no mask, no virtual
    batch, not synchronized, `epsilon >= 1.001e-5`), as the tf-keras layer does.

    **`trainable=False` means inference mode**: a frozen layer uses its moving statistics
    and does not update them, whatever `training` says (as Keras 3's layer).

    Args:
      axis: Integer or list of integers, the channel axis (or axes). `-1` (default) for
        channels-last data, `1` for channels-first.
      momentum: Momentum of the moving averages, in `[0, 1)`.
      epsilon: Small float added to the variance to avoid dividing by zero.
      center: If True, add the learned offset `beta`.
      scale: If True, multiply by the learned `gamma`.
      beta_initializer: Initializer for `beta`.
      gamma_initializer: Initializer for `gamma`.
      moving_mean_initializer: Initializer for the moving mean.
      moving_variance_initializer: Initializer for the moving variance.
      beta_regularizer: Optional regularizer for `beta`.
      gamma_regularizer: Optional regularizer for `gamma`.
      beta_constraint: Optional constraint for `beta`.
      gamma_constraint: Optional constraint for `gamma`.
      synchronized: If True, the batch statistics in training are those of the global
        batch across the replicas of the active `tf.distribute` strategy. TensorFlow
        backend only: on any other backend the constructor raises (JAX shards with
        `jax.sharding`, whose global-batch reductions need no special layer).
      virtual_batch_size: Optional integer ("Ghost Batch Norm", Hoffer et al. 2017):
        training statistics are taken over groups of this many examples; it must divide
        the batch size.
      **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
      inputs: Tensor of rank >= 2; integer inputs are cast to the compute dtype.
      training: Python boolean: normalize with the batch statistics and update the moving
        statistics (True) or use the moving statistics (False, None).
      mask: Optional binary tensor broadcastable to `inputs` once trailing dimensions are
        added (e.g. `(batch, time)`); masked-out positions do not count in the batch
        statistics.

    Returns:
      A tensor of the shape of `inputs`, in the layer's compute dtype.

    Raises:
      ValueError: bad configuration (momentum outside `[0, 1)`, epsilon <= 0, a bad axis
        or virtual batch size, `synchronized=True` off the TensorFlow backend), or an
        input the layer cannot normalize. Each message names the layer and the fix.

    Reference:
      - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, virtual_batch_size=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.axis = arguments.check_batch_norm(self._who, axis, momentum, epsilon,
                                               virtual_batch_size)
        if synchronized and K.backend() != "tensorflow":
            raise ValueError(
                f"{self._who} got synchronized=True on the {K.backend()} backend; "
                "synchronized statistics use tf.distribute and need KERAS_BACKEND="
                "tensorflow. On JAX, shard the batch with jax.sharding (its reductions "
                "are global already) and pass synchronized=False.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = K.initializers.get(beta_initializer)
        self.gamma_initializer = K.initializers.get(gamma_initializer)
        self.moving_mean_initializer = K.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = K.initializers.get(moving_variance_initializer)
        self.beta_regularizer = K.regularizers.get(beta_regularizer)
        self.gamma_regularizer = K.regularizers.get(gamma_regularizer)
        self.beta_constraint = K.constraints.get(beta_constraint)
        self.gamma_constraint = K.constraints.get(gamma_constraint)
        self.synchronized = synchronized
        self.virtual_batch_size = virtual_batch_size
        #: Inference mode while staying trainable; set by `keras_bn.freeze(model,
        #: train_gamma_beta=True)`. Not saved in the config.
        self.frozen = False

    @property
    def _who(self):
        return f"{type(self).__name__} layer '{self.name}'"

    @property
    def channel_axes(self):
        """The channel axes as non-negative integers (after `build`)."""
        return self._axes

    def build(self, input_shape):
        shape = None if input_shape is None else tuple(input_shape)
        self._axes, dims = arguments.channel_axes(self._who, self.axis, shape)
        self._param_shape = tuple(dims)
        self.input_spec = K.InputSpec(ndim=len(shape), axes=dict(zip(self._axes, dims)))
        dtype = self.variable_dtype  # float32 under a float16/bfloat16 policy
        self.gamma = (K.add_parameter(self, "gamma", dims, dtype, self.gamma_initializer,
                                      self.gamma_regularizer, self.gamma_constraint)
                      if self.scale else None)
        self.beta = (K.add_parameter(self, "beta", dims, dtype, self.beta_initializer,
                                     self.beta_regularizer, self.beta_constraint)
                     if self.center else None)
        self.moving_mean = K.add_statistic(self, "moving_mean", dims, dtype,
                                           self.moving_mean_initializer)
        self.moving_variance = K.add_statistic(self, "moving_variance", dims, dtype,
                                               self.moving_variance_initializer)
        self._build_extra_weights(dims, dtype)
        self.skipped_updates = K.add_counter(self, "skipped_updates")

    def _build_extra_weights(self, dims, dtype):
        """Hook for subclasses: weights created after the moving statistics."""

    # -- the two branches ---------------------------------------------------------------

    def call(self, inputs, training=None, mask=None):
        if not stats.is_float(inputs.dtype):  # integers become the compute dtype
            inputs = ops.cast(inputs, self.compute_dtype)
        if training and self.trainable and not self.frozen:
            return self._training(inputs, mask)
        return self._inference(inputs)

    def _inference(self, x):
        gamma, beta = self._gamma_beta()
        scale, offset = stats.inference_transform(
            ops.convert_to_tensor(self.moving_mean),
            ops.convert_to_tensor(self.moving_variance), gamma, beta, self.epsilon)
        rank = len(x.shape)
        y = (ops.cast(x, scale.dtype) * self._broadcast(scale, rank)
             + self._broadcast(offset, rank))
        return ops.cast(y, self.compute_dtype)

    def _training(self, x, mask):
        self._warn_if_single_element(x)
        gamma, beta = self._gamma_beta()
        step = self._fused_step if self._can_fuse(x, mask) else self._generic_step
        y, mean, variance, count = step(x, mask, gamma, beta)
        self._update_statistics(mean, variance, count)
        return ops.cast(y, self.compute_dtype)

    def _fused_step(self, x, mask, gamma, beta):
        """Training output and statistics on TensorFlow's fused kernel (the tf-keras
        layer's own functions: this path exists on the TensorFlow backend only)."""
        from keras_bn.layers import statistics as fused

        del mask  # `_can_fuse` admits no mask
        if self._transform_needs_statistics:
            return fused.fused_batch_norm_with_transform(
                x, lambda m, v: self._training_transform(gamma, beta, m, v), gamma.dtype,
                self.epsilon, self._axes[0])
        return fused.fused_batch_norm(x, gamma, beta, self.epsilon, self._axes[0])

    def _generic_step(self, x, mask, gamma, beta):
        """Training output and statistics in `keras.ops`: any backend, masks, ghost
        batches, several axes, synchronized statistics, float32 for 16-bit inputs."""
        xc = ops.cast(x, gamma.dtype)
        ghost = bool(self.virtual_batch_size)
        if ghost:
            xc, mask = self._split_virtual_batches(xc, mask)
        rank = len(xc.shape)
        channel_axes = [a + ghost for a in self._axes]
        # With ghost batches axis 1 indexes the groups: each keeps its own statistics.
        reduction = [i for i in range(rank) if i not in channel_axes and not (ghost and i == 1)]
        if mask is not None:
            mask = ops.cast(mask, xc.dtype)
            while len(mask.shape) < rank:
                mask = ops.expand_dims(mask, -1)
        mean_b, variance_b, count = self._moments(xc, reduction, mask)
        mean, variance = mean_b, variance_b
        if ghost:  # the moving statistics take the mean over the ghost batches
            mean, variance, count = (ops.mean(t, axis=1, keepdims=True) if len(t.shape)
                                     else t for t in (mean, variance, count))
        mean, variance = (ops.reshape(t, self._param_shape) for t in (mean, variance))
        if len(count.shape):
            count = ops.reshape(count, self._param_shape)
        scale, offset = self._training_transform(gamma, beta, mean, variance)
        # `x * inv + (offset - mean * inv)`, per-channel factors first (as
        # tf.nn.batch_normalization and keras.ops.batch_normalization): measured on JAX
        # (CPU, 8x112x112x32), `(x - mean) * rsqrt(var + eps) * scale + offset` made the
        # jitted training step 2.7-5x slower than Keras 3's own layer.
        inv = ops.rsqrt(variance_b + self.epsilon) * self._broadcast(scale, rank, ghost)
        y = xc * inv + (self._broadcast(offset, rank, ghost) - mean_b * inv)
        if ghost:
            y = ops.reshape(y, ops.shape(x))
        return y, mean, variance, count

    def _moments(self, x, axes, mask):
        if self.synchronized:  # TensorFlow backend (checked in __init__): tf.distribute
            from keras_bn.layers import statistics as tf_statistics

            return tf_statistics.moments(x, axes, mask, synchronized=True)
        return stats.moments(x, axes, mask)

    # -- hooks that BatchRenormalization overrides --------------------------------------

    _transform_needs_statistics = False

    def _training_transform(self, gamma, beta, mean, variance):
        """The per-channel scale and offset applied to `x_hat` in training."""
        del mean, variance
        return gamma, beta

    def _update_statistics(self, mean, variance, count):
        """Moving averages of the batch statistics, skipped (and counted) when they are
        not finite or the batch had no element. Returns whether they apply."""
        valid = ops.logical_and(stats.all_finite(mean, variance), stats.has_elements(count))
        self._assign_if(valid, self.moving_mean,
                        stats.moving_average(self.moving_mean, mean, self.momentum))
        self._assign_if(valid, self.moving_variance, stats.moving_average(
            self.moving_variance, stats.unbiased_variance(variance, count), self.momentum))
        self.skipped_updates.assign_add(ops.cast(ops.logical_not(valid), "int32"))
        return valid

    @staticmethod
    def _assign_if(condition, variable, value):
        current = ops.convert_to_tensor(variable)
        variable.assign(ops.where(condition, ops.cast(value, variable.dtype), current))

    # -- helpers ------------------------------------------------------------------------

    def _gamma_beta(self):
        dtype = self.variable_dtype
        gamma = self.gamma if self.scale else ops.ones(self._param_shape, dtype)
        beta = self.beta if self.center else ops.zeros(self._param_shape, dtype)
        return ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta)

    def _can_fuse(self, x, mask):
        if K.backend() != "tensorflow":
            return False
        from keras_bn.layers import statistics as fused

        dtype = K.keras.backend.standardize_dtype(x.dtype)
        return (len(self._axes) == 1 and mask is None and not self.virtual_batch_size
                and not self.synchronized and dtype in ("float16", "bfloat16", "float32")
                and self.epsilon >= fused.FUSED_MIN_EPSILON
                and fused.fused_is_faster(tuple(x.shape), self._axes[0]))

    def _broadcast(self, v, rank, ghost=False):
        """Reshapes a per-channel vector so it broadcasts against an input of `rank`."""
        shape = arguments.broadcast_shape([a + ghost for a in self._axes], self._param_shape,
                                          rank)
        return v if shape is None else ops.reshape(v, shape)

    def _split_virtual_batches(self, x, mask):
        """`(B, ...)` -> `(virtual_batch_size, B / virtual_batch_size, ...)`."""
        vbs = self.virtual_batch_size
        arguments.check_batch_divides(self._who, x.shape[0], vbs)
        rest = tuple(x.shape[1:])
        x = ops.reshape(x, (vbs, -1) + rest)
        if mask is not None:
            mask = ops.reshape(mask, (vbs, -1) + tuple(mask.shape[1:]))
        return x, mask

    def _warn_if_single_element(self, x):
        if arguments.elements_per_channel(tuple(x.shape), self._axes) == 1:
            warnings.warn(arguments.single_element_warning(self._who), stacklevel=3)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = arguments.batch_norm_config(self, K.initializers, K.regularizers,
                                             K.constraints)
        return {**super().get_config(), **config}
