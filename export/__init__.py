"""keras_bn.export: verified ONNX and TFLite export (source: the repository's `export/`).

* `to_onnx(model, path, quantize=...)`: tf2onnx, `onnx.checker`, onnxruntime parity;
  quantized by onnxruntime's tools (QDQ int8 and int16x8, dynamic, float16).
* `to_tflite(model, path, quantize=...)`: TensorFlow's converter, LiteRT parity;
  dynamic, float16, int8, int8-io and int16x8.

Both fold the BatchNormalization layers first, take the same
`keras_bn.quantization.QuantizationOptions` (one calibration for both files) and return
an `ExportResult`; quantized files are scored against the Keras model.
"""

import importlib

#: Public name -> the module that defines it.
_API = {"to_onnx": "keras_bn.export.onnx", "to_tflite": "keras_bn.export.tflite",
        "ExportResult": "keras_bn.export.checks",
        "QuantizationOptions": "keras_bn.quantization.options"}
__all__ = sorted(_API)


def __getattr__(name):
    """Each public name is imported on first use (PEP 562), as in `keras_bn`:
    `import keras_bn.export` imports no TensorFlow, tf2onnx or LiteRT, so the command line
    and its users can import this package's modules for their constants."""
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_bn.export' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
