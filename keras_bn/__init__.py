"""keras_bn: Batch Normalization and Batch Renormalization for tf-keras and Keras 3.

Public API:

* `BatchNormalization`, `BatchRenormalization`: the tf-keras layers (`keras_bn/layers/`,
  one core for both flavours); their Keras 3 twins are in `keras_bn.keras3` (TensorFlow
  and JAX backends).
* `fold`, `fold_plan`: merge BN into neighbouring Conv/Dense weights (`keras_bn/folding/`),
  for tf-keras and Keras 3 models (as `summary`, `recalibrate`, `freeze`, the exporters
  and the command line).
* `summary` (`keras_bn/tools/inspection.py`): a table (and data) of every BN layer's
  statistics and foldability.
* `recalibrate` (`keras_bn/calibration/`): recompute BN statistics as the true average
  over data (precise BN).
* `freeze`, `unfreeze` (`keras_bn/tools/freezing.py`): BN layers in inference mode for
  fine-tuning.
* `QuantizedConvBN` (`keras_bn/layers/quantized_conv_bn.py`): a conv/depthwise/dense
  layer and its BN trained as the int8 file runs them, `ActivationQuantizer` a tensor on
  its int8 grid; `keras_bn.quantization.quantize_aware` builds a model of them
  (quantization-aware training).
* `InputError`, `UnsafeModelError`, `VerificationError`: what keras_bn raises on purpose.
* `keras_bn.callbacks`: `PreciseBN` and `BatchNormMonitor` for a tf-keras `fit`
  (`keras_bn.keras3` has them for Keras 3).

The subpackages `keras_bn.callbacks`, `keras_bn.export` and `keras_bn.keras3` are
imported on first use too.

The exporters' source lives in the top-level `export/` folder of the repository and is
installed as `keras_bn.export`.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API = {
    "BatchNormalization": "keras_bn.layers.tf_keras",
    "BatchRenormalization": "keras_bn.layers.tf_keras",
    "QuantizedConvBN": "keras_bn.layers.tf_keras",
    "ActivationQuantizer": "keras_bn.layers.tf_keras",
    "FoldPlan": "keras_bn.folding", "fold": "keras_bn.folding", "fold_plan": "keras_bn.folding",
    "freeze": "keras_bn.tools.freezing", "unfreeze": "keras_bn.tools.freezing",
    "recalibrate": "keras_bn.calibration.recalibration",
    "summary": "keras_bn.tools.inspection",
    "InputError": "keras_bn.errors", "UnsafeModelError": "keras_bn.errors",
    "VerificationError": "keras_bn.errors",
}
__all__ = sorted(_API)
_SUBPACKAGES = ("callbacks", "export", "keras3")


def __getattr__(name):
    """Each public name is imported on first use (PEP 562): `import keras_bn` itself
    imports neither TensorFlow nor Keras, so the command line answers `--help` at once."""
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"keras_bn.{name}")
    raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `then()` right after module `name` is imported (a post-import hook, PEP 369):
    the import machinery asks this finder first, and it hands back the module's own spec
    with itself as the loader, which runs the module's loader and then `then`."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then = name, then
        self.loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self.loader is not None:
            return None
        sys.meta_path.remove(self)  # once; and so the real finders answer next
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        assert self.loader is not None  # set by find_spec, which hands out self
        return self.loader.create_module(spec)

    def exec_module(self, module):
        assert self.loader is not None
        module.__spec__.loader = module.__loader__ = self.loader  # as if never here
        self.loader.exec_module(module)
        try:
            self.then()
        except Exception as error:  # noqa: BLE001 - the user's import must not fail
            import warnings

            warnings.warn(f"keras_bn could not register its layers with {self.name}: "
                          f"{type(error).__name__}: {error}", stacklevel=2)


def _register_tf_keras_layers():
    own = sys.modules.get("keras_bn.flavours.tf_keras")
    if own is not None and getattr(own.__spec__, "_initializing", False):
        # tf_keras was imported first by keras_bn's own tf-keras flavour (a Keras 3 model
        # handled by a function that looks at both flavours), which is not complete yet:
        # the layers import it, so it registers them itself when it is done.
        return
    importlib.import_module("keras_bn.layers.tf_keras")


# tf-keras's own loaders (`tf_keras.models.load_model` of `.h5` and SavedModel files) find
# keras_bn's layers only once they are registered with tf-keras, which takes importing it
# (and TensorFlow, ~3 s). `import keras_bn` registers them as soon as tf-keras is there:
# now if it already is, or right after it is imported.
if "tf_keras" in sys.modules:
    _register_tf_keras_layers()
else:
    sys.meta_path.insert(0, _AfterImport("tf_keras", _register_tf_keras_layers))
