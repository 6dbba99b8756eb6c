"""Loading a model file safely: Lambda layers (stored Python code) are refused by default."""

import json
import os
import zipfile

from keras_bn import _keras


class UnsafeModelError(ValueError):
    """The file holds Python code (a Lambda layer) and `unsafe` was not given."""


def _config_text(path):
    """The model's config as text, from any of tf-keras's formats, or None."""
    if os.path.isdir(path):
        meta = os.path.join(path, "keras_metadata.pb")
        return open(meta, "rb").read().decode("utf-8", "replace") if os.path.exists(meta) else None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return archive.read("config.json").decode() if "config.json" in archive.namelist() else None
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            return config.decode() if isinstance(config, bytes) else config
    return None


def _lambda_layers(text):
    names = []

    def visit(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                names.append(node.get("config", {}).get("name", "?"))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    try:
        visit(json.loads(text))
    except ValueError:  # SavedModel metadata is not one JSON document: search the text
        if '"class_name": "Lambda"' in text:
            names.append("?")
    return names


def load_model(path, unsafe=False):
    """Loads a `.keras`, `.h5` or SavedModel file; keras_bn layers need no extra flags.

    Args:
      path: The model file (or SavedModel directory).
      unsafe: Allow Lambda layers, whose Python code runs when the file loads.

    Returns:
      The tf-keras model (not compiled).

    Raises:
      FileNotFoundError: no such file.
      UnsafeModelError: a Lambda layer without `unsafe`.
      ValueError: the file is not a model tf-keras can read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    text = _config_text(path)
    if text is None:
        raise ValueError(f"{path}: not a tf-keras model file (.keras, .h5 or SavedModel)")
    lambdas = _lambda_layers(text) if not unsafe else []
    if lambdas:
        raise UnsafeModelError(
            f"{path}: refusing to load Lambda layer(s) {', '.join(repr(n) for n in lambdas)}: "
            "loading one runs Python code stored in the file. Pass --unsafe (unsafe=True) "
            "only if you trust where the file comes from.")
    import keras_bn  # noqa: F401  (registers the keras_bn layers for deserialization)

    try:
        return _keras.keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: could not load the model: {error}") from error
