"""keras_bn.export: verified ONNX and TFLite export (source: the repository's `export/`).

* `to_onnx(model, path, ...)`: tf2onnx, `onnx.checker`, onnxruntime parity.
* `to_tflite(model, path, quantize=None | "float16" | "int8", ...)`: TensorFlow's
  converter, LiteRT parity (float32) or measured error (float16, int8).

Both fold the BatchNormalization layers first and return an `ExportResult`.
"""

from keras_bn.export.onnx import to_onnx
from keras_bn.export.tflite import calibration_data, to_tflite
from keras_bn.export.checks import ExportResult

__all__ = ["ExportResult", "calibration_data", "to_onnx", "to_tflite"]
