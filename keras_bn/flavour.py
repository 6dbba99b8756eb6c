"""Which Keras flavour a model or layer belongs to: tf-keras or Keras 3.

Both can be imported in one process (tf-keras models and `import keras` models side by
side); each object is handled with the module of `keras_bn.flavours` whose classes it is
built from. Nothing here imports a flavour before it is asked for.
"""

import importlib
import sys
from types import ModuleType

#: The flavours, by the name `named` takes.
NAMES = ("tf_keras", "keras3")


def is_keras3(obj) -> bool:
    """Whether `obj` is a Keras 3 layer, model or op. Keras 3 objects exist only once
    `keras` has been imported, so the check never imports it."""
    keras3 = sys.modules.get("keras")
    operation = getattr(keras3, "Operation", None)
    return operation is not None and isinstance(obj, operation)


def named(name: str) -> ModuleType:
    """The flavour module `keras_bn.flavours.<name>`, `name` one of `NAMES`."""
    if name not in NAMES:
        raise ValueError(f"unknown Keras flavour {name!r}; expected one of {NAMES}")
    return importlib.import_module(f"keras_bn.flavours.{name}")


def of(obj) -> ModuleType:
    """The flavour module of `obj` (a model, layer or op of either flavour):
    `keras_bn.flavours.keras3` or `keras_bn.flavours.tf_keras`."""
    return named("keras3" if is_keras3(obj) else "tf_keras")
