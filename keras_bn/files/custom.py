"""The user's consent for their own classes: `--import MODULE` (`imports=`).

Importing a module runs its code, which is why a model file may never name one for us to
import. The user may: each module they give is imported, and exactly the objects it
registers with either flavour's `register_keras_serializable` (the objects new in the
registries, or registered from inside that module) join the allowlist under their
registered names.
"""

import importlib
import importlib.util
import os
import sys

from keras_bn.errors import InputError


def import_modules(modules):
    """Imports `modules` (names, or paths of `.py` files) and returns the registered
    names of the objects they register.

    Raises:
      InputError: a module that cannot be found or raises while it is imported.
    """
    if not modules:
        return frozenset()
    before = _registered()
    tops = {_import(os.fspath(module)).split(".")[0] for module in modules}
    return frozenset(name for name, obj in _registered().items()
                     if before.get(name) is not obj
                     or getattr(obj, "__module__", "").split(".")[0] in tops)


def names_of(custom_objects):
    """The names under which a `custom_objects` dict makes the loader find its objects."""
    return frozenset(custom_objects or ())


def _import(module):
    """Imports a module by name (the current folder first, as `python -m` does) or from a
    `.py` file; returns its name."""
    try:
        if module.endswith(".py") or os.sep in module:
            name = os.path.splitext(os.path.basename(module))[0]
            spec = importlib.util.spec_from_file_location(name, module)
            if spec is None or spec.loader is None or not os.path.isfile(module):
                raise FileNotFoundError(f"no such file {module!r}")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[name] = loaded
            spec.loader.exec_module(loaded)
            return name
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(module).__name__
    except Exception as error:  # noqa: BLE001 - the user's module: whatever it raises
        raise InputError(f"--import {module}: cannot import it ({type(error).__name__}: "
                         f"{error})") from error


def _registered():
    """Both flavours' global registries, merged (name -> object)."""
    from keras_bn import flavour

    return {key: value for name in flavour.NAMES
            for key, value in flavour.named(name).custom_objects().items()}
