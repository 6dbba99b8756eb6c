"""`keras_bn.BatchNormalization`."""

import warnings

import tensorflow as tf

from keras_bn import _keras
from keras_bn.layers import arguments, statistics as stats


@_keras.register_serializable
class BatchNormalization(_keras.Layer):
    """Batch normalization (Ioffe & Szegedy, 2015), exact and on TensorFlow's fused kernel.

    In training (`training=True`) the layer normalizes each channel with the statistics of
    the current batch and updates the moving statistics:

    ```
    y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta
    moving_mean     = moving_mean * momentum + mean_B * (1 - momentum)
    moving_variance = moving_variance * momentum + var_B * n / (n - 1) * (1 - momentum)
    ```

    where `mean_B`, `var_B` are the mean and (biased) variance over every axis except the
    channel `axis`, and `n` is the number of elements each channel has in the batch.
    In inference (`training=False`) it uses the moving statistics:

    ```
    y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta
    ```

    **The moving variance is Bessel-corrected (unbiased) on every code path**, as in the
    paper's Algorithm 2, PyTorch, and tf-keras's fused path (tf-keras's non-fused path
    stores the biased variance instead, so its 2-D and 3-D layers differ from its 4-D ones
    by `n / (n - 1)`; this layer does not).

    Where the input allows (one channel axis, float16/bfloat16/float32, no mask, no
    virtual batch, not synchronized, `epsilon >= 1.001e-5`) training runs on TensorFlow's
    fused batch-norm kernel, for any rank and channel position.

    **A batch whose statistics are not finite does not touch the moving statistics**: the
    update is skipped and counted in the non-trainable weight `skipped_updates`, so one
    bad batch never destroys what training accumulated.

    **`trainable=False` means inference mode**: a frozen layer uses its moving statistics
    and does not update them, whatever `training` says (the tf-keras 2 behaviour, which
    fine-tuning relies on).

    Args:
      axis: Integer or list of integers, the channel axis (or axes) that keeps its own
        statistics. `-1` (default) for channels-last data, `1` for channels-first.
      momentum: Momentum of the moving averages, in `[0, 1)`.
      epsilon: Small float added to the variance to avoid dividing by zero.
      center: If True, add the learned offset `beta`; if False, `beta` is not used.
      scale: If True, multiply by the learned `gamma`; if False, `gamma` is not used.
      beta_initializer: Initializer for `beta`.
      gamma_initializer: Initializer for `gamma`.
      moving_mean_initializer: Initializer for the moving mean.
      moving_variance_initializer: Initializer for the moving variance.
      beta_regularizer: Optional regularizer for `beta`.
      gamma_regularizer: Optional regularizer for `gamma`.
      beta_constraint: Optional constraint for `beta`.
      gamma_constraint: Optional constraint for `gamma`.
      synchronized: If True, the batch statistics in training are those of the global
        batch across all replicas of the active `tf.distribute` strategy (an all-reduce
        of sums, squared sums and counts). Without a strategy it equals one device.
      virtual_batch_size: Optional integer ("Ghost Batch Norm", Hoffer et al. 2017):
        training statistics are taken over groups of this many examples; it must divide
        the batch size. Same grouping as tf-keras.
      **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
      inputs: Tensor of rank >= 2; integer inputs are cast to the compute dtype (as
        tf-keras does).
      training: Python boolean or boolean tensor. `None` follows the Keras learning phase.
      mask: Optional binary tensor broadcastable to `inputs` once trailing dimensions are
        added (e.g. `(batch, time)` for `(batch, time, channels)`); masked-out positions do
        not count in the batch statistics.

    Returns:
      A tensor of the shape of `inputs`, in its dtype (the compute dtype for integers).

    Raises:
      ValueError: bad configuration (momentum outside `[0, 1)`, epsilon <= 0, a bad axis or
        virtual batch size), or an input the layer cannot normalize (rank < 2, unknown
        channel dimension). Each message names the layer and the fix.

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
        axis = arguments.check_batch_norm(self._who, axis, momentum, epsilon,
                                          virtual_batch_size)
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = _keras.initializers.get(beta_initializer)
        self.gamma_initializer = _keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = _keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = _keras.initializers.get(
            moving_variance_initializer)
        self.beta_regularizer = _keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = _keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = _keras.constraints.get(beta_constraint)
        self.gamma_constraint = _keras.constraints.get(gamma_constraint)
        self.synchronized = synchronized
        self.virtual_batch_size = virtual_batch_size
        #: Inference mode while staying trainable (gamma and beta still learn); set by
        #: `keras_bn.freeze(model, train_gamma_beta=True)`. Not saved in the config.
        self.frozen = False

    @property
    def _who(self):
        return f"{type(self).__name__} layer '{self.name}'"

    @property
    def _param_dtype(self):
        """float32 under a float16/bfloat16 policy, as tf-keras."""
        if self.dtype in ("float16", "bfloat16", None):
            return tf.float32
        return tf.as_dtype(self.dtype)

    @property
    def channel_axes(self):
        """The channel axes as non-negative integers (after `build`)."""
        return self._axes

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self._axes, dims = arguments.channel_axes(
            self._who, self.axis, None if input_shape.rank is None else tuple(input_shape))
        rank = input_shape.rank
        self._param_shape = tuple(dims)
        self.input_spec = _keras.InputSpec(ndim=rank, axes=dict(zip(self._axes, dims)))
        dtype = self._param_dtype
        self.gamma = (_keras.add_parameter(self, "gamma", dims, dtype,
                                           self.gamma_initializer, self.gamma_regularizer,
                                           self.gamma_constraint) if self.scale else None)
        self.beta = (_keras.add_parameter(self, "beta", dims, dtype, self.beta_initializer,
                                          self.beta_regularizer, self.beta_constraint)
                     if self.center else None)
        self.moving_mean = _keras.add_statistic(self, "moving_mean", dims, dtype,
                                                self.moving_mean_initializer)
        self.moving_variance = _keras.add_statistic(self, "moving_variance", dims, dtype,
                                                    self.moving_variance_initializer)
        self._build_extra_weights(dims, dtype)
        self.skipped_updates = _keras.add_counter(self, "skipped_updates")
        self.built = True

    def _build_extra_weights(self, dims, dtype):
        """Hook for subclasses: weights created after the moving statistics."""

    # -- the two branches ---------------------------------------------------------------

    def call(self, inputs, training=None, mask=None):
        if not inputs.dtype.is_floating:  # as tf-keras: integers become the compute dtype
            inputs = tf.cast(inputs, self.compute_dtype)
        training = False if self.frozen else _keras.training_flag(self, training)
        if training is False:
            return self._inference(inputs)
        if training is True:
            return self._training(inputs, mask)
        if not tf.compat.v1.executing_eagerly_outside_functions():
            return self._graph_mode_training(inputs, mask, training)
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: self._training(inputs, mask), lambda: self._inference(inputs))

    def _inference(self, x):
        gamma, beta = self._gamma_beta()
        scale, offset = stats.inference_transform(
            self.moving_mean, self.moving_variance, gamma, beta, self.epsilon)
        rank = x.shape.rank
        y = (tf.cast(x, scale.dtype) * self._broadcast(scale, rank)
             + self._broadcast(offset, rank))
        return tf.cast(y, x.dtype)

    def _training(self, x, mask, training=True):
        if training is True:
            self._warn_if_single_element(x)
        gamma, beta = self._gamma_beta()
        step = self._fused_step if self._can_fuse(x, mask) else self._generic_step
        y, mean, variance, count = step(x, mask, gamma, beta)
        self._update_statistics(mean, variance, count, training)
        return y

    def _graph_mode_training(self, x, mask, training):
        """TF1 graph mode with the learning phase as a tensor (v1 `fit`, sessions,
        estimators). The updates must be ops of the outer graph, not of a `tf.cond`
        branch, for `layer.updates` to hold them (as tf-keras builds them): both branches
        are built and the updates apply only where `training` is true."""
        y = self._training(x, mask, training)
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: y, lambda: self._inference(x))

    def _fused_step(self, x, mask, gamma, beta):
        """Training output and batch statistics on TensorFlow's fused kernel."""
        del mask  # `_can_fuse` admits no mask
        if self._transform_needs_statistics:
            return stats.fused_batch_norm_with_transform(
                x, lambda m, v: self._training_transform(gamma, beta, m, v), gamma.dtype,
                self.epsilon, self._axes[0])
        return stats.fused_batch_norm(x, gamma, beta, self.epsilon, self._axes[0])

    def _generic_step(self, x, mask, gamma, beta):
        """Training output and batch statistics with masks, ghost batches, several axes,
        synchronized statistics, and in float32 for 16-bit inputs."""
        xc = tf.cast(x, gamma.dtype)
        ghost = bool(self.virtual_batch_size)
        if ghost:
            xc, mask = self._split_virtual_batches(xc, mask)
        channel_axes = [a + ghost for a in self._axes]
        # With ghost batches axis 1 indexes the groups: each keeps its own statistics.
        reduction = [i for i in range(xc.shape.rank)
                     if i not in channel_axes and not (ghost and i == 1)]
        if mask is not None:
            mask = tf.cast(mask, xc.dtype)
            while mask.shape.rank < xc.shape.rank:
                mask = tf.expand_dims(mask, -1)
        mean_b, variance_b, count = stats.moments(xc, reduction, mask, self.synchronized)
        mean, variance = mean_b, variance_b
        if ghost:
            # The moving statistics take the mean over the ghost batches, as tf-keras.
            mean, variance, count = (tf.reduce_mean(t, axis=1, keepdims=True)
                                     if t.shape.rank else t for t in (mean, variance, count))
        mean, variance = (tf.reshape(t, self._param_shape) for t in (mean, variance))
        if count.shape.rank:
            count = tf.reshape(count, self._param_shape)
        scale, offset = self._training_transform(gamma, beta, mean, variance)
        rank = xc.shape.rank
        y = stats.normalize(xc, mean_b, variance_b, self._broadcast(scale, rank, ghost),
                            self._broadcast(offset, rank, ghost), self.epsilon)
        if ghost:
            y = tf.reshape(y, tf.shape(x))
        y.set_shape(x.shape)
        return tf.cast(y, x.dtype), mean, variance, count

    # -- hooks that BatchRenormalization overrides --------------------------------------

    #: Whether `_training_transform` reads the batch statistics (BRN's r and d do).
    _transform_needs_statistics = False

    def _training_transform(self, gamma, beta, mean, variance):
        """The per-channel scale and offset applied to `x_hat` in training."""
        del mean, variance
        return gamma, beta

    def _update_statistics(self, mean, variance, count, training=True):
        """Moving averages of the batch statistics, skipped (and counted) when they are
        not finite or the batch had no element (fully masked); nothing changes where
        `training` (a bool or a boolean tensor) is false. Returns whether they apply."""
        valid = tf.logical_and(stats.all_finite(mean, variance), stats.has_elements(count))
        apply = tf.logical_and(valid, training)
        self._assign_if(apply, self.moving_mean,
                        stats.moving_average(self.moving_mean, mean, self.momentum))
        self._assign_if(apply, self.moving_variance, stats.moving_average(
            self.moving_variance, stats.unbiased_variance(variance, count), self.momentum))
        skipped = tf.logical_and(tf.logical_not(valid), training)
        self.add_update(self.skipped_updates.assign_add(tf.cast(skipped, tf.int64)))
        return apply

    def _assign_if(self, condition, variable, value):
        """Assigns `value` where `condition`; registered as an update so that TF1 graph
        mode (`layer.updates`, run by v1 `fit` and sessions) applies it too. In eager
        execution and in `tf.function` the assignment itself runs, as in tf-keras."""
        self.add_update(variable.assign(
            tf.where(condition, tf.cast(value, variable.dtype), variable)))

    # -- weights as tf-keras's layer has them ---------------------------------------------

    def _without_counter(self, variables):
        return [v for v in variables if v is not getattr(self, "skipped_updates", None)]

    @property
    def non_trainable_weights(self):
        """The moving statistics, as tf-keras's BatchNormalization lists them.

        `skipped_updates` is a variable of the layer (saved in `.keras` files and TF
        checkpoints) but not one of its Keras weights, so `get_weights`/`set_weights`
        lists, `model.set_weights`, and `.h5` weight files are interchangeable with
        tf-keras's layer in both directions.
        """
        return self._without_counter(super().non_trainable_weights)

    def load_own_variables(self, store):
        """As tf-keras's; also reads the variables a tf-keras BatchNormalization saved
        (`.keras` files and `.weights.h5`): all but `skipped_updates`, in order."""
        variables = self._without_counter(self._trainable_weights + self._non_trainable_weights)
        if len(store.keys()) == len(variables):
            for i, variable in enumerate(variables):
                variable.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    # -- helpers ------------------------------------------------------------------------

    def _gamma_beta(self):
        dtype = self._param_dtype
        gamma = self.gamma if self.scale else tf.ones(self._param_shape, dtype)
        beta = self.beta if self.center else tf.zeros(self._param_shape, dtype)
        return tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)

    def _can_fuse(self, x, mask):
        return (len(self._axes) == 1 and mask is None and not self.virtual_batch_size
                and not self.synchronized and x.dtype in stats.FUSED_DTYPES
                and self.epsilon >= stats.FUSED_MIN_EPSILON
                and stats.fused_is_faster(x.shape, self._axes[0]))

    def _broadcast(self, v, rank, ghost=False):
        """Reshapes a per-channel vector so it broadcasts against an input of `rank`."""
        shape = arguments.broadcast_shape([a + ghost for a in self._axes], self._param_shape,
                                          rank)
        return v if shape is None else tf.reshape(v, shape)

    def _split_virtual_batches(self, x, mask):
        """`(B, ...)` -> `(virtual_batch_size, B / virtual_batch_size, ...)`, as tf-keras."""
        vbs = self.virtual_batch_size
        batch = x.shape[0]
        arguments.check_batch_divides(self._who, batch, vbs)
        if batch is None:
            tf.debugging.assert_equal(
                tf.shape(x)[0] % vbs, 0,
                message=f"{self._who}: virtual_batch_size={vbs} must divide the batch size")
        x = tf.reshape(x, tf.concat([[vbs, -1], tf.shape(x)[1:]], 0))
        if mask is not None:
            mask = tf.reshape(mask, tf.concat([[vbs, -1], tf.shape(mask)[1:]], 0))
        return x, mask

    def _warn_if_single_element(self, x):
        if arguments.elements_per_channel(tuple(x.shape), self._axes) == 1:
            warnings.warn(arguments.single_element_warning(self._who), stacklevel=3)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = arguments.batch_norm_config(self, _keras.initializers, _keras.regularizers,
                                             _keras.constraints)
        return {**super().get_config(), **config}
