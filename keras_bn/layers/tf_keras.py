"""`keras_bn.BatchNormalization` and `keras_bn.BatchRenormalization`: the layers on tf-keras."""

from keras_bn import flavour
from keras_bn.layers.flavoured import layer_classes, quantization_classes

BatchNormalization, BatchRenormalization = layer_classes(flavour.named("tf_keras"), __name__)
QuantizedConvBN, ActivationQuantizer = quantization_classes(flavour.named("tf_keras"),
                                                             __name__)
