"""keras_bn.export: verified ONNX and TFLite export (source: the repository's `export/`).

* `to_onnx(model, path, quantize=...)`: tf2onnx, `onnx.checker`, onnxruntime parity;
  quantized by onnxruntime's tools (QDQ int8 and int16x8, dynamic, float16).
* `to_tflite(model, path, quantize=...)`: TensorFlow's converter, LiteRT parity;
  dynamic, float16, int8, int8-io and int16x8.

Both fold the BatchNormalization layers first, take the same
`keras_bn.quantization.QuantizationOptions` (one calibration for both files) and return
an `ExportResult`; quantized files are scored against the Keras model.
"""

from keras_bn.export.onnx import to_onnx
from keras_bn.export.tflite import to_tflite
from keras_bn.export.checks import ExportResult
from keras_bn.quantization.options import QuantizationOptions

__all__ = ["ExportResult", "QuantizationOptions", "to_onnx", "to_tflite"]
