"""Quantization techniques, apart from the file formats that use them.

* `QuantizationOptions` (`options.py`): every choice of a post-training quantization
  (mode, calibration rows, range estimator, techniques, evaluation rows, agreement gate),
  taken alike by `keras_bn.export.to_tflite` and `keras_bn.export.to_onnx`.
* The techniques, run on the folded Keras model before a converter quantizes it:
  cross-layer equalization (`equalization.py`), bias correction (`bias_correction.py`),
  both through `post_training.apply`; activation range estimators (`ranges.py`).
* Quantization-aware training: `quantize_aware` (`aware.py`) turns every conv/dense ->
  BN pair into a `QuantizedConvBN` (`keras_bn/layers/quantized_conv_bn.py`), its
  rounding simulated by `fake_quant.py`, after splitting the layers the files compute
  as two ops (`splitting.py`); `inference_model` (`inference.py`) is the plain model it
  computes, which the exporters write with its learned ranges; `distill`
  (`distillation.py`) fine-tunes it toward the float model's answers from unlabelled
  rows, or on labels; imported on first use (they need Keras).
* What they share: weights as int8 files hold them (`affine.py`, `kernels.py`) and the
  scores of a quantized file against the float model (`scoring.py`: top-1 agreement,
  errors, SQNR, the held-out split).

The exporters (`keras_bn.export`) hold the formats: how each file is written, run and
checked. Importing this package imports neither TensorFlow nor Keras.
"""

from keras_bn.quantization.options import (CALIBRATED, ESTIMATORS, FALLBACK_MODES,
                                           FORMAT_MODES, MODES, QuantizationOptions)

__all__ = ["CALIBRATED", "ESTIMATORS", "FALLBACK_MODES", "FORMAT_MODES", "MODES",
           "QuantizationOptions", "distill", "inference_model", "quantize_aware"]


def __getattr__(name):
    """`quantize_aware`, `inference_model` and `distill` are imported on first use (PEP
    562): this package stays free of TensorFlow and Keras until they are asked for."""
    if name == "quantize_aware":
        from keras_bn.quantization.aware import quantize_aware

        return quantize_aware
    if name == "inference_model":
        from keras_bn.quantization.inference import inference_model

        return inference_model
    if name == "distill":
        from keras_bn.quantization.distillation import distill

        return distill
    raise AttributeError(f"module 'keras_bn.quantization' has no attribute {name!r}")
