"""A one-entry memo of what was derived from a model: kept while the model object is
alive and its weights (and the other inputs of the derivation) are unchanged."""

import hashlib
import weakref
from typing import Any

import numpy as np

from keras_bn import flavour
from keras_bn.flavour import Model


def weights_digest(model: Model, *arrays: Any) -> bytes:
    """A digest of the model's weights and of any further `arrays` (None for absent)."""
    digest = hashlib.blake2b(digest_size=16)
    for value in [*flavour.of(model).get_values(model.weights), *arrays]:
        if value is None:
            digest.update(b"none")
            continue
        value = np.ascontiguousarray(value)
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.digest()


class LastModel:
    """Holds the value derived from the last model it was asked about.

    `get(model, key, make)` returns the held value when `model` is the same object and
    `key` (with `weights_digest`: the weights and options it was made from) is equal,
    else drops the old value first and holds `make()`. The value goes when its model is
    garbage collected."""

    def __init__(self):
        self.entry = None  # (weakref to the model, key, value)

    def get(self, model, key, make):
        if self.entry is not None and self.entry[0]() is model and self.entry[1] == key:
            return self.entry[2]
        self.entry = None  # the old value goes before the new one is made
        value = make()

        def forget(ref):  # the model is gone: so is its value (not a newer model's)
            if self.entry is not None and self.entry[0] is ref:
                self.entry = None

        self.entry = (weakref.ref(model, forget), key, value)
        return value
