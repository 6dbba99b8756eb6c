"""ActivationQuantizer: a tensor put on the int8 grid its file will give it, with the
range calibrated and then tracked in training; written once for both Keras flavours."""

from typing import Any, ClassVar

from keras_bn.flavour import Flavour, LayerCore, Tensor
from keras_bn.quantization import fake_quant


class ActivationQuantizer(LayerCore):
    """Fake-quantizes a tensor per tensor, asymmetric int8 over the range
    `[low, high]` (widened to hold zero, the zero point on the grid: TFLite's grid, see
    `keras_bn.quantization.fake_quant`), with straight-through gradients inside the
    range and none outside.

    The range starts empty (`low == high == 0`): the layer then passes its input through
    unchanged, so that a model can run its calibration data to set every range (as
    `keras_bn.quantization.quantize_aware` does) before anything is quantized. In
    training the range follows the batches' min and max as an exponential moving
    average (`momentum`), of the global batch under a `tf.distribute` strategy; in
    inference it is fixed. On TensorFlow and torch the rounding is the backend's fused
    fake-quantization kernel (`flavour.fused_fake_quant`).

    A `fixed` range (`(low, high)`) is never tracked: the outputs of softmax and sigmoid,
    which the int8 kernels write on `[0, 1)` with a step of 1/256, and every range of
    `keras_bn.quantization.inference_model` (the grid's own bounds, which every
    converter's rounding of the zero point keeps). In inference on TensorFlow a fixed
    range is TensorFlow's `fake_quant_with_min_max_args`, the op the TFLite converter
    and tf2onnx read as the tensor's int8 range (the same values, halves of a step
    aside).

    Args:
      momentum: Of the moving average of the range in training, in `[0, 1]`; 1 keeps the
        calibrated range.
      fixed: None, or a `(low, high)` range that never moves.
      **kwargs: Base layer arguments.

    Weights: `low`, `high` (not trainable).
    """

    _flavour: ClassVar[Flavour]

    def __init__(self, momentum: float = 0.99, fixed: tuple[float, float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"ActivationQuantizer layer '{self.name}': momentum="
                             f"{momentum!r}; give a value in [0, 1].")
        self.momentum = float(momentum)
        self.fixed = None if fixed is None else tuple(float(v) for v in fixed)

    def build(self, input_shape: Any) -> None:
        flavour = self._flavour
        low, high = self.fixed or (0.0, 0.0)
        self.low = flavour.add_statistic(self, "low", (), "float32",
                                         flavour.initializers.Constant(low))
        self.high = flavour.add_statistic(self, "high", (), "float32",
                                          flavour.initializers.Constant(high))
        self.built = True

    def call(self, inputs: Tensor, training: Any = None) -> Tensor:
        flavour = self._flavour
        ops = flavour.ops
        x = ops.cast(inputs, "float32")
        training = flavour.training_flag(self, training)
        if self.fixed is not None and training is False:
            native = flavour.fake_quant_op(x, *self.fixed)  # what the converters read
            if native is not None:
                return ops.cast(native, inputs.dtype)
        low, high = ops.convert_to_tensor(self.low), ops.convert_to_tensor(self.high)
        if self.fixed is None and training is True:
            batch_low, batch_high = self._batch_range(x)
            calibrated = high > low
            m = self.momentum
            low = ops.where(calibrated, low * m + batch_low * (1 - m), batch_low)
            high = ops.where(calibrated, high * m + batch_high * (1 - m), batch_high)
            flavour.assign(self, self.low, low)
            flavour.assign(self, self.high, high)
        y = flavour.select(high > low, lambda: self._quantize(x, low, high),
                           lambda: x)  # not calibrated yet: unchanged
        return ops.cast(y, inputs.dtype)

    def _batch_range(self, x):
        """The batch's min and max, of the global batch across `tf.distribute` replicas
        (JAX's DataParallel computes on the global batch already)."""
        ops = self._flavour.ops
        if self._flavour.backend() == "tensorflow":
            from keras_bn.layers import fused  # TensorFlow: imported on that backend only

            low, high = fused.global_range(x)
        else:
            low, high = ops.min(x), ops.max(x)
        return ops.stop_gradient(low), ops.stop_gradient(high)

    def _quantize(self, x, low, high):
        ops = self._flavour.ops
        scale, zero_point = fake_quant.grid(ops, low, high)
        fused = self._flavour.fused_fake_quant(x, ops.minimum(low, 0.0),
                                               ops.maximum(high, 0.0), scale, zero_point)
        if fused is not None:
            return fused
        return fake_quant.fake_quantize_activations(ops, x, scale, zero_point)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum,
                "fixed": None if self.fixed is None else list(self.fixed)}
