"""BatchRenormalization, written once for both Keras flavours (`keras_bn.layers.flavoured`
puts it on each flavour's Layer class)."""

from collections.abc import Sequence
from typing import Any

from keras_bn.flavour import Tensor
from keras_bn.layers import arguments, statistics as stats
from keras_bn.layers.batch_normalization import BatchNormalization


class BatchRenormalization(BatchNormalization):
    """Batch Renormalization (Ioffe, 2017): BN that trains well on small or non-i.i.d. batches.

    `keras_bn.BatchRenormalization` (tf-keras) and `keras_bn.keras3.BatchRenormalization`
    (Keras 3) are this layer on each flavour's base class. In training, the
    batch-normalized `x_hat = (x - mean_B) / sigma_B` (with `sigma_B = sqrt(var_B +
    epsilon)`) is corrected toward the moving statistics:

    ```
    r = stop_gradient(clip(sigma_B / sigma, 1 / rmax_t, rmax_t))
    d = stop_gradient(clip((mean_B - mu) / sigma, -dmax_t, dmax_t))
    y = gamma * (x_hat * r + d) + beta
    ```

    `mu` and `sigma` (weights `renorm_mean`, `renorm_stddev`) are moving averages of
    `mean_B` and `sigma_B` with `renorm_momentum`, read before this batch updates them.
    The correction is applied as a per-channel scale `gamma * r` and offset
    `gamma * d + beta`, on TensorFlow's fused kernel where BN would use it, so BRN trains
    at nearly BN's speed.

    In inference the layer is plain batch normalization with `moving_mean` and
    `moving_variance`, kept exactly as `BatchNormalization` keeps them (Bessel-corrected
    variance), so a BRN layer folds and exports like a BN layer. (tf-keras's and Keras 3's
    `renorm=True` derive their moving variance from a moving standard deviation instead.)

    The clipping follows the paper's schedule: plain BN (`rmax_t = 1`, `dmax_t = 0`) for
    `warmup_steps` training steps, then `rmax_t` rises linearly to `rmax` over
    `rmax_ramp_steps` and `dmax_t` to `dmax` over `dmax_ramp_steps`. The step count is the
    non-trainable weight `renorm_step`, saved with the model, so resumed training continues
    the schedule. `warmup_steps=0, rmax_ramp_steps=0, dmax_ramp_steps=0` gives constant
    clipping at `rmax`, `dmax`: the clipping of `BatchNormalization(renorm=True,
    renorm_clipping={"rmax": rmax, "rmin": 1 / rmax, "dmax": dmax})` in tf-keras and
    Keras 3, whose outputs and gradients this layer then reproduces.

    Args:
      axis, momentum, epsilon, center, scale, *_initializer, *_regularizer, *_constraint,
        synchronized, virtual_batch_size: as in `BatchNormalization`.
      rmax: Final upper clip of `r` (lower clip `1 / rmax`), >= 1 (`inf`: no clip).
        Paper: 3.
      dmax: Final clip of `|d|`, >= 0 (`inf`: no clip). Paper: 5.
      warmup_steps: Training steps of plain BN before the clipping opens. Paper: 5000.
      rmax_ramp_steps: Steps over which `rmax_t` goes from 1 to `rmax`. Paper: 40000.
      dmax_ramp_steps: Steps over which `dmax_t` goes from 0 to `dmax`. Paper: 25000.
      renorm_momentum: Momentum of `renorm_mean` / `renorm_stddev`, in `[0, 1)`.
      **kwargs: Base layer arguments.

    Call arguments:
      inputs, training, mask: as in `BatchNormalization`.

    Returns:
      A tensor of the shape of `inputs`, as `BatchNormalization`.

    Raises:
      ValueError: as `BatchNormalization`, and for `rmax < 1`, `dmax < 0`, a negative
        number of steps, or `renorm_momentum` outside `[0, 1)`.

    Reference:
      - [Ioffe, 2017](https://arxiv.org/abs/1702.03275).
    """

    _transform_needs_statistics = True

    def __init__(self, axis: int | Sequence[int] = -1, momentum: float = 0.99,
                 epsilon: float = 1e-3, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_steps: int = 5000, rmax_ramp_steps: int = 40000,
                 dmax_ramp_steps: int = 25000, renorm_momentum: float = 0.99,
                 **kwargs: Any) -> None:
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
        flavour = self._flavour
        self.renorm_mean = flavour.add_statistic(self, "renorm_mean", dims, dtype,
                                                 self.moving_mean_initializer)
        variance_init = self.moving_variance_initializer
        self.renorm_stddev = flavour.add_statistic(
            self, "renorm_stddev", dims, dtype,
            lambda *args, **kwargs: flavour.ops.sqrt(variance_init(*args, **kwargs)))
        self.renorm_step = flavour.add_counter(self, "renorm_step")

    def clip_limits(self) -> tuple[Tensor, Tensor]:
        """The current `(rmax_t, dmax_t)` of the schedule, as float32 tensors."""
        return stats.renorm_limits(self._flavour.ops, self.renorm_step, self.rmax, self.dmax,
                                   self.warmup_steps, self.rmax_ramp_steps,
                                   self.dmax_ramp_steps)

    def _training_transform(self, gamma, beta, mean, variance):
        ops = self._flavour.ops
        rmax, dmax = (ops.cast(t, mean.dtype) for t in self.clip_limits())
        r, d = stats.renorm_correction(
            ops, mean, variance, ops.cast(self.renorm_mean, mean.dtype),
            ops.cast(self.renorm_stddev, mean.dtype), self.epsilon, rmax, dmax)
        return stats.compose_transforms(gamma, beta, r, d)

    def _update_statistics(self, mean, variance, count, training=True):
        ops = self._flavour.ops
        apply = super()._update_statistics(mean, variance, count, training)
        self._assign_if(apply, self.renorm_mean, stats.moving_average(
            self.renorm_mean, mean, self.renorm_momentum))
        self._assign_if(apply, self.renorm_stddev, stats.moving_average(
            self.renorm_stddev, ops.sqrt(variance + self.epsilon), self.renorm_momentum))
        self._flavour.assign_add(self, self.renorm_step, training)
        return apply

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **arguments.renorm_config(self)}
