"""The normalization layers: one file per layer, shared math in `statistics`."""

from keras_bn.layers.batch_normalization import BatchNormalization
from keras_bn.layers.batch_renormalization import BatchRenormalization

__all__ = ["BatchNormalization", "BatchRenormalization"]
