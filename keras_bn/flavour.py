"""Which Keras flavour a model or layer belongs to: tf-keras or Keras 3.

Both can be imported in one process (tf-keras models and `import keras` models side by
side); each object is handled with the plumbing module (`_keras`, `_keras3`) of the
flavour whose classes it is built from.
"""

import sys


def is_keras3(obj):
    """Whether `obj` is a Keras 3 layer, model or op. Keras 3 objects exist only once
    `keras` has been imported, so the check never imports it."""
    keras3 = sys.modules.get("keras")
    operation = getattr(keras3, "Operation", None)
    return operation is not None and isinstance(obj, operation)


def of(obj):
    """The plumbing module of `obj`'s flavour: `keras_bn._keras3` or `keras_bn._keras`."""
    if is_keras3(obj):
        from keras_bn import _keras3

        return _keras3
    from keras_bn import _keras

    return _keras
