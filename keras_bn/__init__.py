"""keras_bn: Batch Normalization and Batch Renormalization for tf-keras and Keras 3.

Public API:

* `BatchNormalization`, `BatchRenormalization`: the tf-keras layers (`keras_bn/layers/`,
  one core for both flavours); their Keras 3 twins are in `keras_bn.keras3` (TensorFlow
  and JAX backends).
* `fold`, `fold_plan`: merge BN into neighbouring Conv/Dense weights (`keras_bn/folding/`),
  for tf-keras and Keras 3 models (as `summary`, `recalibrate`, `freeze`, the exporters
  and the command line; the callbacks are tf-keras `Callback`s).
* `summary` (`keras_bn/tools/inspection.py`): a table (and data) of every BN layer's
  statistics and foldability.
* `recalibrate` (`keras_bn/calibration/`): recompute BN statistics as the true average
  over data (precise BN).
* `freeze`, `unfreeze` (`keras_bn/tools/freezing.py`): BN layers in inference mode for
  fine-tuning.
* `InputError`, `UnsafeModelError`, `VerificationError`: what keras_bn raises on purpose.
* `keras_bn.callbacks`: `PreciseBN` and `BatchNormMonitor` for `fit`.

The exporters' source lives in the top-level `export/` folder of the repository and is
installed as `keras_bn.export`.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API = {
    "BatchNormalization": "keras_bn.layers.tf_keras",
    "BatchRenormalization": "keras_bn.layers.tf_keras",
    "FoldPlan": "keras_bn.folding", "fold": "keras_bn.folding", "fold_plan": "keras_bn.folding",
    "freeze": "keras_bn.tools.freezing", "unfreeze": "keras_bn.tools.freezing",
    "recalibrate": "keras_bn.calibration.recalibration",
    "summary": "keras_bn.tools.inspection",
    "InputError": "keras_bn.errors", "UnsafeModelError": "keras_bn.errors",
    "VerificationError": "keras_bn.errors",
}
__all__ = sorted(_API)


def _bind_all():
    """Binds every public name (no public name is also a module's: the API's modules are
    named after their concept, `tools.freezing`, `calibration.recalibration`, ...)."""
    for name, module in _API.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
    if name in _API:
        _bind_all()
        return globals()[name]
    raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


# `import keras_bn` binds the API and registers the layers with tf-keras at once (so
# `.h5` and SavedModel files holding them load with tf-keras's own `load_model`), which
# imports TensorFlow (~3 s). Only the `keras-bn` command line (the console script, or
# `python -m` on a keras_bn module) defers that to the first use of a name above:
# `keras-bn --help` and argument errors then answer without TensorFlow.
if os.path.basename(sys.argv[0] if sys.argv else "") not in ("keras-bn", "-m"):
    _bind_all()
