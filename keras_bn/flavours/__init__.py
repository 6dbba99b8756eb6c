"""Everything that differs between tf-keras and Keras 3: one module per flavour.

`tf_keras` and `keras3` define the same names (classes, functions, the `ops` the layer
core computes with); code outside this package reaches them only through
`keras_bn.flavour.of(obj)` (the flavour an object belongs to) or
`keras_bn.flavour.named(name)`, so a flavour difference lives in one place.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type checker holds both modules to the one interface
    from keras_bn.flavour import Flavour
    from keras_bn.flavours import keras3, tf_keras

    _INTERFACE: tuple[Flavour, Flavour] = (tf_keras, keras3)
