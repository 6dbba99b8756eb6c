"""QuantizedConvBN: a convolution, depthwise convolution or dense layer and the
BatchNormalization after it, trained as the int8 file will run them (BN folded into the
weights, the weights fake-quantized), written once for both Keras flavours
(`keras_bn.layers.flavoured` puts it on each flavour's Layer class)."""

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from keras_bn.flavour import Flavour, LayerCore, Tensor
from keras_bn.layers import statistics as stats
from keras_bn.quantization import fake_quant

#: The layer kinds a QuantizedConvBN computes, by the `kind` argument.
KINDS = ("conv", "depthwise", "dense")


class QuantizedConvBN(LayerCore):
    """A conv, depthwise conv or dense layer followed by batch normalization, trained with
    the BN folded into its weights and the folded weights fake-quantized, as in the int8
    file (Krishnamoorthi 2018, section 3.2; Jacob et al. 2018, section 3.2).

    With `s = gamma / sqrt(moving_variance + epsilon)` per output channel, the layer runs
    the operation once, on the folded kernel `W * s` put on the int8 grid
    (`fake_quant.fake_quantize_weights`: symmetric per output channel, as TFLite and
    onnxruntime write it): `y_q = op(x, q(W * s))`. Then:

    - **training, before the statistics freeze** (`step < freeze_after`): the output is
      corrected to what conv -> BN gives in training, with the batch's statistics of
      the conv output `z = y_q / s + bias`:
      `gamma * (z - mean_B) / sqrt(var_B + epsilon) + beta`, which is
      `y_q * sqrt(moving_variance + epsilon) / sqrt(var_B + epsilon)` plus an offset
      (the whitepaper's correction), and the moving statistics are updated as
      `keras_bn.BatchNormalization` updates them (Bessel-corrected variance);
    - **inference, and training once frozen**: the folded layer exactly,
      `y_q + beta + (bias - moving_mean) * s`: training then runs the graph the file
      runs, and the statistics no longer move.

    Without `weight_bits` (None) nothing is quantized: the layer then equals conv -> BN
    in training and the folded conv in inference, to float32 rounding.

    With `batch_norm=False` it stands for a conv, depthwise conv or dense layer with no
    BN after it: `op(x, q(W)) + bias` in training and inference alike (no statistics),
    so that training sees the int8 weights the file holds for such a layer too.

    Args:
      kind: "conv" (Conv1D/2D/3D), "depthwise" (DepthwiseConv2D) or "dense".
      filters: Output channels of a conv; units of a dense layer; the depth multiplier
        of a depthwise conv.
      kernel_size: Spatial size of the kernel (an int or a tuple; ignored for dense).
      strides, padding, dilation_rate, groups: As the Keras layer of `kind` takes them
        (channels last).
      use_bias: Whether the conv has a bias (kept apart from BN's beta, as in the
        unfolded model).
      momentum, epsilon, center, scale: The BatchNormalization's.
      freeze_after: Training steps (calls in training mode) after which the BN
        statistics freeze and training runs the inference graph; 0: from the start
        (no batch statistics are computed, `step` does not count); None never freezes.
      weight_bits: 8 (int8 weights) or None (float, for checks).
      batch_norm: Whether a BN follows (False: the layer alone; `momentum`, `epsilon`,
        `center`, `scale` and `freeze_after` are then unused).
      **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
      inputs: A channels-last tensor of the rank `kind` needs.
      training: Python boolean (tf-keras also takes a boolean tensor).

    Weights: `kernel`, `bias` (with `use_bias`), `gamma`, `beta`, `moving_mean`,
    `moving_variance` (the unfolded layers', under their names), and `step`; with
    `batch_norm=False`, `kernel` and `bias` only.
    """

    _flavour: ClassVar[Flavour]

    def __init__(self, kind: str, filters: int, kernel_size: int | Sequence[int] = 1,
                 strides: int | Sequence[int] = 1, padding: str = "valid",
                 dilation_rate: int | Sequence[int] = 1, groups: int = 1,
                 use_bias: bool = True, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, freeze_after: int | None = None,
                 weight_bits: int | None = 8, batch_norm: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"QuantizedConvBN layer '{self.name}': kind={kind!r}; use one "
                             f"of {KINDS}.")
        if weight_bits not in (8, None):
            raise ValueError(f"QuantizedConvBN layer '{self.name}': weight_bits="
                             f"{weight_bits!r}; use 8 (int8 weights) or None (float).")
        self.kind, self.filters, self.use_bias = kind, int(filters), bool(use_bias)
        self.kernel_size, self.strides, self.dilation_rate = kernel_size, strides, dilation_rate
        self.padding, self.groups = padding, int(groups)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.freeze_after, self.weight_bits = freeze_after, weight_bits
        self.batch_norm = bool(batch_norm)

    def _tuple(self, value, rank):
        return (value,) * rank if isinstance(value, int) else tuple(value)

    def build(self, input_shape: Any) -> None:
        flavour = self._flavour
        shape = flavour.shape_tuple(input_shape)
        if shape is None or shape[-1] is None:
            raise ValueError(f"QuantizedConvBN {self.name!r}: an input of unknown rank or "
                             f"channels ({input_shape}); give the model's Input a shape")
        channels, spatial = shape[-1], len(shape) - 2
        if self.kind == "dense":
            kernel, out = (channels, self.filters), self.filters
        elif self.kind == "depthwise":
            kernel = self._tuple(self.kernel_size, spatial) + (channels, self.filters)
            out = channels * self.filters
        else:
            kernel = self._tuple(self.kernel_size, spatial) + (channels // self.groups,
                                                                self.filters)
            out = self.filters
        self._rank = len(shape)
        dtype = flavour.parameter_dtype(self)
        self.kernel = flavour.add_parameter(self, "kernel", kernel, dtype,
                                            flavour.initializers.get("glorot_uniform"))
        self.bias = (flavour.add_parameter(self, "bias", (out,), dtype,
                                           flavour.initializers.get("zeros"))
                     if self.use_bias else None)
        self._channels = out
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None
        self.step = None
        if self.batch_norm:
            ones, zeros = flavour.initializers.get("ones"), flavour.initializers.get("zeros")
            self.gamma = (flavour.add_parameter(self, "gamma", (out,), dtype, ones)
                          if self.scale else None)
            self.beta = (flavour.add_parameter(self, "beta", (out,), dtype, zeros)
                         if self.center else None)
            self.moving_mean = flavour.add_statistic(self, "moving_mean", (out,), dtype,
                                                     zeros)
            self.moving_variance = flavour.add_statistic(self, "moving_variance", (out,),
                                                         dtype, ones)
            self.step = flavour.add_counter(self, "step")
        self.built = True

    # -- the folded, quantized operation --------------------------------------------------

    def _vector(self, variable, default):
        ops = self._flavour.ops
        if variable is None:
            return ops.ones((self._channels,)) * default
        return ops.convert_to_tensor(variable)

    def _folded_kernel(self, s, quantize=True):
        """`kernel * s` per output channel (the kernel itself when `s` is None), on the
        int8 grid when `weight_bits` (and `quantize`)."""
        ops = self._flavour.ops
        kernel = ops.convert_to_tensor(self.kernel)
        if self.kind == "depthwise":  # output channel c * multiplier + m
            folded = kernel if s is None else kernel * ops.reshape(s, tuple(kernel.shape[-2:]))
            reduce = tuple(range(len(kernel.shape) - 2))
        else:
            folded = kernel if s is None else kernel * s
            reduce = tuple(range(len(kernel.shape) - 1))
        if self.weight_bits is None or not quantize:
            return folded
        return fake_quant.fake_quantize_weights(ops, folded, reduce, self.weight_bits)

    def _operation(self, x, kernel):
        ops = self._flavour.ops
        if self.kind == "dense":
            return ops.matmul(x, kernel)
        spatial = self._rank - 2
        strides = self._tuple(self.strides, spatial)
        dilation = self._tuple(self.dilation_rate, spatial)
        if self.kind == "depthwise":
            return ops.depthwise_conv(x, kernel, strides, self.padding, "channels_last",
                                      dilation)
        if all(k == 1 for k in kernel.shape[:-2]) and any(s > 1 for s in strides):
            # A strided 1x1 convolution is the 1x1 convolution of every s-th position
            # (either padding pads nothing): the same values, without the strided
            # kernel whose training step crashes TensorFlow 2.21 with oneDNN on
            # (SIGSEGV on few channels, e.g. 3 or 8: a residual net's downsampling).
            x = x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
            strides = (1,) * spatial
        return ops.conv(x, kernel, strides, self.padding, "channels_last", dilation)

    # -- the two branches -----------------------------------------------------------------

    def _factors(self):
        """`(gamma, beta, bias, sigma, s, shift)`: BN's parameters (ones, zeros where
        absent), the moving sigma, the fold's factor `s = gamma / sigma` and the folded
        bias `shift = beta + (bias - moving_mean) * s`; without a BN, only `shift`, the
        bias (the others None: the kernel is not scaled)."""
        ops = self._flavour.ops
        if not self.batch_norm:
            return None, None, None, None, None, self._vector(self.bias, 0.0)
        gamma, beta = self._vector(self.gamma, 1.0), self._vector(self.beta, 0.0)
        bias = self._vector(self.bias, 0.0)
        sigma = ops.sqrt(ops.convert_to_tensor(self.moving_variance) + self.epsilon)
        s = gamma / sigma
        shift = beta + (bias - ops.convert_to_tensor(self.moving_mean)) * s
        return gamma, beta, bias, sigma, s, shift

    def folded_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """`(kernel, bias)` of the folded layer this layer computes in inference, as
        numpy arrays: the kernel `W * s` (on the int8 grid with `weight_bits`), shaped
        as this layer's kernel, and the bias `shift` of `_factors`."""
        _, _, _, _, s, shift = self._factors()
        kernel, bias = self._flavour.get_values([self._folded_kernel(s), shift])
        return kernel, bias

    def inference(self, inputs: Tensor, quantize: bool = True) -> Tensor:
        """This layer's output in inference (the folded layer) on `inputs`, its kernel
        on the int8 grid with `weight_bits` and `quantize`, else in float: what bias
        correction compares (`quantize_aware(bias_correction=True)`)."""
        ops = self._flavour.ops
        s, shift = self._factors()[4:]
        x = ops.cast(ops.convert_to_tensor(inputs), self.compute_dtype)
        return self._operation(x, self._folded_kernel(s, quantize)) + shift

    def correct_bias(self, shift: np.ndarray) -> str:
        """Subtracts `shift` (per output channel) from the folded bias of inference:
        from BN's `beta`, else from the layer's `bias` (divided by the fold's factor
        where a BN follows). Returns the name of the weight changed.

        Raises:
          ValueError: the layer has neither (nothing holds a bias to change).
        """
        flavour = self._flavour
        s = self._factors()[4]
        if self.beta is not None:
            target, delta = self.beta, shift
        elif self.bias is not None:  # the folded bias holds `bias * s`
            factor = np.ones_like(shift) if s is None else flavour.get_values([s])[0]
            target = self.bias
            delta = np.where(factor == 0, 0.0, shift / np.where(factor == 0, 1.0, factor))
        else:
            raise ValueError(f"QuantizedConvBN {self.name!r} has neither a BN beta nor a "
                             "bias to correct")
        flavour.set_values([(target, flavour.get_values([target])[0] - delta)])
        return "beta" if target is self.beta else "bias"

    def call(self, inputs: Tensor, training: Any = None) -> Tensor:
        flavour = self._flavour
        ops = flavour.ops
        x = ops.cast(inputs, self.compute_dtype)
        gamma, beta, bias, sigma, s, shift = self._factors()
        y = self._operation(x, self._folded_kernel(s))
        training = flavour.training_flag(self, training)
        if training is False or not self.batch_norm or self.freeze_after == 0:
            return y + shift  # frozen from the start: no statistics to compute
        return flavour.train_or_infer(
            training, lambda gate: self._training(y, shift, s, sigma, gamma, beta, bias, gate),
            lambda: y + shift)

    def _frozen(self):
        ops = self._flavour.ops
        if self.freeze_after is None:
            return ops.convert_to_tensor(False)
        return ops.greater(ops.convert_to_tensor(self.step) + 1, self.freeze_after)

    def _training(self, y, shift, s, sigma, gamma, beta, bias, training=True):
        """conv -> BN in training (batch statistics of the conv output, moving statistics
        updated) until `freeze_after` steps, the folded output `y + shift` after; `step`
        counts.

        The conv output is `z = y / s + bias` (its weights quantized as folded), and
        BN's output `gamma * (z - mean_z) / sigma_B + beta` is
        `y * sigma / sigma_B + beta - (mean_z - bias) * gamma / sigma_B` with
        `sigma_B = sqrt(var_z + epsilon)`. Where the backend runs ops one by one
        (TensorFlow, torch), the statistics are those of `y`, scaled
        (`mean_z = mean_y / s + bias`, `var_z = var_y / s^2`), without computing `z`;
        where its compiler fuses them (JAX), those of `z` as written (measured faster
        there: a QAT step 1.07x the float one against 1.3x). On TensorFlow they are the
        global batch's across the replicas of a `tf.distribute` strategy (JAX's
        DataParallel computes on the global batch already)."""
        flavour = self._flavour
        ops = flavour.ops
        safe = ops.where(ops.equal(s, 0.0), ops.ones_like(s), s)  # gamma 0: y is 0 too
        axes = list(range(self._rank - 1))
        if flavour.fuses_elementwise():  # one compiled pass either way: the literal form
            mean, variance, count = stats.moments(ops, y / safe + bias, axes)
        else:  # the statistics of y, scaled: two passes fewer over the conv's output
            if flavour.backend() == "tensorflow":  # global under tf.distribute
                from keras_bn.layers import fused  # imported on TensorFlow only

                mean, variance, count = fused.synchronized_moments(y, axes)
            else:
                mean, variance, count = stats.moments(ops, y, axes)
            mean, variance = mean / safe + bias, variance / ops.square(safe)
        mean, variance, count = (ops.reshape(t, (-1,)) for t in (mean, variance, count))
        sigma_b = ops.sqrt(variance + self.epsilon)
        frozen = self._frozen()
        learning = ops.logical_not(frozen)
        if training is not True:
            learning = ops.logical_and(learning, training)
        valid = ops.logical_and(learning, ops.logical_and(
            stats.all_finite(ops, mean, variance), stats.has_elements(ops, count)))
        assert self.moving_mean is not None and self.moving_variance is not None  # a BN
        for variable, value in (
                (self.moving_mean, stats.moving_average(self.moving_mean, mean,
                                                        self.momentum)),
                (self.moving_variance, stats.moving_average(
                    self.moving_variance, stats.unbiased_variance(ops, variance, count),
                    self.momentum))):
            flavour.assign(self, variable, ops.where(
                valid, ops.cast(ops.stop_gradient(value), variable.dtype),
                ops.convert_to_tensor(variable)))
        flavour.assign_add(self, self.step, ops.cast(training, "int32"))
        ratio = sigma / sigma_b
        return flavour.select(frozen, lambda: y + shift,
                              lambda: y * ratio + (beta - (mean - bias) * gamma / sigma_b))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate,
                "groups": self.groups, "use_bias": self.use_bias,
                "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "freeze_after": self.freeze_after,
                "weight_bits": self.weight_bits, "batch_norm": self.batch_norm}
