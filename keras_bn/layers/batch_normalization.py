"""BatchNormalization, written once for both Keras flavours (`keras_bn.layers.flavoured`
puts it on each flavour's Layer class)."""

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

from keras_bn.flavour import Flavour, LayerCore, Tensor
from keras_bn.layers import arguments, statistics as stats


class BatchNormalization(LayerCore):
    """Batch normalization (Ioffe & Szegedy, 2015), exact and on TensorFlow's fused kernel.

    `keras_bn.BatchNormalization` (tf-keras) and `keras_bn.keras3.BatchNormalization`
    (Keras 3, TensorFlow and JAX backends) are this layer on each flavour's base class.
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
    paper's Algorithm 2, PyTorch, and TensorFlow's fused kernel. (tf-keras's non-fused
    path stores the biased variance, so its 2-D and 3-D layers differ from its 4-D ones by
    `n / (n - 1)`; Keras 3's layer stores the biased variance everywhere.) Forward pass
    and gradients are tf-keras's and Keras 3's to float32 rounding.

    On TensorFlow (tf-keras, or Keras 3's TensorFlow backend), where the input allows (one
    channel axis, float16/bfloat16/float32, no mask, no virtual batch, not synchronized,
    `epsilon >= 1.001e-5`), training runs on TensorFlow's fused batch-norm kernel, for any
    rank and channel position; elsewhere on the flavour's tensor operations.

    **A batch whose statistics are not finite, or that is fully masked, does not touch the
    moving statistics**: the update is skipped and counted in the variable
    `skipped_updates`, so one bad batch never destroys what training accumulated. (On
    tf-keras it is not one of the layer's Keras weights, so weight lists and `.h5` files
    are interchangeable with tf-keras's layer.)

    **`trainable=False` means inference mode**: a frozen layer uses its moving statistics
    and does not update them, whatever `training` says (the tf-keras 2 and Keras 3
    behaviour, which fine-tuning relies on).

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
        TensorFlow only: on another Keras 3 backend the constructor raises (JAX shards
        with `jax.sharding`, whose global-batch reductions need no special layer).
      virtual_batch_size: Optional integer ("Ghost Batch Norm", Hoffer et al. 2017):
        training statistics are taken over groups of this many examples; it must divide
        the batch size. Same grouping as tf-keras.
      **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
      inputs: Tensor of rank >= 2; integer inputs are cast to the compute dtype.
      training: Python boolean (tf-keras also takes a boolean tensor; `None` follows its
        learning phase). On Keras 3 `None` means inference.
      mask: Optional binary tensor broadcastable to `inputs` once trailing dimensions are
        added (e.g. `(batch, time)` for `(batch, time, channels)`); masked-out positions do
        not count in the batch statistics.

    Returns:
      A tensor of the shape of `inputs`, in its dtype on tf-keras (the compute dtype for
      integers), in the compute dtype on Keras 3.

    Raises:
      ValueError: bad configuration (momentum outside `[0, 1)`, epsilon <= 0, a bad axis or
        virtual batch size, `synchronized=True` off TensorFlow), or an input the layer
        cannot normalize (rank < 2, unknown channel dimension). Each message names the
        layer and the fix.

    Reference:
      - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """

    #: The flavour module (`keras_bn.flavours.tf_keras` or `.keras3`): its base class,
    #: weight factories and tensor `ops`. Set by each flavour's class.
    _flavour: ClassVar[Flavour]

    def __init__(self, axis: int | Sequence[int] = -1, momentum: float = 0.99,
                 epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 moving_mean_initializer: Any = "zeros",
                 moving_variance_initializer: Any = "ones", beta_regularizer: Any = None,
                 gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, synchronized: bool = False,
                 virtual_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        flavour = self._flavour
        self.supports_masking = True
        self.axis = arguments.check_batch_norm(self._who, axis, momentum, epsilon,
                                               virtual_batch_size)
        if synchronized and flavour.backend() != "tensorflow":
            raise ValueError(
                f"{self._who} got synchronized=True on the {flavour.backend()} backend; "
                "synchronized statistics use tf.distribute and need KERAS_BACKEND="
                "tensorflow. On JAX, shard the batch with jax.sharding (its reductions "
                "are global already) and pass synchronized=False.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = flavour.initializers.get(beta_initializer)
        self.gamma_initializer = flavour.initializers.get(gamma_initializer)
        self.moving_mean_initializer = flavour.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = flavour.initializers.get(
            moving_variance_initializer)
        self.beta_regularizer = flavour.regularizers.get(beta_regularizer)
        self.gamma_regularizer = flavour.regularizers.get(gamma_regularizer)
        self.beta_constraint = flavour.constraints.get(beta_constraint)
        self.gamma_constraint = flavour.constraints.get(gamma_constraint)
        self.synchronized = synchronized
        self.virtual_batch_size = virtual_batch_size
        #: Inference mode while staying trainable (gamma and beta still learn); set by
        #: `keras_bn.freeze(model, train_gamma_beta=True)`. Not saved in the config.
        self.frozen = False

    @property
    def _who(self):
        return f"{type(self).__name__} layer '{self.name}'"

    @property
    def channel_axes(self):
        """The channel axes as non-negative integers (after `build`)."""
        return self._axes

    def build(self, input_shape: Any) -> None:
        flavour = self._flavour
        shape = flavour.shape_tuple(input_shape)
        self._axes, dims = arguments.channel_axes(self._who, self.axis, shape)
        assert shape is not None  # channel_axes raised for an unknown rank
        self._param_shape = tuple(dims)
        self.input_spec = flavour.InputSpec(ndim=len(shape),
                                            axes=dict(zip(self._axes, dims)))
        dtype = flavour.parameter_dtype(self)
        self.gamma = (flavour.add_parameter(self, "gamma", dims, dtype,
                                            self.gamma_initializer, self.gamma_regularizer,
                                            self.gamma_constraint) if self.scale else None)
        self.beta = (flavour.add_parameter(self, "beta", dims, dtype, self.beta_initializer,
                                           self.beta_regularizer, self.beta_constraint)
                     if self.center else None)
        self.moving_mean = flavour.add_statistic(self, "moving_mean", dims, dtype,
                                                 self.moving_mean_initializer)
        self.moving_variance = flavour.add_statistic(self, "moving_variance", dims, dtype,
                                                     self.moving_variance_initializer)
        self._build_extra_weights(dims, dtype)
        self.skipped_updates = flavour.add_counter(self, "skipped_updates")
        self.built = True

    def _build_extra_weights(self, dims, dtype):
        """Hook for subclasses: weights created after the moving statistics."""

    # -- the two branches ---------------------------------------------------------------

    def call(self, inputs: Tensor, training: Any = None,
             mask: Tensor | None = None) -> Tensor:
        flavour = self._flavour
        if not flavour.is_float(inputs.dtype):  # integers become the compute dtype
            inputs = flavour.ops.cast(inputs, self.compute_dtype)
        training = False if self.frozen else flavour.training_flag(self, training)
        if training is False:
            return self._inference(inputs)
        if training is True:
            return self._training(inputs, mask)
        return flavour.train_or_infer(  # a boolean tensor (tf-keras)
            training, lambda gate: self._training(inputs, mask, gate),
            lambda: self._inference(inputs))

    def _inference(self, x):
        ops = self._flavour.ops
        gamma, beta = self._gamma_beta()
        scale, offset = stats.inference_transform(
            ops, ops.convert_to_tensor(self.moving_mean),
            ops.convert_to_tensor(self.moving_variance), gamma, beta, self.epsilon)
        rank = len(x.shape)
        y = (ops.cast(x, scale.dtype) * self._broadcast(scale, rank)
             + self._broadcast(offset, rank))
        return ops.cast(y, self._flavour.output_dtype(self, x))

    def _training(self, x, mask, training=True):
        """The training output; the moving statistics are updated where `training` (True,
        or a boolean tensor in TF1 graph mode) holds."""
        if training is True:
            self._warn_if_single_element(x)
        gamma, beta = self._gamma_beta()
        step = self._fused_step if self._can_fuse(x, mask) else self._generic_step
        y, mean, variance, count = step(x, mask, gamma, beta)
        self._update_statistics(mean, variance, count, training)
        return self._flavour.ops.cast(y, self._flavour.output_dtype(self, x))

    def _fused_step(self, x, mask, gamma, beta):
        """Training output and batch statistics on TensorFlow's fused kernel."""
        from keras_bn.layers import fused  # TensorFlow: imported on that backend only

        del mask  # `_can_fuse` admits no mask
        if self._transform_needs_statistics:
            return fused.fused_batch_norm_with_transform(
                x, lambda m, v: self._training_transform(gamma, beta, m, v), gamma.dtype,
                self.epsilon, self._axes[0])
        return fused.fused_batch_norm(x, gamma, beta, self.epsilon, self._axes[0])

    def _generic_step(self, x, mask, gamma, beta):
        """Training output and batch statistics in the flavour's ops: any backend, masks,
        ghost batches, several axes, synchronized statistics, float32 for 16-bit inputs."""
        ops = self._flavour.ops
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
        if ghost:  # the moving statistics take the mean over the ghost batches, as tf-keras
            mean, variance, count = (ops.mean(t, axis=1, keepdims=True) if len(t.shape)
                                     else t for t in (mean, variance, count))
        mean, variance = (ops.reshape(t, self._param_shape) for t in (mean, variance))
        if len(count.shape):
            count = ops.reshape(count, self._param_shape)
        scale, offset = self._training_transform(gamma, beta, mean, variance)
        y = stats.normalize(ops, xc, mean_b, variance_b, self._broadcast(scale, rank, ghost),
                            self._broadcast(offset, rank, ghost), self.epsilon)
        if ghost:
            y = ops.reshape(y, ops.shape(x))
        return y, mean, variance, count

    def _moments(self, x, axes, mask):
        if self.synchronized:  # TensorFlow only (checked in __init__): tf.distribute
            from keras_bn.layers import fused

            return fused.synchronized_moments(x, axes, mask)
        return stats.moments(self._flavour.ops, x, axes, mask)

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
        `training` (True or a boolean tensor) is false. Returns whether they apply."""
        ops = self._flavour.ops
        valid = ops.logical_and(stats.all_finite(ops, mean, variance),
                                stats.has_elements(ops, count))
        skipped = ops.logical_not(valid)
        if training is not True:
            valid, skipped = (ops.logical_and(t, training) for t in (valid, skipped))
        self._assign_if(valid, self.moving_mean,
                        stats.moving_average(self.moving_mean, mean, self.momentum))
        self._assign_if(valid, self.moving_variance, stats.moving_average(
            self.moving_variance, stats.unbiased_variance(ops, variance, count),
            self.momentum))
        self._flavour.assign_add(self, self.skipped_updates, skipped)
        return valid

    def _assign_if(self, condition, variable, value):
        """Assigns `value` where `condition` (a scalar boolean tensor)."""
        ops = self._flavour.ops
        self._flavour.assign(self, variable, ops.where(
            condition, ops.cast(value, variable.dtype), ops.convert_to_tensor(variable)))

    # -- helpers ------------------------------------------------------------------------

    def _gamma_beta(self):
        ops = self._flavour.ops
        dtype = self._flavour.parameter_dtype(self)
        gamma = self.gamma if self.scale else ops.ones(self._param_shape, dtype)
        beta = self.beta if self.center else ops.zeros(self._param_shape, dtype)
        return ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta)

    def _can_fuse(self, x, mask):
        if (self._flavour.backend() != "tensorflow" or len(self._axes) != 1
                or mask is not None or self.virtual_batch_size or self.synchronized):
            return False
        from keras_bn.layers import fused

        return fused.can_fuse(self._flavour.dtype_name(x.dtype), self.epsilon,
                              tuple(x.shape), self._axes[0])

    def _broadcast(self, v, rank, ghost=False):
        """Reshapes a per-channel vector so it broadcasts against an input of `rank`."""
        shape = arguments.broadcast_shape([a + ghost for a in self._axes], self._param_shape,
                                          rank)
        return v if shape is None else self._flavour.ops.reshape(v, shape)

    def _split_virtual_batches(self, x, mask):
        """`(B, ...)` -> `(virtual_batch_size, B / virtual_batch_size, ...)`, as tf-keras."""
        ops, vbs = self._flavour.ops, self.virtual_batch_size
        assert vbs is not None  # called for ghost batches only
        arguments.check_batch_divides(self._who, x.shape[0], vbs)
        if x.shape[0] is None:
            self._flavour.assert_batch_divides(
                x, vbs, f"{self._who}: virtual_batch_size={vbs} must divide the batch size")
        x = ops.reshape(x, (vbs, -1) + tuple(ops.shape(x)[1:]))
        if mask is not None:
            mask = ops.reshape(mask, (vbs, -1) + tuple(ops.shape(mask)[1:]))
        return x, mask

    def _warn_if_single_element(self, x):
        if arguments.elements_per_channel(tuple(x.shape), self._axes) == 1:
            warnings.warn(arguments.single_element_warning(self._who), stacklevel=3)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        flavour = self._flavour
        config = arguments.batch_norm_config(self, flavour.initializers, flavour.regularizers,
                                             flavour.constraints)
        return {**super().get_config(), **config}
