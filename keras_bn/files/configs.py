"""Checking a parsed model configuration against the allowlist.

Every dict with a "class_name" is a request to the loader (tf-keras and Keras 3, their
current and legacy formats alike): build a class, look up a function, rebuild a value.
Each request must be on `keras_bn.files.allowlist` (or registered by the user's own
`--import`), with exactly the module and registered name the loader resolves it by: a
registered name is looked up in the global registry before the module, so a built-in's
must be absent or its own class name. Strings that a layer resolves by name (an
activation, an initializer, ...) and the functions op layers call are checked too, and
the arguments a layer would read as a path must be inline values. The compile
configuration is skipped: models load with `compile=False`, which never reads it.
"""

from collections.abc import Callable
from typing import NamedTuple

from keras_bn.files import allowlist


class Refusal(NamedTuple):
    """A request of the file that is not on the allowlist."""

    layer: str  # the layer that asks for it ("(model)" outside any layer)
    what: str  # what loading it would make the loader do
    custom_class: str | None = None  # a class neither Keras nor keras_bn has, by name
    class_name: str | None = None  # the name the loader would look up, for a class
    package: str | None = None  # the top-level package of a module the loader would import


#: Keys of a model configuration that the loaders never deserialize with compile=False.
_NOT_LOADED = ("compile_config", "training_config")


def refusals(config: dict | list, custom: frozenset[str] | set[str] = frozenset(),
             revivable: Callable[[str], bool] | None = None) -> list[Refusal]:
    """Every request in a parsed configuration that is not on the allowlist, with what
    loading it would make the loader do.

    Args:
      config: The parsed JSON (a dict or list) of a model's configuration.
      custom: Registered names ("package>Name", or names given in `custom_objects`) that
        the user allowed (`--import MODULE`, `imports=`, `custom_objects=`).
      revivable: For a SavedModel's configuration, whether the loader would revive a
        class name (`class_name -> bool`): tf-keras revives a class its lookup by name
        does not find from the layer's saved graph (checked op by op, `saved_model`),
        importing and calling nothing, so such classes are allowed; what their
        configurations ask for is still checked.

    Returns:
      The refusals in the order found; empty when the file is safe.
    """
    found = []
    stack = [(config, "(model)", None)]
    while stack:  # iterative: a deep file must not exhaust Python's recursion
        node, layer, key = stack.pop()
        if isinstance(node, list):
            stack.extend((item, layer, key) for item in reversed(node))
        elif isinstance(node, str) and key is not None:
            what = _named_string(key, node)
            if what:
                found.append(Refusal(layer, what))
        elif isinstance(node, dict):
            if "class_name" in node:
                layer = _layer_name(node, layer)
                what = _request(node, custom)
                if isinstance(what, Refusal):  # a class Keras and keras_bn do not have
                    if not (revivable and what.class_name is not None
                            and revivable(what.class_name)):
                        found.append(what._replace(layer=layer))
                elif what:
                    found.append(Refusal(layer, what))
                    continue  # one reason per request: a Lambda's function is part of it
            stack.extend((value, layer, name) for name, value in reversed(node.items())
                         if name not in _NOT_LOADED)
    return found


def _layer_name(node, outer):
    inner = node.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) else outer


def _request(node, custom):
    """Why this request is refused, or None when it is allowed; a class Keras and
    keras_bn do not have (that a SavedModel may revive) as a `Refusal`."""
    class_name, module = node.get("class_name"), node.get("module")
    registered, inner = node.get("registered_name"), node.get("config")
    if not isinstance(class_name, str) or not isinstance(module, (str, type(None))):
        return f"a malformed object entry (class_name={class_name!r}, module={module!r})"
    if class_name == "__lambda__" or "function_type" in node:
        return "Python bytecode stored in the file (a serialized lambda or function)"
    if class_name in allowlist.VALUE_CLASSES:
        return None
    if class_name in ("__typespec__", "TypeSpec"):
        spec = node.get("spec_name" if class_name == "__typespec__" else "type_spec")
        return None if spec in allowlist.TYPE_SPECS else f"type spec {spec!r} to build"
    if class_name == "function":
        return _function(module, inner, registered, custom)
    if class_name == "Lambda":
        return "a Lambda layer (Python bytecode stored in the file)"
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        what = _tf_op(inner)
        if what:
            return what
    if _is_custom(class_name, registered, custom):
        return None
    if not _is_built_in(module, class_name, registered):
        return _unknown_class(module, class_name, registered)
    return _path_argument(class_name, inner)


def _is_custom(class_name, registered, custom):
    """A class the user registered: found by the registry under its registered name (new
    formats) or its class name (legacy formats), before any module is imported."""
    return (registered in custom) if registered is not None else class_name in custom


def _is_built_in(module, class_name, registered):
    package = allowlist.KERAS_BN_PACKAGE
    if class_name in allowlist.KERAS_BN_LAYERS:
        name = f"{package}>{class_name}"
        if registered == name and (module is None or module.startswith(package + ".")):
            return True
    if any(entry[1:] == (class_name, registered) and module in (None, entry[0])
           for entry in allowlist.REGISTERED):
        return True
    if module is None:  # legacy formats: the loader looks the class name up
        return registered is None and (
            class_name in allowlist.VALUE_CLASSES
            or any(class_name == entry[2] for entry in allowlist.REGISTERED)
            or any(class_name == entry[1] for entry in allowlist.PRIVATE)
            or class_name.removeprefix(package + ">") in allowlist.KERAS_BN_LAYERS
            or any(class_name in names for _, names in allowlist.PUBLIC.values()))
    if registered not in (None, class_name):
        return False
    if (module, class_name) in allowlist.PRIVATE:
        return True
    if class_name in allowlist.KERAS3_OPS.get(module, ()):
        return True
    return any(module in modules and class_name in names
               for modules, names in allowlist.PUBLIC.values())


def _unknown_class(module, class_name, registered):
    if module and module.split(".")[0] not in ("keras", "tf_keras", "keras_bn"):
        return Refusal("", f"class {class_name!r} from module {module!r}: the loader would "
                       f"import '{module}' (running its code)", class_name=class_name,
                       package=module.split(".")[0])
    shown = registered if registered not in (None, class_name) else class_name
    return Refusal("", f"custom class {shown!r}", shown, class_name)


def _function(module, name, registered, custom):
    if isinstance(name, str) and name in custom:
        return None
    allowed = allowlist.FUNCTIONS.get(module, ())
    if isinstance(name, str) and name in allowed and registered in (None, name):
        return None
    return (f"Python function {module}.{name} (registered as {registered!r}) to look up "
            "and call")


def _tf_op(inner):
    """Why a tf-keras op layer's function is refused, or None."""
    function = inner.get("function") if isinstance(inner, dict) else None
    if not isinstance(function, str):
        return f"a TensorFlow op layer without a function name ({function!r})"
    name = function.removeprefix("compat.v1.").removeprefix("compat.v2.")
    namespace, _, rest = name.partition(".")
    if (rest and namespace in allowlist.TF_OP_NAMESPACES) or name in allowlist.TF_OPS:
        return None
    return (f"TensorFlow function tf.{function}, which is not pure tensor math (it could "
            "read or write files, run Python or act outside the model)")


def _path_argument(class_name, inner):
    for argument in allowlist.PATH_ARGUMENTS.get(class_name, ()):
        value = inner.get(argument) if isinstance(inner, dict) else None
        if isinstance(value, str):
            return (f"{class_name} would read {argument} from the path {value!r} (only an "
                    "inline vocabulary loads safely)")
    return None


def _named_string(key, value):
    """Why a string the layer resolves by name is refused, or None."""
    for suffix, names in allowlist.NAMED_BY_STRING:
        if key.endswith(suffix):
            if value in names:
                return None
            return f"{key}={value!r}, which is not a built-in {suffix} (looked up by name)"
    return None
