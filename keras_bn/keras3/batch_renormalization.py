"""`keras_bn.keras3.BatchRenormalization`: the Keras 3 twin of `keras_bn.BatchRenormalization`."""

from keras_bn import _keras3 as K
from keras_bn.keras3 import statistics as stats
from keras_bn.keras3.batch_normalization import BatchNormalization
from keras_bn.layers import arguments

ops = K.ops


@K.register_serializable
class BatchRenormalization(BatchNormalization):
    """Batch Renormalization (Ioffe, 2017) for Keras 3, with the paper's schedule.

    In training, `x_hat = (x - mean_B) / sigma_B` (`sigma_B = sqrt(var_B + epsilon)`) is
    corrected toward moving statistics `mu`, `sigma` (weights `renorm_mean`,
    `renorm_stddev`, averaged with `renorm_momentum` and read before this batch updates
    them):

    ```
    r = stop_gradient(clip(sigma_B / sigma, 1 / rmax_t, rmax_t))
    d = stop_gradient(clip((mean_B - mu) / sigma, -dmax_t, dmax_t))
    y = gamma * (x_hat * r + d) + beta
    ```

    `rmax_t`, `dmax_t` follow the paper: plain BN for `warmup_steps` steps, then linear
    ramps to `rmax` over `rmax_ramp_steps` and to `dmax` over `dmax_ramp_steps`; the
    step count is the weight `renorm_step`, saved with the model. `warmup_steps=0,
    rmax_ramp_steps=0, dmax_ramp_steps=0` gives the constant clipping of
    `keras.layers.BatchNormalization(renorm=True, renorm_clipping={"rmax": rmax,
    "rmin": 1 / rmax, "dmax": dmax})`, whose outputs and gradients this layer then
    reproduces. In inference it is plain BN with `moving_mean` and the Bessel-corrected
    `moving_variance` (Keras 3's renorm derives its moving variance from a moving
    standard deviation instead), so it folds and exports like BN. On the TensorFlow
    backend training runs on the fused kernel with `r`, `d` as its scale and offset.

    Args:
      axis, momentum, epsilon, center, scale, *_initializer, *_regularizer, *_constraint,
        synchronized, virtual_batch_size: as in `keras_bn.keras3.BatchNormalization`.
      rmax: Final upper clip of `r` (lower clip `1 / rmax`), >= 1 (`inf`: no clip).
        Paper: 3.
      dmax: Final clip of `|d|`, >= 0 (`inf`: no clip). Paper: 5.
      warmup_steps: Training steps of plain BN before the clipping opens. Paper: 5000.
      rmax_ramp_steps: Steps over which `rmax_t` goes from 1 to `rmax`. Paper: 40000.
      dmax_ramp_steps: Steps over which `dmax_t` goes from 0 to `dmax`. Paper: 25000.
      renorm_momentum: Momentum of `renorm_mean` / `renorm_stddev`, in `[0, 1)`.
      **kwargs: Base layer arguments.

    Call arguments:
      inputs, training, mask: as in `keras_bn.keras3.BatchNormalization`.

    Returns:
      A tensor of the shape of `inputs`, in the layer's compute dtype.

    Raises:
      ValueError: as `keras_bn.keras3.BatchNormalization`, and for `rmax < 1`,
        `dmax < 0`, a negative number of steps, or `renorm_momentum` outside `[0, 1)`.

    Reference:
      - [Ioffe, 2017](https://arxiv.org/abs/1702.03275).
    """

    _transform_needs_statistics = True

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, rmax=3.0, dmax=5.0,
                 warmup_steps=5000, rmax_ramp_steps=40000, dmax_ramp_steps=25000,
                 renorm_momentum=0.99, **kwargs):
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        arguments.check_renorm(self._who, rmax, dmax, warmup_steps, rmax_ramp_steps,
                               dmax_ramp_steps, renorm_momentum)
        self.rmax = float(rmax)
        self.dmax = float(dmax)
        self.warmup_steps = warmup_steps
        self.rmax_ramp_steps = rmax_ramp_steps
        self.dmax_ramp_steps = dmax_ramp_steps
        self.renorm_momentum = float(renorm_momentum)

    def _build_extra_weights(self, dims, dtype):
        self.renorm_mean = K.add_statistic(self, "renorm_mean", dims, dtype,
                                           self.moving_mean_initializer)
        variance_init = self.moving_variance_initializer
        self.renorm_stddev = K.add_statistic(
            self, "renorm_stddev", dims, dtype,
            lambda shape, dtype=None: ops.sqrt(variance_init(shape, dtype=dtype)))
        self.renorm_step = K.add_counter(self, "renorm_step")

    def clip_limits(self):
        """The current `(rmax_t, dmax_t)` of the schedule, as float32 tensors."""
        return stats.renorm_limits(self.renorm_step, self.rmax, self.dmax,
                                   self.warmup_steps, self.rmax_ramp_steps,
                                   self.dmax_ramp_steps)

    def _training_transform(self, gamma, beta, mean, variance):
        rmax, dmax = (ops.cast(t, mean.dtype) for t in self.clip_limits())
        r, d = stats.renorm_correction(
            mean, variance, ops.cast(self.renorm_mean, mean.dtype),
            ops.cast(self.renorm_stddev, mean.dtype), self.epsilon, rmax, dmax)
        return stats.compose_transforms(gamma, beta, r, d)

    def _update_statistics(self, mean, variance, count):
        valid = super()._update_statistics(mean, variance, count)
        self._assign_if(valid, self.renorm_mean, stats.moving_average(
            self.renorm_mean, mean, self.renorm_momentum))
        self._assign_if(valid, self.renorm_stddev, stats.moving_average(
            self.renorm_stddev, ops.sqrt(variance + self.epsilon), self.renorm_momentum))
        self.renorm_step.assign_add(1)
        return valid

    def get_config(self):
        return {**super().get_config(), **arguments.renorm_config(self)}
