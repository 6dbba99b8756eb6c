"""Loading a model file safely: nothing stored in the file runs or touches the disk unless
the user consents.

The format is decided from the file's content exactly as `tf_keras.models.load_model`
decides it (a name ending in `.keras` *and* a zip archive: the zip format; else a folder:
SavedModel; else HDF5). The file is copied to a private folder first (`private_copy`), so
it cannot change between the check and the load, and the copy is checked:

* the model's configuration (`config.json` in the zip, the `model_config` attribute of an
  HDF5 file, every node of a SavedModel's Keras metadata), walked in full against the
  allowlist (`configs`, `allowlist`);
* HDF5 data (`.h5` files and the weights inside a `.keras` zip): nothing stored outside
  the file, nothing declared larger than the file holds (`hdf5`); numpy weights inside a
  `.keras` zip: no pickled member (`arrays`); zip members within deflate's expansion bound;
* a SavedModel's graph: every op of every function and initializer (`saved_model`).

The copy is then loaded by the Keras that wrote it (`writer`): Keras 3 (`import keras`)
writes `.keras` zips and HDF5 files too, and says so in their metadata; a SavedModel
folder is always tf-keras's. With consent, `imports=` (the CLI's `--import MODULE`) imports
the user's modules and allows what they register; `unsafe=True` (`--unsafe`) skips the
checks.
"""

import importlib
import json
import os
import shutil
import tempfile
import zipfile

from keras_bn import flavour
from keras_bn.errors import InputError, UnsafeModelError
from keras_bn.files import allowlist, arrays, configs, custom, hdf5, private_copy, saved_model
from keras_bn.flavour import Model


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
    except (ValueError, OSError, AttributeError, zipfile.BadZipFile) as error:
        raise InputError(f"{shown or path}: unreadable model metadata ({error})") from error
    major = str(version or "").split(".")[0]
    return ("keras3" if major.isdigit() and int(major) >= 3 else "tf_keras"), version


def stored_configs(path, fmt, shown=None):
    """The parsed JSON configurations the loader will deserialize from `path` (named
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
        return [json.loads(text) for text in saved_model.metadata_texts(path, shown)]
    except (KeyError, ValueError, OSError, RecursionError, zipfile.BadZipFile) as error:
        if isinstance(error, InputError):
            raise
        if isinstance(error, RecursionError):  # no real model nests a thousand levels
            raise InputError(f"{shown}: the model configuration is nested too deeply to "
                             "check") from error
        raise InputError(f"{shown}: unreadable model configuration ({error})") from error


def check_safe(path, shown=None, allowed=frozenset()):
    """Raises `UnsafeModelError` when the model at `path` (named `shown` in errors) asks
    for anything off the allowlist (see the module docstring); returns its format.

    Args:
      path: The model file or SavedModel folder (the private copy, when loading).
      shown: The name used in errors (the user's path).
      allowed: Registered names the user allowed (`custom.import_modules`).
    """
    shown = shown or os.fspath(path)
    fmt = model_format(path)
    if fmt == "keras":
        _check_zip(path, shown)
    elif fmt == "h5":
        hdf5.check_hdf5(path, shown)
    else:
        saved_model.check_graph(path, shown)
    revives = flavour.named("tf_keras").revives if fmt == "savedmodel" else None
    found = list(dict.fromkeys(
        ref for config in stored_configs(path, fmt, shown)
        for ref in configs.refusals(config, allowed, revivable=revives)))
    classes = list(dict.fromkeys(ref.custom_class for ref in found if ref.custom_class))
    layers = list(dict.fromkeys(ref.layer for ref in found if ref.custom_class))
    requests = "; ".join(f"layer {ref.layer!r}: {ref.what}" for ref in found
                         if not ref.custom_class)
    packages = list(dict.fromkeys(ref.package for ref in found))
    if found and all(p is not None and _installed(p) for p in packages):
        imports = " ".join(f"--import {p}" for p in packages)
        raise UnsafeModelError(
            f"{shown}: layer(s) {', '.join(dict.fromkeys(repr(r.layer) for r in found))} "
            f"use classes of the installed package(s) {', '.join(map(repr, packages))} "
            f"({', '.join(dict.fromkeys(repr(r.class_name) for r in found))}): give "
            f"{imports} (imports={packages!r}) to load them with the classes it registers.")
    if requests:
        raise UnsafeModelError(
            f"{shown}: refusing to load what the file asks for ({requests}). Loading it "
            "would run code or touch files the file chose. Give the module of your own "
            "layers with --import MODULE (imports=[...]); pass --unsafe (unsafe=True) only "
            "if you trust where the file comes from.")
    if classes:
        raise UnsafeModelError(
            f"{shown}: layer(s) {', '.join(map(repr, layers))} use classes that are not a "
            f"built-in Keras or keras_bn class ({', '.join(map(repr, classes))}): give the "
            "module that registers them with --import MODULE (imports=[...]).")
    return fmt


def _installed(package: str) -> bool:
    """Whether `package` is one of the model packages whose import we suggest
    (`allowlist.MODEL_PACKAGES`) and is installed (found, not imported: nothing runs)."""
    import importlib.util

    if package not in allowlist.MODEL_PACKAGES:
        return False
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _check_zip(path, shown):
    """The members of a `.keras` zip: sizes within deflate's bound, HDF5 weights checked
    as HDF5 files, numpy weights without pickled arrays."""
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as scratch:
        for info in archive.infolist():
            bomb = arrays.zip_bomb(info)
            if bomb:
                raise UnsafeModelError(f"{shown}: {bomb}")
            if info.filename.endswith((".h5", ".npz")):
                member = os.path.join(scratch, "member" + os.path.splitext(info.filename)[1])
                with archive.open(info) as source, open(member, "wb") as target:
                    shutil.copyfileobj(source, target)
                named = f"{shown} (its {info.filename})"
                if member.endswith(".h5"):
                    hdf5.check_hdf5(member, named)
                else:
                    arrays.load_arrays(member, named)


def load_model(path: str | os.PathLike, unsafe: bool = False, imports: tuple = (),
               custom_objects: dict | None = None) -> Model:
    """Loads a `.keras`, `.h5` or SavedModel file, checked first (see the module docstring).

    keras_bn's layers need no flags. Anything else off the allowlist (a custom layer, a
    Lambda, a file op) is refused unless the user consents: `imports` names the modules
    that register their custom classes (only those classes join the allowlist), and
    `unsafe` skips the checks.

    Args:
      path: The model file or SavedModel folder.
      unsafe: Load whatever the file asks for (Lambda layers, modules it names, file ops).
        Only for files whose origin you trust.
      imports: Modules to import first (names, or paths of `.py` files); the classes and
        functions they register (`register_keras_serializable`) are allowed.
      custom_objects: A dict of name -> class or function, passed to the loader and
        allowed under those names.

    Returns:
      The model (not compiled): a tf-keras model, or a Keras 3 one when Keras 3 wrote
      the file (see `writer`).

    Raises:
      FileNotFoundError: no such file.
      UnsafeModelError: the file asks for something off the allowlist and `unsafe` is
        False (the message names the layer and what it would do).
      InputError: the file is not a model the loader can read (the message names the
        layer when one fails to build), or an `imports` module cannot be imported.
    """
    path = os.fspath(path)
    model_format(path)
    allowed = custom.import_modules(imports) | custom.names_of(custom_objects)
    if unsafe:
        return _load(path, unsafe, custom_objects)
    with tempfile.TemporaryDirectory(prefix="keras_bn-load-") as private:
        # The copy keeps the name (tf-keras decides the format from it, too).
        copy = os.path.join(private, os.path.basename(os.path.normpath(path)) or "model")
        try:
            private_copy.private_copy(path, copy, shown=path)
        except OSError as error:
            raise InputError(f"{path}: cannot copy it ({error.strerror or error})") from error
        check_safe(copy, shown=path, allowed=allowed)
        return _load(copy, unsafe, custom_objects, shown=path)


def _load(path, unsafe, custom_objects, shown=None):
    fmt = model_format(path)
    name, version = writer(path, fmt, shown)
    importlib.import_module(f"keras_bn.layers.{name}")  # registers that flavour's layers
    plumbing = flavour.named(name)
    label = plumbing.TITLE
    try:
        return plumbing.keras.models.load_model(path, compile=False, safe_mode=not unsafe,
                                                custom_objects=custom_objects)
    except Exception as error:  # noqa: BLE001 - whatever the loader says, it is the file
        written = f"written by Keras {version}" if version else f"a {label} file"
        raise InputError(f"{shown or path}: {written}, but {label} could not load it: "
                         f"{type(error).__name__}: {str(error)[:500]}") from error
