"""Loading a model file safely: code stored in the file is refused unless asked for.

The check reads what tf-keras will read. The format is decided from the file's content
exactly as `tf_keras.models.load_model` decides it (a name ending in `.keras` *and* a zip
archive: the zip format; else a directory: SavedModel; else HDF5), and the model's parsed
configuration from that format's own place (`config.json` in the zip, the `model_config`
attribute of the HDF5 file, every node of the SavedModel's Keras metadata) is walked in
full, nested models and wrappers included. The model is then loaded from a private copy of
what was checked, so the file cannot change between the check and the load.

Keras 3 (`import keras`) writes `.keras` zips and HDF5 files too; their metadata says
which Keras wrote them (`metadata.json`'s `keras_version` in the zip, the
`keras_version` attribute of the HDF5 file), and the file is loaded by that Keras:
`writer` decides, `load_model` follows. A SavedModel folder is always tf-keras's (Keras 3
cannot load one as a model).
"""

import builtins
import json
import os
import shutil
import tempfile
import zipfile

from keras_bn import _keras
from keras_bn.errors import InputError, UnsafeModelError

#: Modules a configuration may name for tf-keras to import: Keras itself and keras_bn.
#: Any other module (a user's package, `os`, `__main__`) is code the file makes us run.
SAFE_MODULES = ("tf_keras", "keras", "keras_bn")

#: TensorFlow API namespaces a TFOpLambda layer may not call when loading safely: they
#: read or write files, run Python, or reach outside the model's tensors.
UNSAFE_TF_OPS = ("io", "gfile", "raw_ops", "py_function", "numpy_function", "py_func",
                 "print", "Print", "summary", "saved_model", "data", "debugging", "train",
                 "distribute", "config", "sysconfig", "load_op_library", "load_library",
                 "autograph", "lookup")


def model_format(path):
    """"keras" (zip), "savedmodel" or "h5": the format tf-keras will read `path` as.

    Raises:
      FileNotFoundError: no such file.
      InputError: not a model file in any of the three formats.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".keras") and zipfile.is_zipfile(path):
        return "keras"
    if os.path.isdir(path):
        return "savedmodel"
    if h5py.is_hdf5(path):
        return "h5"
    raise InputError(f"{path}: not a tf-keras model file (a .keras zip, an HDF5 file or "
                     "a SavedModel folder)")


def writer(path, fmt, shown=None):
    """`("keras3" | "tf_keras", version)`: which Keras wrote the model file (named
    `shown` in errors), from its metadata. Files without a version (old tf-keras ones)
    are tf-keras's."""
    version = None
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as archive:
                if "metadata.json" in archive.namelist():
                    version = json.loads(archive.read("metadata.json")).get("keras_version")
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
            version = version.decode() if isinstance(version, bytes) else version
    except (ValueError, OSError, AttributeError) as error:
        raise InputError(f"{shown or path}: unreadable model metadata ({error})") from error
    major = str(version or "").split(".")[0]
    return ("keras3" if major.isdigit() and int(major) >= 3 else "tf_keras"), version


def stored_configs(path, fmt, shown=None):
    """The parsed JSON configurations tf-keras will deserialize from `path` (named
    `shown` in errors)."""
    shown = shown or path
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as archive:
                return [json.loads(archive.read("config.json"))]
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                config = f.attrs.get("model_config")
            if config is None:
                raise InputError(f"{shown}: an HDF5 file without a model (weights only?)")
            return [json.loads(config)]
        return [json.loads(text) for text in _saved_model_metadata(path, shown)]
    except (KeyError, ValueError, OSError, RecursionError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{shown}: unreadable model configuration ({error})") from error


def _saved_model_metadata(path, shown):
    """The Keras metadata strings of a SavedModel: `keras_metadata.pb`, or for files
    written before TF 2.5 the object graph's user objects (as tf-keras falls back to)."""
    meta = os.path.join(path, "keras_metadata.pb")
    if os.path.exists(meta):
        metadata = _keras.saved_metadata()
        with open(meta, "rb") as f:
            metadata.ParseFromString(f.read())
        texts = [node.metadata for node in metadata.nodes]
    else:
        import tensorflow as tf

        graph = tf.__internal__.saved_model.parse_saved_model(path).meta_graphs[0]
        texts = [node.user_object.metadata for node in graph.object_graph_def.nodes
                 if node.WhichOneof("kind") == "user_object" and node.user_object.metadata]
    if not texts:
        raise InputError(f"{shown}: a SavedModel without Keras metadata, not a tf-keras model")
    return texts


def code_references(config):
    """`[(layer, what)]`: every place in a parsed configuration that makes the loader run
    Python code: Lambda layers, serialized lambdas and functions, modules outside Keras
    and keras_bn to import, Python built-ins, side-effecting TensorFlow ops."""
    found = []

    def visit(node, layer):
        if isinstance(node, list):
            for item in node:
                visit(item, layer)
            return
        if not isinstance(node, dict):
            return
        inner = node.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            layer = inner["name"]
        what = _code_in(node)
        if what:
            found.append((layer, what))
            return  # one reason per place: a Lambda's function is part of the Lambda
        for key, value in node.items():
            if key != "compile_config":  # not deserialized: models load with compile=False
                visit(value, layer)

    visit(config, "(model)")
    return found


def _code_in(node):
    """Why this one config dict runs code, or None."""
    class_name, module = node.get("class_name"), node.get("module")
    if class_name == "Lambda":
        return "a Lambda layer (Python code stored in the file)"
    if class_name == "__lambda__" or "function_type" in node:
        return "a serialized Python function"
    if isinstance(module, str) and module.split(".")[0] not in SAFE_MODULES + ("builtins",):
        return f"module {module!r} to import"
    if module == "builtins" and isinstance(node.get("config"), str) \
            and hasattr(builtins, node["config"]):
        return f"Python's built-in {node['config']!r}"
    if class_name == "TFOpLambda" and isinstance(node.get("config"), dict):
        function = str(node["config"].get("function", ""))
        parts = function.removeprefix("compat.v1.").removeprefix("compat.v2.").split(".")
        if parts[0] in UNSAFE_TF_OPS:
            return f"TensorFlow op tf.{function} (files, Python or state outside the model)"
    return None


def check_safe(path, shown=None):
    """Raises `UnsafeModelError` when the file at `path` (named `shown` in errors)
    references code (see `code_references`); returns its format otherwise."""
    fmt = model_format(path)
    try:
        found = [ref for config in stored_configs(path, fmt, shown)
                 for ref in code_references(config)]
    except RecursionError as error:  # no real model nests a thousand levels deep
        raise InputError(f"{shown or path}: the model configuration is nested too deeply "
                         "to check") from error
    if found:
        listed = "; ".join(f"layer {layer!r}: {what}" for layer, what in dict.fromkeys(found))
        raise UnsafeModelError(
            f"{shown or path}: refusing to load code stored in the file ({listed}). Loading it would "
            "run that code. Pass --unsafe (unsafe=True) only if you trust where the file "
            "comes from.")
    return fmt


def load_model(path, unsafe=False):
    """Loads a `.keras`, `.h5` or SavedModel file; keras_bn layers need no extra flags.

    Without `unsafe`, the file's configuration is checked first (see the module's
    docstring) and a file that references Python code is refused; the model is then
    loaded from a private copy of the checked file.

    Args:
      path: The model file (or SavedModel directory).
      unsafe: Allow code stored in the file (Lambda layers, custom modules) to run.

    Returns:
      The model (not compiled): a tf-keras model, or a Keras 3 one when Keras 3 wrote
      the file (see `writer`).

    Raises:
      FileNotFoundError: no such file.
      UnsafeModelError: the file references code and `unsafe` is False.
      InputError: the file is not a model tf-keras can read.
    """
    path = os.fspath(path)
    if unsafe:
        model_format(path)
        return _load(path, unsafe)
    model_format(path)
    with tempfile.TemporaryDirectory(prefix="keras_bn-load-") as private:
        # The copy keeps the name (tf-keras decides the format from it, too).
        copy = os.path.join(private, os.path.basename(os.path.normpath(path)))
        (shutil.copytree if os.path.isdir(path) else shutil.copyfile)(path, copy)
        check_safe(copy, shown=path)
        return _load(copy, unsafe, shown=path)


def _load(path, unsafe, shown=None):
    fmt = model_format(path)
    flavour, version = writer(path, fmt, shown)
    if flavour == "keras3":
        import keras_bn.keras3  # noqa: F401  (registers the Keras 3 layers)
        from keras_bn import _keras3 as plumbing
    else:
        import keras_bn.layers  # noqa: F401  (registers the keras_bn layers)
        plumbing = _keras
    label = "Keras 3" if flavour == "keras3" else "tf-keras"
    try:
        return plumbing.keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as error:  # noqa: BLE001 - whatever the loader says, it is the file
        written = f"written by Keras {version}" if version else f"a {label} file"
        raise InputError(f"{shown or path}: {written}, but {label} could not load it: "
                         f"{type(error).__name__}: {str(error)[:500]}") from error
