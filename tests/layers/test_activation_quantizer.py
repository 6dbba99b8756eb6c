"""ActivationQuantizer (keras_bn/layers/activation_quantizer.py) on both flavours: pass
through until calibrated, TFLite's int8 grid over its range, the range tracked in
training by a moving average of the batches' min and max, a fixed range never moving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bn.layers import keras3 as k3_layers, tf_keras as tfk_layers
from keras_bn.quantization import fake_quant

LAYERS = {"keras3": k3_layers, "tf_keras": tfk_layers}


def _numpy(x):
    if isinstance(x, keras.Variable):
        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.float64)


@pytest.mark.parametrize("flavour", LAYERS)
def test_passes_through_until_calibrated_then_rounds_to_the_grid(flavour):
    layer = LAYERS[flavour].ActivationQuantizer(momentum=0.5)
    x = np.linspace(-1.5, 3.5, 41).astype("float32")[None]
    np.testing.assert_array_equal(_numpy(layer(x)), x)
    layer.low.assign(-1.0)
    layer.high.assign(3.0)
    scale, zero_point = fake_quant.activation_grid(-1.0, 3.0)
    want = np.clip(np.round(x / scale) + zero_point, -128, 127)  # no halves in x
    got = _numpy(layer(x))
    np.testing.assert_allclose(got, (want - zero_point) * scale, atol=1e-6)
    assert len(np.unique(np.round(got / scale))) <= 256


@pytest.mark.parametrize("flavour", LAYERS)
def test_training_tracks_the_range_and_a_fixed_range_stays(flavour):
    layer = LAYERS[flavour].ActivationQuantizer(momentum=0.5)
    x = np.array([[-2.0, 0.5, 4.0]], "float32")
    layer(x, training=True)  # uncalibrated: the first batch's range
    assert (float(_numpy(layer.low)), float(_numpy(layer.high))) == (-2.0, 4.0)
    layer(x * 2, training=True)  # then the moving average
    assert (float(_numpy(layer.low)), float(_numpy(layer.high))) == (-3.0, 6.0)
    layer(x * 10, training=False)  # inference does not move it
    assert float(_numpy(layer.high)) == 6.0
    unit = LAYERS[flavour].ActivationQuantizer(fixed=(0.0, 255 / 256))
    out = _numpy(unit(np.array([[0.1, 0.5, 2.0]], "float32"), training=True))
    assert float(_numpy(unit.high)) == pytest.approx(255 / 256)
    np.testing.assert_allclose(out, [[26 / 256, 128 / 256, 255 / 256]], atol=1e-7)


def test_the_grid_on_tensors_is_the_grid_of_the_files():
    for low, high in [(-1.0, 3.0), (0.2, 5.0), (-4.0, -0.5), (-0.37, 0.91), (0.0, 0.0)]:
        scale, zero_point = fake_quant.grid(keras.ops, tf.constant(low), tf.constant(high))
        want = fake_quant.activation_grid(low, high)
        assert float(scale) == pytest.approx(want[0], rel=1e-6)
        assert int(zero_point) == want[1]
