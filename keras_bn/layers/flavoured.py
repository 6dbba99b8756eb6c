"""The public layer classes of a flavour: the one core on that flavour's base class."""

from keras_bn.flavour import Flavour
from keras_bn.layers import (activation_quantizer, batch_normalization, batch_renormalization,
                             quantized_conv_bn)


def layer_classes(flavour: Flavour, module: str) -> tuple[type, type]:
    """`(BatchNormalization, BatchRenormalization)` for `flavour` (a module of
    `keras_bn.flavours`), registered with it as `keras_bn>BatchNormalization`, ...
    (the names saved files hold) and named as defined in `module`."""
    core_bn = batch_normalization.BatchNormalization
    core_brn = batch_renormalization.BatchRenormalization

    bn = type("BatchNormalization", (core_bn, flavour.NormalizationBase),
              {"__doc__": core_bn.__doc__, "_flavour": flavour, "__module__": module})
    brn = type("BatchRenormalization", (core_brn, bn),
               {"__doc__": core_brn.__doc__, "__module__": module})
    return flavour.register_serializable(bn), flavour.register_serializable(brn)


def quantization_classes(flavour: Flavour, module: str) -> tuple[type, type]:
    """`(QuantizedConvBN, ActivationQuantizer)` for `flavour`, registered as
    `keras_bn>QuantizedConvBN`, ... and named as defined in `module`."""
    made = []
    for core in (quantized_conv_bn.QuantizedConvBN, activation_quantizer.ActivationQuantizer):
        cls = type(core.__name__, (core, flavour.keras.layers.Layer),
                   {"__doc__": core.__doc__, "_flavour": flavour, "__module__": module})
        cls.__qualname__ = core.__name__
        made.append(flavour.register_serializable(cls))
    return made[0], made[1]
