"""keras_bn: Batch Normalization and Batch Renormalization for tf-keras.

Public API:

* `BatchNormalization`, `BatchRenormalization`: the layers (`keras_bn/layers/`).
* `fold`, `fold_plan`: merge BN into neighbouring Conv/Dense weights (`keras_bn/folding/`).
* `summary`: a table (and data) of every BN layer's statistics and foldability.
* `recalibrate`: recompute BN statistics as the true average over data (precise BN).
* `freeze`, `unfreeze`: BN layers in inference mode for fine-tuning.

The exporters' source lives in the top-level `export/` folder of the repository and is
installed as `keras_bn.export`.
"""

from keras_bn.folding import FoldPlan, VerificationError, fold, fold_plan
from keras_bn.freeze import freeze, unfreeze
from keras_bn.layers import BatchNormalization, BatchRenormalization
from keras_bn.recalibrate import recalibrate
from keras_bn.summary import summary

__version__ = "0.1.0"

__all__ = ["BatchNormalization", "BatchRenormalization", "FoldPlan", "VerificationError",
           "fold", "fold_plan", "freeze", "recalibrate", "summary", "unfreeze"]
