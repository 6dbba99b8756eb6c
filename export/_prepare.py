"""The step every exporter starts with: the model to convert and its input signature."""

import tensorflow as tf

from keras_bn.folding import fold as _fold


def prepare(model, fold, verify=True):
    """`(model to convert, FoldPlan or None)`: the folded (and, with `verify`, checked)
    model when `fold`."""
    if not fold:
        return model, None
    return _fold(model, verify=verify, return_plan=True)


def input_signature(model):
    """One TensorSpec per model input, batch dimension left dynamic, named as the input."""
    return [tf.TensorSpec((None,) + tuple(spec.shape[1:]), spec.dtype, name=name)
            for spec, name in zip(model.inputs, model.input_names)]
