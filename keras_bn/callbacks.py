"""Keras callbacks for BN during training, for tf-keras models (`fit`); Keras 3's are in
`keras_bn.keras3` (the same classes on `keras.callbacks.Callback`).

* `PreciseBN`: recalibrate on a data set every N epochs, before the epoch's validation,
  so the evaluated (and saved) model uses true statistics (as detectron2's PreciseBN).
* `BatchNormMonitor`: per BN layer and epoch, how far a probe batch's statistics are from
  the moving ones, how many channels have |gamma| near 0, skipped updates, and for
  BatchRenormalization how often r and d hit their clip limits; written to a CSV and a
  JSON-lines file always, and to TensorBoard when it is installed.
"""

from keras_bn import flavour
from keras_bn.calibration.monitoring import callback_classes

PreciseBN, BatchNormMonitor = callback_classes(flavour.named("tf_keras"), __name__)

__all__ = ["PreciseBN", "BatchNormMonitor"]
