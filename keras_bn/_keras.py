"""The Keras flavour keras_bn is built on, and every Keras-specific call it makes.

All tf-keras code of the package goes through this module; `_keras3.py` is its Keras 3
twin with the same names, and `flavour.of(obj)` picks the one an object belongs to.
"""

import numpy as np
import tensorflow as tf
import tf_keras as keras

#: How this flavour's classes are labelled in plans and tables ("tf_keras.Dense").
LABEL = "tf_keras"

Layer = keras.layers.Layer
InputSpec = keras.layers.InputSpec
initializers = keras.initializers
regularizers = keras.regularizers
constraints = keras.constraints
serialize = keras.saving.serialize_keras_object
deserialize = keras.saving.deserialize_keras_object

#: The built-in BatchNormalization class of this flavour (fold and freeze also handle it).
BuiltinBatchNormalization = keras.layers.BatchNormalization


def backend():
    """tf-keras always runs on TensorFlow."""
    return "tensorflow"


def register_serializable(cls):
    """Registers `cls` so saved models load it without `custom_objects`."""
    return keras.saving.register_keras_serializable(package="keras_bn")(cls)


def is_graph_model(model):
    """A Sequential or functional model (whose graph its config describes), not a
    subclassed one. tf-keras marks these with `_is_graph_network`; no public API says it."""
    return isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)


def operations(model):
    """Name -> every node of the model's graph (in tf-keras, TF ops are layers too)."""
    return {layer.name: layer for layer in model.layers}


def is_input_layer(layer):
    return isinstance(layer, keras.layers.InputLayer)


def is_linear(activation):
    return activation is None or activation is keras.activations.linear


def output_rank(layer):
    return len(layer.output_shape)


def input_rank(layer):
    return len(layer.input_shape)


def input_names(model):
    return list(model.input_names)


def output_names(model):
    return list(model.output_names)


def numpy_dtype(variable):
    """The numpy dtype of a variable or tensor spec."""
    return tf.as_dtype(variable.dtype).as_numpy_dtype


def get_values(tensors):
    """Numpy values of variables or tensors, in one call."""
    return keras.backend.batch_get_value(tensors)


def set_values(pairs):
    """Assigns `(variable, value)` pairs in one call."""
    keras.backend.batch_set_value(list(pairs))


def flatten(structure):
    return tf.nest.flatten(structure)


def is_builtin_layer_class(cls):
    """Whether `cls` is one of `tf_keras.layers` (known to `from_config` by itself)."""
    return getattr(keras.layers, cls.__name__, None) is cls


def registered_name(cls):
    return keras.saving.get_registered_name(cls)


def training_flag(layer, training):
    """The effective `training` value of a call: a Python bool or a boolean tensor.

    `None` follows the Keras learning phase; a layer with `trainable=False` always runs in
    inference mode (the tf-keras 2 semantics for BatchNormalization).
    """
    if training is None:
        training = keras.backend.learning_phase()
    if isinstance(training, int):
        training = bool(training)
    if not layer.trainable:
        training = False
    return training


def add_parameter(layer, name, shape, dtype, initializer, regularizer=None,
                  constraint=None):
    """A trainable per-channel weight kept in `dtype` (float32 under mixed precision)."""
    return layer.add_weight(
        name=name, shape=shape, dtype=dtype, initializer=initializer,
        regularizer=regularizer, constraint=constraint, trainable=True,
        experimental_autocast=False)


def add_statistic(layer, name, shape, dtype, initializer):
    """A non-trainable statistic: saved with the model, averaged across replicas on read."""
    return layer.add_weight(
        name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)


def add_counter(layer, name):
    """A non-trainable int64 scalar counter (training steps, skipped updates)."""
    return layer.add_weight(
        name=name, shape=(), dtype=tf.int64, initializer="zeros", trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        experimental_autocast=False)


def saved_metadata():
    """An empty `SavedMetadata` protobuf (a SavedModel's `keras_metadata.pb`)."""
    from tf_keras.protobuf import saved_metadata_pb2

    return saved_metadata_pb2.SavedMetadata()


def unsafe_deserialization():
    """A context in which `from_config` may rebuild Lambda layers (Python code), for
    models whose code already runs in this process. tf-keras offers only a global switch
    publicly; its SafeModeScope limits the lift to the `with` block."""
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)


def custom_objects():
    """The global registry of this flavour's serializable objects ("package>Name" ->
    object), which its loaders search before any module."""
    return keras.saving.get_custom_objects()
