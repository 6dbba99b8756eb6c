"""inference_model (keras_bn/quantization/inference.py): the plain model a
quantization-aware model computes, both flavours: plain layers with the folded int8-grid
kernels, the same answers as the QAT model in inference, the float model without the
quantizers, and one line for a quantizer with no range."""

import numpy as np
import pytest

from keras_bn.quantization import inference_model, quantize_aware
from keras_bn.quantization.fake_quant import activation_grid, grid_bounds
from keras_bn.quantization.inference import output_steps, state

from tests.quantization.test_aware import FLAVOURS, _net, _numpy


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_plain_model_computes_the_simulation(flavour):
    model, data = _net(flavour)
    aware = quantize_aware(model, data)
    plain = inference_model(aware)
    kinds = {layer.name: type(layer).__name__ for layer in plain.layers}
    assert (kinds["conv"], kinds["depthwise"], kinds["separable"], kinds["head"]) == (
        "Conv2D", "DepthwiseConv2D", "Conv2D", "Dense")
    assert state(plain).learned and not state(plain).fused
    # The grids' own bounds: halves of a step aside (input ties), the same values.
    got, want = _numpy(plain(data, training=False)), _numpy(aware(data, training=False))
    step, allowed = output_steps(aware)[0]
    assert step > 0 and allowed == 1.0
    assert np.max(np.abs(got - want)) <= 1e-6, np.max(np.abs(got - want)) / step
    floats = inference_model(aware, activations=False)
    assert not state(floats).aware
    np.testing.assert_allclose(_numpy(floats(data)), _numpy(quantize_aware(model)(data)),
                               atol=1e-5)


def test_a_quantizer_without_a_range_is_one_line():
    model, _ = _net("keras3")
    aware = quantize_aware(model)  # weights only: no quantizer at all
    assert not state(aware).ranges and inference_model(aware) is not None
    from keras_bn.keras3 import ActivationQuantizer
    import keras

    inputs = keras.Input((3,))
    bare = keras.Model(inputs, ActivationQuantizer(name="q")(inputs))
    with pytest.raises(ValueError, match=r"activation quantizer\(s\) 'q' have no range yet"):
        inference_model(bare)


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (0.0, 6.0), (-0.3, 2.7), (0.2, 0.9)])
def test_grid_bounds_give_back_the_grid_under_either_rounding(low, high):
    """Symmetric ranges put the zero point on a half: rounded up (TensorFlow's nudging)
    or away from zero (ours) they differ; the bounds' zero point is an integer."""
    scale, zero_point = activation_grid(low, high)
    bounds = grid_bounds(low, high)
    assert activation_grid(*bounds) == pytest.approx((scale, zero_point))
    up = np.floor(-128 - bounds[0] / scale + 0.5)
    assert up == zero_point
