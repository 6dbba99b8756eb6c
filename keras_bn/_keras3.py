"""The Keras 3 flavour (`import keras`): every Keras-3-specific call keras_bn makes.

The twin of `_keras.py` (tf-keras), with the same names, so the fold plan, the rewrite,
the verification and the walkers run on either flavour's models through `flavour.of`.
Keras 3 picks its backend (TensorFlow, JAX, ...) from `KERAS_BACKEND` when it is first
imported; nothing here assumes TensorFlow except where it says so.
"""

import keras
import numpy as np

#: How this flavour's classes are labelled in plans and tables ("keras.BatchNormalization").
LABEL = "keras"

Layer = keras.layers.Layer
InputSpec = keras.layers.InputSpec
initializers = keras.initializers
regularizers = keras.regularizers
constraints = keras.constraints
ops = keras.ops

#: The built-in BatchNormalization class of this flavour (its `renorm=True` too).
BuiltinBatchNormalization = keras.layers.BatchNormalization


def backend():
    """The active Keras 3 backend: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


def register_serializable(cls):
    """Registers `cls` so `.keras` files holding it load without `custom_objects`."""
    return keras.saving.register_keras_serializable(package="keras_bn")(cls)


def is_graph_model(model):
    """A Sequential or functional model (whose graph its config describes)."""
    return isinstance(model, (keras.Sequential, keras.src.models.Functional))


def operations(model):
    """Name -> every node of the model's graph: its layers and its ops (`x * 2.0`,
    `keras.ops.*` calls are Operations in Keras 3, not layers)."""
    return {op.name: op for op in getattr(model, "operations", model.layers)}


def is_input_layer(layer):
    return isinstance(layer, keras.layers.InputLayer)


def is_linear(activation):
    return activation is None or activation is keras.activations.linear


def output_rank(layer):
    return len(layer.output.shape)


def input_rank(layer):
    return len(layer.input.shape)


def input_names(model):
    """The names of the model's Input layers, in input order (Keras 3 has no
    `model.input_names`; an unnamed Input is called `input_layer`, `input_layer_1`...)."""
    return [t._keras_history.operation.name if hasattr(t, "_keras_history") else f"input_{i}"
            for i, t in enumerate(model.inputs)]


def output_names(model):
    """The names of the layers whose outputs are the model outputs, in output order."""
    return [t._keras_history.operation.name if hasattr(t, "_keras_history") else f"output_{i}"
            for i, t in enumerate(model.outputs)]


def numpy_dtype(variable):
    """The numpy dtype of a variable or tensor spec."""
    return np.dtype(keras.backend.standardize_dtype(variable.dtype))


def get_values(tensors):
    """Numpy values of variables or tensors."""
    return [keras.ops.convert_to_numpy(t) for t in tensors]


def set_values(pairs):
    """Assigns `(variable, value)` pairs."""
    for variable, value in pairs:
        variable.assign(np.asarray(value, numpy_dtype(variable)))


def flatten(structure):
    return keras.tree.flatten(structure)


def is_builtin_layer_class(cls):
    """Whether `cls` is one of `keras.layers` (known to `from_config` by itself)."""
    return getattr(keras.layers, cls.__name__, None) is cls


def registered_name(cls):
    return keras.saving.get_registered_name(cls)


def unsafe_deserialization():
    """A context in which `from_config` may rebuild Lambda layers, for models whose code
    already runs in this process (Keras 3's own scope; public API has only a global)."""
    from keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)


def add_parameter(layer, name, shape, dtype, initializer, regularizer=None,
                  constraint=None):
    """A trainable per-channel weight kept in `dtype` (float32 under mixed precision)."""
    return layer.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer,
                            regularizer=regularizer, constraint=constraint, trainable=True,
                            autocast=False)


def add_statistic(layer, name, shape, dtype, initializer):
    """A non-trainable statistic: saved with the model, averaged across replicas."""
    return layer.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer,
                            trainable=False, autocast=False, aggregation="mean")


def add_counter(layer, name):
    """A non-trainable int32 counter (JAX has no int64 without x64 mode; 2^31 steps)."""
    return layer.add_weight(name=name, shape=(), dtype="int32", initializer="zeros",
                            trainable=False, autocast=False,
                            aggregation="only_first_replica")




def custom_objects():
    """The global registry of this flavour's serializable objects ("package>Name" ->
    object), which its loaders search before any module."""
    return keras.saving.get_custom_objects()
