"""The step every exporter starts with: the model to convert and its input signature."""

import tensorflow as tf

from keras_bn import flavour
from keras_bn.folding import fold as _fold


def prepare(model, fold, verify=True):
    """`(model to convert, FoldPlan or None)`: the folded (and, with `verify`, checked)
    model when `fold`. The model runs on TensorFlow (a Keras 3 model on another backend
    goes through `through_tensorflow` first)."""
    if not fold:
        return model, None
    return _fold(model, verify=verify, return_plan=True)


def input_signature(model):
    """One TensorSpec per model input, batch dimension left dynamic, named as the input."""
    return [tf.TensorSpec((None,) + tuple(spec.shape[1:]), spec.dtype, name=name)
            for spec, name in zip(model.inputs, flavour.of(model).input_names(model))]
