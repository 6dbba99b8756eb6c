"""Bias correction (Nagel et al. 2019, section 4.2) of the int8 weights TFLite writes.

Rounding a layer's weights to int8 (`keras_bn.quantization.kernels.quantized`: what the
converter writes, per output channel) adds an error `e = W_q - W`; on the layer's inputs
it shifts the mean of output channel `j` by `E[(e x)_j]`, a bias the float model does
not have, which the next layers carry on. Bias correction subtracts that shift from the
folded bias, so that the int8 layer's outputs have the float layer's mean.

The shift is measured on the calibration data (the paper's "empirical" variant): the
layer's own operation (strides, padding, dilation, groups as the layer has them), linear
and without bias, is run with the error kernels (`kernels.error_terms`) on the inputs the
float model gives the layer, and averaged over rows and positions. Running the layer's
operation, rather than multiplying mean inputs by summed kernels, keeps the zero padding
at the borders, which on small feature maps is a large part of the mean.
"""

import numpy as np

from keras_bn import flavour
from keras_bn.flavour import Inputs, Model
from keras_bn.folding.graph import Graph
from keras_bn.folding.kinds import kind_of
from keras_bn.folding.rewrite import set_weight_arrays, weight_arrays, with_weights
from keras_bn.quantization import kernels
from keras_bn.quantization.activations import tensor_batches
from keras_bn.quantization.technique import Technique

def _candidates(model):
    """`([layer name], {layer name: why not})` of the top-level layers to correct."""
    found, skipped = [], {}
    for name, node in Graph(model).nodes.items():
        kind = kind_of(node.layer) if node.layer is not None else None
        if kind is None or kind.name not in kernels.KINDS:
            continue
        if len(node.calls) != 1:
            skipped[name] = "a shared layer (its inputs differ per call)"
        elif not getattr(node.layer, "use_bias", False):
            skipped[name] = "it has no bias to correct"
        else:
            found.append(name)
    return found, skipped


def _linear_copy(layer, input_shape):
    """A new layer of `layer`'s class and configuration, without bias or activation,
    built for its `input_shape`: the operation whose output `kernels.error_terms` sum."""
    config = dict(layer.get_config(), activation="linear", use_bias=False,
                  name=f"{layer.name}_error")
    copy = type(layer).from_config(config)
    copy.build(tuple(input_shape))
    return copy


class _Shift:
    """The running mean, per output channel, of one layer's int8 weight error."""

    def __init__(self, layer, input_shape):
        self.kind = kind_of(layer).name
        self.weights = weight_arrays(layer)
        self.terms = kernels.error_terms(self.kind, self.weights)
        self.copy = _linear_copy(layer, input_shape)
        self.plumbing = flavour.of(layer)
        self.total, self.count = 0.0, 0

    def add(self, x):
        for term in self.terms:
            set_weight_arrays(self.copy, term)
            y = np.asarray(self.plumbing.get_values([self.copy(x)])[0], np.float64)
            y = y.reshape(-1, y.shape[-1])
            self.total = self.total + y.sum(axis=0)
        self.count += len(y)

    def mean(self):
        return self.total / max(self.count, 1)


def correct_biases(model: Model, rows: Inputs) -> tuple:
    """`(new model, Technique)`: `model` with the bias of every top-level conv, dense,
    depthwise and separable layer less the mean shift its int8 weights put on its outputs,
    measured on the calibration `rows` (one array per input of the model)."""
    record = Technique("bias_correction")
    names, record.skipped = _candidates(model)
    if not names:
        return model, record
    plumbing = flavour.of(model)
    tensors = [plumbing.call_input(model, model.get_layer(n)) for n in names]
    shifts = [_Shift(model.get_layer(n), t.shape) for n, t in zip(names, tensors)]
    for inputs in tensor_batches(model, tensors, rows):
        for shift, x in zip(shifts, inputs):
            shift.add(x)
    updates, largest = {}, 0.0
    for name, shift in zip(names, shifts):
        bias = shift.weights["bias"]
        corrected = (bias.astype(np.float64) - shift.mean()).astype(bias.dtype)
        updates[name] = {**shift.weights, "bias": corrected}
        record.changed.append(name)
        largest = max(largest, float(np.abs(corrected.astype(np.float64) - bias).max()))
    record.detail = f"largest bias change {largest:.3g}"
    return with_weights(model, updates), record
