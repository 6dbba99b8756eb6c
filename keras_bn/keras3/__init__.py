"""keras_bn for Keras 3 (`import keras`), on the TensorFlow, JAX and torch backends.

`from keras_bn import keras3 as kbn` gives the Keras 3 layers; the tools are the same
functions as for tf-keras (`keras_bn.fold`, `keras_bn.export`, ...), which take a model of
either flavour and handle it with that flavour's plumbing. Importing this module
registers the layers with Keras 3, so `keras.saving.load_model` reads `.keras` files
holding them without `custom_objects`.

Public API:

* `BatchNormalization`, `BatchRenormalization`: the layers, Keras 3 subclasses.
* `QuantizedConvBN`: a conv/depthwise/dense layer and its BN, trained as the int8 file
  runs them, `ActivationQuantizer` a tensor on its int8 grid
  (`keras_bn.quantization.quantize_aware` builds models of them).
* `PreciseBN`, `BatchNormMonitor`: the callbacks of `keras_bn.callbacks` as
  `keras.callbacks.Callback`s, for Keras 3 models on any backend.
* `fold`, `fold_plan`: as `keras_bn.fold` (re-exported for convenience).
"""

from keras_bn import flavour as _flavour
from keras_bn.calibration.monitoring import callback_classes as _callback_classes
from keras_bn.folding import fold, fold_plan
from keras_bn.layers.keras3 import (ActivationQuantizer, BatchNormalization,
                                    BatchRenormalization, QuantizedConvBN)

PreciseBN, BatchNormMonitor = _callback_classes(_flavour.named("keras3"), __name__)

__all__ = ["ActivationQuantizer", "BatchNormalization", "BatchRenormalization",
           "BatchNormMonitor", "PreciseBN", "QuantizedConvBN", "fold", "fold_plan"]
