"""The tf-keras flavour: every tf-keras-specific call keras_bn makes.

All tf-keras code of the package goes through this module; `keras3.py` is its Keras 3
twin with the same names, and `keras_bn.flavour.of(obj)` picks the one an object
belongs to. The layer core reaches tensors through `ops` (`keras.ops`'s names, in
TensorFlow) and the Keras layer machinery through the functions under "The layers".
"""

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from importlib import import_module as _import_module
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_bn.flavour import DType, Layer, Model, Tensor, Variable
from keras_bn.flavours import tf_ops as ops

#: The flavour's name in messages.
TITLE = "tf-keras"
#: How this flavour's classes are labelled in plans and tables ("tf_keras.Dense").
LABEL = "tf_keras"
#: ... and keras_bn's own layers of this flavour ("keras_bn.BatchNormalization").
OUR_LABEL = "keras_bn"

InputSpec = keras.layers.InputSpec
initializers = keras.initializers
regularizers = keras.regularizers
constraints = keras.constraints
Callback = keras.callbacks.Callback
Progbar = keras.utils.Progbar

#: The built-in BatchNormalization class of this flavour (fold and freeze also handle it).
BuiltinBatchNormalization = keras.layers.BatchNormalization


def backend() -> str:
    """tf-keras always runs on TensorFlow."""
    return "tensorflow"


def register_serializable(cls: type) -> type:
    """Registers `cls` so saved models load it without `custom_objects`."""
    return keras.saving.register_keras_serializable(package="keras_bn")(cls)


def is_graph_model(model: Model) -> bool:
    """A Sequential or functional model (whose graph its config describes), not a
    subclassed one. tf-keras marks these with `_is_graph_network`; no public API says it."""
    return isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)


def operations(model: Model) -> dict[str, Layer]:
    """Name -> every node of the model's graph (in tf-keras, TF ops are layers too)."""
    return {layer.name: layer for layer in model.layers}


def is_input_layer(layer: Layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def is_linear(activation: Callable | None) -> bool:
    return activation is None or activation is keras.activations.linear


def output_rank(layer: Layer) -> int:
    return len(layer.output_shape)


def input_rank(layer: Layer) -> int:
    return len(layer.input_shape)


def call_input(model: Model, layer: Layer) -> Tensor:
    """The input tensor(s) of `layer`'s call in `model`'s graph. `layer.input` is that of
    its only call (it raises for a layer called more than once, in any model): for a
    layer also called in another model, the call that belongs to `model`."""
    nodes = getattr(model, "_network_nodes", ())
    for index in range(len(layer._inbound_nodes)):
        if f"{layer.name}_ib-{index}" in nodes:
            return layer.get_input_at(index)
    return layer.input


def input_names(model: Model) -> list[str]:
    return list(model.input_names)


def output_names(model: Model) -> list[str]:
    return list(model.output_names)


def numpy_dtype(variable: Variable) -> np.dtype:
    """The numpy dtype of a variable or tensor spec."""
    return tf.as_dtype(variable.dtype).as_numpy_dtype


def get_values(tensors: Iterable[Variable]) -> list[np.ndarray]:
    """Numpy values of variables or tensors, in one call."""
    return keras.backend.batch_get_value(tensors)


def set_values(pairs: Iterable[tuple[Variable, Any]]) -> None:
    """Assigns `(variable, value)` pairs in one call."""
    keras.backend.batch_set_value(list(pairs))


def flatten(structure: Any) -> list:
    return tf.nest.flatten(structure)


def is_builtin_layer_class(cls: type) -> bool:
    """Whether `cls` is one of `tf_keras.layers` (known to `from_config` by itself)."""
    return getattr(keras.layers, cls.__name__, None) is cls


#: Where tf-keras makes the classes of layers it revives from a SavedModel's graphs.
_REVIVED_MODULE = "tf_keras.src.saving.legacy.saved_model.load"


def is_revived(layer: Layer) -> bool:
    """Whether `layer` was revived from a SavedModel without its class: tf-keras made it
    a class named after the saved one, whose calls run the saved graph functions."""
    return type(layer).__module__ == _REVIVED_MODULE and not isinstance(layer, keras.Model)


def revives(class_name: str) -> bool:
    """Whether tf-keras's SavedModel loader would revive a layer of class `class_name`
    from its saved graph: only when its lookup by name (the registry, then the built-in
    layers; it imports nothing) finds nothing, so no constructor or function the name
    might reach is called."""
    from tf_keras.src.layers import serialization

    serialization.populate_deserializable_objects()
    return keras.saving.get_registered_object(
        class_name, None, serialization.LOCAL.ALL_OBJECTS) is None


def registered_name(cls: type) -> str:
    return keras.saving.get_registered_name(cls)


def add_parameter(layer: Layer, name: str, shape: tuple, dtype: DType, initializer: Any,
                  regularizer: Any = None, constraint: Any = None) -> Variable:
    """A trainable per-channel weight kept in `dtype` (float32 under mixed precision)."""
    return layer.add_weight(
        name=name, shape=shape, dtype=dtype, initializer=initializer,
        regularizer=regularizer, constraint=constraint, trainable=True,
        experimental_autocast=False)


def add_statistic(layer: Layer, name: str, shape: tuple, dtype: DType,
                  initializer: Any) -> Variable:
    """A non-trainable statistic: saved with the model, averaged across replicas on read."""
    return layer.add_weight(
        name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)


def add_counter(layer: Layer, name: str) -> Variable:
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


def unsafe_deserialization() -> AbstractContextManager:
    """A context in which `from_config` may rebuild Lambda layers (Python code), for
    models whose code already runs in this process. tf-keras offers only a global switch
    publicly; its SafeModeScope limits the lift to the `with` block."""
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)


def custom_objects() -> dict[str, Any]:
    """The global registry of this flavour's serializable objects ("package>Name" ->
    object), which its loaders search before any module."""
    return keras.saving.get_custom_objects()


# -- The layers: what the layer core (keras_bn.layers) asks of its flavour ----------------


class NormalizationBase(keras.layers.Layer):
    """The base class of keras_bn's tf-keras layers: tf-keras's Layer, with the weight
    lists of tf-keras's BatchNormalization."""

    def _without_counter(self, variables):
        return [v for v in variables if v is not getattr(self, "skipped_updates", None)]

    @property
    def non_trainable_weights(self):
        """The moving statistics, as tf-keras's BatchNormalization lists them.

        `skipped_updates` is a variable of the layer (saved in `.keras` files and TF
        checkpoints) but not one of its Keras weights, so `get_weights`/`set_weights`
        lists, `model.set_weights`, and `.h5` weight files are interchangeable with
        tf-keras's layer in both directions.
        """
        return self._without_counter(super().non_trainable_weights)

    def load_own_variables(self, store: Any) -> None:
        """As tf-keras's; also reads the variables a tf-keras BatchNormalization saved
        (`.keras` files and `.weights.h5`): all but `skipped_updates`, in order."""
        variables = self._without_counter(self._trainable_weights + self._non_trainable_weights)
        if len(store.keys()) == len(variables):
            for i, variable in enumerate(variables):
                variable.assign(store[f"{i}"])
            return
        super().load_own_variables(store)


def is_float(dtype: DType) -> bool:
    return tf.as_dtype(dtype).is_floating


def dtype_name(dtype: DType) -> str:
    """`"float32"`, `"bfloat16"`, ...: a dtype as Keras names it."""
    return tf.as_dtype(dtype).name


def shape_tuple(input_shape: Any) -> tuple | None:
    """A build's `input_shape` as a tuple (None for unknown dimensions), or None when
    even the rank is unknown."""
    shape = tf.TensorShape(input_shape)
    return None if shape.rank is None else tuple(shape.as_list())


def parameter_dtype(layer: Layer) -> DType:
    """The dtype of gamma, beta and the statistics: float32 under a float16/bfloat16
    policy (mixed or not), as tf-keras's BatchNormalization."""
    if layer.dtype in ("float16", "bfloat16", None):
        return tf.float32
    return tf.as_dtype(layer.dtype)


def output_dtype(layer: Layer, x: Tensor) -> DType:
    """The dtype of the layer's output for input `x`: the input's own (tf-keras casts
    floating inputs to the compute dtype before `call`, unless autocast is off)."""
    return x.dtype


def training_flag(layer: Layer, training: Any) -> Any:
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


def train_or_infer(training: Any, train: Callable[[Any], Tensor],
                   infer: Callable[[], Tensor]) -> Tensor:
    """`train(training)` where the boolean tensor `training` is true, else `infer()`.

    In TF1 graph mode (v1 `fit`, sessions, estimators) the updates must be ops of the
    outer graph, not of a `tf.cond` branch, for `layer.updates` to hold them (as tf-keras
    builds them): both branches are built there, and the updates apply only where
    `training` is true (`train` receives the tensor to gate them with).
    """
    smart_cond = tf.__internal__.smart_cond.smart_cond
    if not tf.compat.v1.executing_eagerly_outside_functions():
        y = train(training)
        return smart_cond(training, lambda: y, infer)
    return smart_cond(training, lambda: train(True), infer)


def fuses_elementwise() -> bool:
    """Whether the backend's compiler fuses chains of elementwise ops into one pass:
    not TensorFlow's, on CPU."""
    return False


def select(condition: Tensor, if_true: Callable[[], Any],
           if_false: Callable[[], Any]) -> Any:
    """`if_true()` where the scalar boolean tensor `condition` holds, else `if_false()`;
    only that branch is computed (`tf.cond`)."""
    return tf.cond(condition, if_true, if_false)


def fused_fake_quant(x: Tensor, low: Tensor, high: Tensor, scale: Tensor,
                     zero_point: Tensor) -> Tensor | None:
    """`x` on the 8-bit grid over `[low, high]` (scalar tensors, the range holding zero)
    by TensorFlow's fused `FakeQuantWithMinMaxVars`, whose gradient is the
    straight-through estimator inside the range (one pass each way instead of a dozen
    elementwise ops; the same values as the composed grid, halves of a step aside)."""
    del scale, zero_point  # the kernel computes its grid from the range
    return tf.quantization.fake_quant_with_min_max_vars(
        x, tf.stop_gradient(low), tf.stop_gradient(high), num_bits=8)


def fake_quant_op(x: Tensor, low: float, high: float) -> Tensor:
    """TensorFlow's own 8-bit fake quantization of `x` over `[low, high]`
    (`FakeQuantWithMinMaxArgs`, the op both converters read as a tensor's int8 range)."""
    return tf.quantization.fake_quant_with_min_max_args(x, min=low, max=high, num_bits=8)


def assign(layer: Layer, variable: Variable, value: Tensor) -> None:
    """`variable.assign(value)`, registered as an update so that TF1 graph mode
    (`layer.updates`, run by v1 `fit` and sessions) applies it too. In eager execution
    and in `tf.function` the assignment itself runs, as in tf-keras."""
    layer.add_update(variable.assign(value))


def assign_add(layer: Layer, variable: Variable, delta: Tensor) -> None:
    """`variable.assign_add(delta)`, registered as an update (see `assign`)."""
    layer.add_update(variable.assign_add(tf.cast(delta, variable.dtype)))


def assert_batch_divides(x: Tensor, size: int, message: str) -> None:
    """At run time, for a batch whose size is unknown when the graph is built."""
    tf.debugging.assert_equal(tf.shape(x)[0] % size, 0, message=message)


# -- The config schema: the tensors each call of a functional model's layer reads --------
#
# A functional model's config lists each layer with its `inbound_nodes`, one entry per
# call. tf-keras writes a call as a nested structure (a tensor, a list or dict of
# tensors) whose leaves are *tensor references* `[layer_name, node_index, tensor_index,
# kwargs]` (kwargs optional), or `["_CONSTANT_VALUE", -1, value, kwargs]` for a constant
# first argument of an op layer (`x * 0.5`, `tf.nn.relu6(x)`: `TFOpLambda`,
# `SlicingOpLambda`). The keyword arguments may hold tensor references too (`x + y`
# stores `y` there). A list counts as a reference exactly when tf-keras's own loader
# treats it as one: 3 or 4 items, a string first. Layer names may contain `/`.

_CONSTANT = "_CONSTANT_VALUE"  # tf-keras's marker for a constant first argument


def _is_reference(value):
    return isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)


def _walk(value, on_reference, into_kwargs=True):
    if _is_reference(value):
        on_reference(value)
        if into_kwargs and len(value) == 4:
            _walk(value[3], on_reference)
    elif isinstance(value, (list, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            _walk(item, on_reference, into_kwargs)


def _replace_references(value, make_ref):
    if _is_reference(value) and value[0] != _CONSTANT:
        return make_ref(value)
    if isinstance(value, list):
        return [_replace_references(item, make_ref) for item in value]
    if isinstance(value, dict):
        return {key: _replace_references(item, make_ref) for key, item in value.items()}
    return value


_FUNCTIONAL = keras.src.engine.functional.Functional


def _plain(model):
    """A functional subclass as the plain functional model of its graph: the same layers
    and tensors, no constructor arguments in the config."""
    if isinstance(model, keras.Sequential) or type(model) is _FUNCTIONAL:
        return model
    return _FUNCTIONAL(model.input, model.output, name=model.name)


def plain_class(model: Model) -> type[Model]:
    """The class a rebuilt `model` has: Sequential, or plain Functional (a functional
    subclass's constructor takes its own arguments, not a graph)."""
    return keras.Sequential if isinstance(model, keras.Sequential) else _FUNCTIONAL


def model_config(model: Model) -> dict:
    """The config of the model's graph, as `from_config` takes it back: a functional
    subclass's (and a nested one's) as a plain functional model's."""
    plain = _plain(model)
    config = plain.get_config()
    if isinstance(plain, keras.Sequential):
        return config
    layers = operations(plain)
    for entry in config["layers"]:
        layer = layers.get(entry["name"])
        if is_graph_model(layer) and _plain(layer) is not layer:
            nested = keras.layers.serialize(_plain(layer))
            entry.update(class_name=nested["class_name"], config=model_config(layer))
            for key in ("module", "registered_name"):
                if key in nested:
                    entry[key] = nested[key]
            entry.pop("build_config", None)
    return config


def rename(layer: Layer, name: str) -> None:
    """Gives a rebuilt layer its original's name (a constructor that drops `name`)."""
    layer._name = name  # `name` is read-only in tf-keras


def sublayers(layer: Layer) -> list[Layer]:
    """The layers `layer` holds directly (a custom layer's blocks, a wrapper's layer); none
    for an op node."""
    if not isinstance(layer, keras.layers.Layer):
        return []
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk_references(inbound_nodes: Any, on_reference: Callable[[list], object]) -> None:
    """Calls `on_reference(ref)` on every tensor reference of a layer's `inbound_nodes`,
    `ref` a mutable list whose first three items are `[layer, node, tensor]`."""
    _walk(inbound_nodes, lambda ref: ref[0] != _CONSTANT and on_reference(ref))


def read_call(data: dict, make_ref: Callable[[list], object]) -> tuple[list, dict, list]:
    """One entry of a layer's `inbound_nodes` as `(args, kwargs, reads)`: the tensors of
    the first argument, the keyword arguments (tensors in them replaced by
    `make_ref([layer, node, tensor])`), and every tensor the call reads."""
    args, kwargs, reads = [], {}, []

    def first_argument(ref):
        nonlocal kwargs
        if ref[0] != _CONSTANT:
            args.append(make_ref(ref))
        if len(ref) == 4 and ref[3]:
            kwargs = _replace_references(ref[3], make_ref)

    # The first argument's references sit at the top of the structure; their kwargs are
    # the call's keyword arguments (the same dict, repeated in each reference).
    _walk(data, first_argument, into_kwargs=False)
    walk_references(data, lambda ref: reads.append(make_ref(ref)))
    return args, kwargs, reads


# -- Export: how a model of this flavour reaches the converters ---------------------------


def output_structure(model: Model) -> Any:
    """The model's outputs as it returns them: a tensor, a list, or a dict (nested)."""
    structure = getattr(model, "_nested_outputs", None)
    return model.outputs if structure is None else structure


def serving_function(model: Model, signature: list, output_names: list[str]) -> Any:
    """The concrete `tf.function` of the model's inference call on `signature`, returning
    a dict from `output_names` to the flat outputs (in the order of `model.outputs`)."""

    @tf.function(input_signature=signature)
    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        return dict(zip(output_names, tf.nest.flatten(outputs)))

    return serve.get_concrete_function()


def tflite_content(model: Model, signature: list, output_names: list[str],
                   configure: Callable[[Any], None]) -> bytes:
    """The TFLite file of `model`: its serving function (outputs named `output_names`)
    through `tf.lite.TFLiteConverter` once `configure(converter)`
    has set its options. The converter saves the function as a SavedModel first; it is
    given a plain `tf.Module` holding the model's variables to save with it, not the model,
    whose SavedModel tf-keras builds by tracing every layer's call (DenseNet121 at 96x96:
    35 s with the model, 7 s with the module, the same file)."""
    variables = tf.Module()
    variables.held = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serving_function(model, signature, output_names)], variables)
    configure(converter)
    return converter.convert()


# `import keras_bn` registers its tf-keras layers right after tf_keras is first imported
# (so tf-keras's own loaders find them); when this module was that first importer, it
# was not complete then, and the layers, which need it, are registered now.
_import_module("keras_bn.layers.tf_keras")
