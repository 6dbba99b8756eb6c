"""The Keras 3 flavour (`import keras`): every Keras-3-specific call keras_bn makes.

The twin of `tf_keras.py`, with the same names, so the layer core, the fold plan, the
rewrite, the verification and the walkers run on either flavour's models through
`keras_bn.flavour.of`.
Keras 3 picks its backend (TensorFlow, JAX, ...) from `KERAS_BACKEND` when it is first
imported; nothing here assumes TensorFlow except where it says so.
"""

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import keras
import numpy as np

from keras_bn.flavour import DType, Layer, Model, Tensor, Variable

#: The flavour's name in messages.
TITLE = "Keras 3"
#: How this flavour's classes are labelled in plans and tables ("keras.BatchNormalization").
LABEL = "keras"
#: ... and keras_bn's own layers of this flavour ("keras_bn.keras3.BatchNormalization").
OUR_LABEL = "keras_bn.keras3"

InputSpec = keras.layers.InputSpec
initializers = keras.initializers
regularizers = keras.regularizers
constraints = keras.constraints
Callback = keras.callbacks.Callback
Progbar = keras.utils.Progbar
ops = keras.ops

#: The built-in BatchNormalization class of this flavour (its `renorm=True` too).
BuiltinBatchNormalization = keras.layers.BatchNormalization


def backend() -> str:
    """The active Keras 3 backend: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


def register_serializable(cls: type) -> type:
    """Registers `cls` so `.keras` files holding it load without `custom_objects`."""
    return keras.saving.register_keras_serializable(package="keras_bn")(cls)


def is_graph_model(model: Model) -> bool:
    """A Sequential or functional model (whose graph its config describes)."""
    return isinstance(model, (keras.Sequential, keras.src.models.Functional))


def operations(model: Model) -> dict[str, Layer]:
    """Name -> every node of the model's graph: its layers and its ops (`x * 2.0`,
    `keras.ops.*` calls are Operations in Keras 3, not layers)."""
    return {op.name: op for op in getattr(model, "operations", model.layers)}


def is_input_layer(layer: Layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def is_linear(activation: Callable | None) -> bool:
    return activation is None or activation is keras.activations.linear


def output_rank(layer: Layer) -> int:
    return len(layer.output.shape)


def input_rank(layer: Layer) -> int:
    return len(layer.input.shape)


def call_input(model: Model, layer: Layer) -> Tensor:
    """The input tensor(s) of `layer`'s call in `model`'s graph. `layer.input` is the
    input of its first call anywhere: for a layer also called in another model (shared
    between models built on other Inputs), that model's tensor, not connected to
    `model`'s inputs."""
    from keras.src.ops.function import make_node_key

    graph = getattr(model, "_functional", None) or model  # a Sequential's own graph
    nodes = getattr(graph, "_nodes", ())
    for index, node in enumerate(layer._inbound_nodes):
        if make_node_key(layer, index) in nodes:
            tensors = node.input_tensors
            return tensors[0] if len(tensors) == 1 else tensors
    return layer.input


def input_names(model: Model) -> list[str]:
    """The names of the model's Input layers, in input order (Keras 3 has no
    `model.input_names`; an unnamed Input is called `input_layer`, `input_layer_1`...)."""
    return [t._keras_history.operation.name if hasattr(t, "_keras_history") else f"input_{i}"
            for i, t in enumerate(model.inputs)]


def output_names(model: Model) -> list[str]:
    """The names of the layers whose outputs are the model outputs, in output order."""
    return [t._keras_history.operation.name if hasattr(t, "_keras_history") else f"output_{i}"
            for i, t in enumerate(model.outputs)]


def numpy_dtype(variable: Variable) -> np.dtype:
    """The numpy dtype of a variable or tensor spec."""
    return np.dtype(keras.backend.standardize_dtype(variable.dtype))


def get_values(tensors: Iterable[Variable]) -> list[np.ndarray]:
    """Numpy values of variables or tensors."""
    return [keras.ops.convert_to_numpy(t) for t in tensors]


def set_values(pairs: Iterable[tuple[Variable, Any]]) -> None:
    """Assigns `(variable, value)` pairs."""
    for variable, value in pairs:
        variable.assign(np.asarray(value, numpy_dtype(variable)))


def flatten(structure: Any) -> list:
    return keras.tree.flatten(structure)


def is_builtin_layer_class(cls: type) -> bool:
    """Whether `cls` is one of `keras.layers` (known to `from_config` by itself)."""
    return getattr(keras.layers, cls.__name__, None) is cls


def is_revived(layer: Layer) -> bool:
    """Keras 3 loads no SavedModel as a model, so no layer of it is revived."""
    return False


def revives(class_name: str) -> bool:
    """Keras 3 revives no class from a SavedModel (it loads none as a model)."""
    return False


def registered_name(cls: type) -> str:
    return keras.saving.get_registered_name(cls)


def unsafe_deserialization() -> AbstractContextManager:
    """A context in which `from_config` may rebuild Lambda layers, for models whose code
    already runs in this process (Keras 3's own scope; public API has only a global)."""
    from keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)


def add_parameter(layer: Layer, name: str, shape: tuple, dtype: DType, initializer: Any,
                  regularizer: Any = None, constraint: Any = None) -> Variable:
    """A trainable per-channel weight kept in `dtype` (float32 under mixed precision)."""
    return layer.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer,
                            regularizer=regularizer, constraint=constraint, trainable=True,
                            autocast=False)


def add_statistic(layer: Layer, name: str, shape: tuple, dtype: DType,
                  initializer: Any) -> Variable:
    """A non-trainable statistic: saved with the model, averaged across replicas."""
    return layer.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer,
                            trainable=False, autocast=False, aggregation="mean")


def add_counter(layer: Layer, name: str) -> Variable:
    """A non-trainable int32 counter (JAX has no int64 without x64 mode; 2^31 steps)."""
    return layer.add_weight(name=name, shape=(), dtype="int32", initializer="zeros",
                            trainable=False, autocast=False,
                            aggregation="only_first_replica")


def custom_objects() -> dict[str, Any]:
    """The global registry of this flavour's serializable objects ("package>Name" ->
    object), which its loaders search before any module."""
    return keras.saving.get_custom_objects()


# -- The layers: what the layer core (keras_bn.layers) asks of its flavour ----------------

#: The base class of keras_bn's Keras 3 layers.
NormalizationBase = keras.layers.Layer


def is_float(dtype: DType) -> bool:
    return "float" in keras.backend.standardize_dtype(dtype)


def dtype_name(dtype: DType) -> str:
    """`"float32"`, `"bfloat16"`, ...: a dtype as Keras names it."""
    return keras.backend.standardize_dtype(dtype)


def shape_tuple(input_shape: Any) -> tuple | None:
    """A build's `input_shape` as a tuple (None for unknown dimensions), or None."""
    return None if input_shape is None else tuple(input_shape)


def parameter_dtype(layer: Layer) -> DType:
    """The dtype of gamma, beta and the statistics: the policy's variable dtype
    (float32 under mixed precision)."""
    return layer.variable_dtype


def output_dtype(layer: Layer, x: Tensor) -> DType:
    """The dtype of the layer's output: its compute dtype."""
    del x
    return layer.compute_dtype


def training_flag(layer: Layer, training: Any) -> Any:
    """The effective `training` value of a call, a Python bool: Keras 3 passes one (None
    is inference); a layer with `trainable=False` always runs in inference mode."""
    return bool(training) and layer.trainable


def train_or_infer(training: Any, train: Callable[[Any], Tensor],
                   infer: Callable[[], Tensor]) -> Tensor:
    """`train(True)` if `training` else `infer()`. Keras 3's `training` is a Python bool
    (`training_flag`), so this branch is taken in Python."""
    return train(True) if training else infer()


def fuses_elementwise() -> bool:
    """Whether the backend's compiler fuses chains of elementwise ops into one pass
    (JAX's XLA), so that fewer ops written is no faster."""
    return backend() == "jax"


def select(condition: Tensor, if_true: Callable[[], Any],
           if_false: Callable[[], Any]) -> Any:
    """`if_true()` where the scalar boolean tensor `condition` holds, else `if_false()`:
    one branch computed (`keras.ops.cond`), except on JAX, where both are and
    `keras.ops.where` picks (a `lax.cond` keeps XLA from fusing the elementwise ops
    around it: measured, a QAT training step 1.09x the float one with where, 1.71x with
    cond)."""
    if backend() == "jax":
        return keras.ops.where(condition, if_true(), if_false())
    return keras.ops.cond(condition, if_true, if_false)


def fused_fake_quant(x: Tensor, low: Tensor, high: Tensor, scale: Tensor,
                     zero_point: Tensor) -> Tensor | None:
    """`x` on the 8-bit grid over `[low, high]` (scalar tensors, the range holding zero;
    `scale` and `zero_point` its grid, `keras_bn.quantization.fake_quant.grid`) by the
    backend's fused kernel, whose gradient is the straight-through estimator inside the
    range: TensorFlow's `FakeQuantWithMinMaxVars`, torch's
    `fake_quantize_per_tensor_affine` (one pass each way instead of a dozen elementwise
    ops; the same values, halves of a step aside). None on JAX, whose compiler fuses the
    composed ops itself."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.quantization.fake_quant_with_min_max_vars(
            x, tf.stop_gradient(low), tf.stop_gradient(high), num_bits=8)
    if backend() == "torch":
        import torch

        return torch.fake_quantize_per_tensor_affine(
            x, scale.detach().reshape(1), zero_point.detach().reshape(1).to(torch.int32),
            -128, 127)
    return None


def fake_quant_op(x: Tensor, low: float, high: float) -> Tensor:
    """TensorFlow's own 8-bit fake quantization of `x` over `[low, high]`
    (`FakeQuantWithMinMaxArgs`, the op both converters read as a tensor's int8 range) on
    the TensorFlow backend; None on the others, which have no such op."""
    if backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.quantization.fake_quant_with_min_max_args(x, min=low, max=high, num_bits=8)


def assign(layer: Layer, variable: Variable, value: Tensor) -> None:
    """`variable.assign(value)` (Keras 3 tracks the new value itself, on every backend)."""
    del layer
    variable.assign(value)


def assign_add(layer: Layer, variable: Variable, delta: Tensor) -> None:
    del layer
    variable.assign_add(ops.cast(delta, variable.dtype))


def assert_batch_divides(x: Tensor, size: int, message: str) -> None:
    """At run time, for a batch whose size is unknown when the graph is built (the
    TensorFlow backend; JAX traces with static shapes, checked before)."""
    if backend() == "tensorflow":
        import tensorflow as tf

        tf.debugging.assert_equal(tf.shape(x)[0] % size, 0, message=message)


# -- The config schema: the tensors each call of a functional model's layer reads --------
#
# Keras 3 writes each call as `{"args": [...], "kwargs": {...}}` (every positional
# argument, constants as plain values), a tensor as `{"class_name": "__keras_tensor__",
# "config": {"keras_history": [layer_name, node_index, tensor_index], ...}}`, and its ops
# (`x * 2.0`, `keras.ops.*`) as nodes of their own that are not layers.

_KERAS_TENSOR = "__keras_tensor__"  # Keras 3's class name of a tensor reference


def _replace_references(value, make_ref):
    if isinstance(value, dict) and value.get("class_name") == _KERAS_TENSOR:
        return make_ref(value["config"]["keras_history"])
    if isinstance(value, (list, tuple)):
        return type(value)(_replace_references(item, make_ref) for item in value)
    if isinstance(value, dict):
        return {key: _replace_references(item, make_ref) for key, item in value.items()}
    return value


def _plain(model):
    """A functional subclass (keras-hub's Backbone and Task) as the plain functional model
    of its graph: the same layers and tensors, no constructor arguments in the config."""
    if isinstance(model, keras.Sequential) or type(model) is keras.src.models.Functional:
        return model
    return keras.src.models.Functional(model.input, model.output, name=model.name)


def plain_class(model: Model) -> type[Model]:
    """The class a rebuilt `model` has: Sequential, or plain Functional (a functional
    subclass's constructor takes its own arguments, not a graph)."""
    return keras.Sequential if isinstance(model, keras.Sequential) else \
        keras.src.models.Functional


def _mutable_references(value):
    """`value` copied, each tensor reference's `keras_history` (and a model output
    `[layer, node, tensor]`) a list the graph can rewire in place; every other tuple
    stays a tuple (keras-hub's `build` concatenates tuples)."""
    if isinstance(value, dict):
        copied = {key: _mutable_references(item) for key, item in value.items()}
        if copied.get("class_name") == _KERAS_TENSOR:
            history = copied["config"]["keras_history"]
            copied["config"]["keras_history"] = list(history)
        return copied
    if isinstance(value, (list, tuple)):
        return type(value)(_mutable_references(item) for item in value)
    return value


def _output_refs_as_lists(value):
    if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str):
        return list(value)
    if isinstance(value, dict):
        return {key: _output_refs_as_lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_output_refs_as_lists(item) for item in value]
    return value


def model_config(model: Model) -> dict:
    """The config of the model's graph: a functional subclass's (and a nested one's) as a
    plain functional model's, tensor references as mutable lists, other values as Keras
    gave them (tuples stay tuples)."""
    plain = _plain(model)
    config = _mutable_references(plain.get_config())
    if isinstance(plain, keras.Sequential):
        return config
    for key in ("input_layers", "output_layers"):
        config[key] = _output_refs_as_lists(config[key])
    layers = operations(plain)
    for entry in config["layers"]:
        layer = layers.get(entry["name"])
        if isinstance(layer, keras.src.models.Functional) and _plain(layer) is not layer:
            nested = keras.saving.serialize_keras_object(_plain(layer))
            entry.update(class_name=nested["class_name"], module=nested["module"],
                         registered_name=nested.get("registered_name"),
                         config=model_config(layer))
            entry.pop("build_config", None)
    return config


def rename(layer: Layer, name: str) -> None:
    """Gives a rebuilt layer its original's name (a constructor that drops `name`)."""
    layer.name = name


def sublayers(layer: Layer) -> list[Layer]:
    """The layers `layer` holds directly (a custom layer's blocks, a wrapper's layer); none
    for an op node."""
    if not isinstance(layer, keras.layers.Layer):
        return []
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk_references(inbound_nodes: Any, on_reference: Callable[[list], object]) -> None:
    """Calls `on_reference(keras_history)` (a mutable `[layer, node, tensor]` list) on
    every tensor reference of a layer's `inbound_nodes`."""
    if isinstance(inbound_nodes, dict) and inbound_nodes.get("class_name") == _KERAS_TENSOR:
        on_reference(inbound_nodes["config"]["keras_history"])
    elif isinstance(inbound_nodes, (list, tuple, dict)):
        for item in (inbound_nodes.values() if isinstance(inbound_nodes, dict)
                     else inbound_nodes):
            walk_references(item, on_reference)


def read_call(data: dict, make_ref: Callable[[list], object]) -> tuple[list, dict, list]:
    """One entry of a layer's `inbound_nodes` as `(args, kwargs, reads)`: the tensors of
    the first argument, the keyword arguments (tensors in them replaced by
    `make_ref([layer, node, tensor])`), and every tensor the call reads."""
    args, reads = [], []
    walk_references(data.get("args", [])[:1], lambda ref: args.append(make_ref(ref)))
    walk_references(data, lambda ref: reads.append(make_ref(ref)))
    return args, _replace_references(data.get("kwargs", {}), make_ref), reads


# -- Export: how a model of this flavour reaches the converters (TensorFlow backend) ------


def output_structure(model: Model) -> Any:
    """The model's outputs as it returns them: a tensor, a list, or a dict (nested)."""
    structure = getattr(model, "_outputs_struct", None)
    return model.outputs if structure is None else structure


def serving_function(model: Model, signature: list, output_names: list[str]) -> Any:
    """The concrete `tf.function` of the model's inference call on `signature` (the
    TensorFlow backend), returning a dict from `output_names` to the flat outputs."""
    import tensorflow as tf

    @tf.function(input_signature=signature)
    def serve(*inputs):
        return _named(model(list(inputs) if len(inputs) > 1 else inputs[0],
                            training=False), output_names)

    return serve.get_concrete_function()


def _named(outputs, output_names):
    return dict(zip(output_names, keras.tree.flatten(outputs)))


def tflite_content(model: Model, signature: list, output_names: list[str],
                   configure: Callable[[Any], None]) -> bytes:
    """The TFLite file of `model`, by the route of Keras 3's own LiteRT export (an
    `ExportArchive` -> SavedModel -> converter: a concrete function of a Keras 3 model
    converts to a file whose outputs are NaN, measured), with the outputs named
    `output_names`, limited to LiteRT's built-in ops so the file runs without the Flex
    delegate, once `configure(converter)` has set
    its options."""
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda *inputs: _named(
            model(list(inputs) if len(inputs) > 1 else inputs[0], training=False),
            output_names), input_signature=signature)
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        configure(converter)
        return converter.convert()
