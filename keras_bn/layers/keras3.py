"""`keras_bn.keras3.BatchNormalization` and `.BatchRenormalization`: the layers on Keras 3."""

from keras_bn import flavour
from keras_bn.layers.flavoured import layer_classes, quantization_classes

BatchNormalization, BatchRenormalization = layer_classes(flavour.named("keras3"), __name__)
QuantizedConvBN, ActivationQuantizer = quantization_classes(flavour.named("keras3"),
                                                             __name__)
