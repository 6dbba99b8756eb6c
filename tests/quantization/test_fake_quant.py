"""Fake quantization (keras_bn/quantization/fake_quant.py) on both flavours' ops: the
weights land exactly where the int8 files put them (`affine.fake_quantize`, which
tests/export/test_post_training.py checks against the converter's file), activations on
TFLite's asymmetric grid, gradients straight through."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bn.flavours import tf_ops
from keras_bn.quantization import affine, fake_quant

OPS = {"tf_ops": tf_ops, "keras.ops": keras.ops}


def _kernel():
    """A conv kernel with a zero output channel and values exactly on half steps."""
    rs = np.random.RandomState(0)
    w = rs.randn(3, 3, 4, 6).astype("float32")
    w[..., 2] = 0.0
    w[..., 3] = np.float32(127.0)  # channel max 127: step 1, so halves are exact
    w[0, 0, :, 3] = [2.5, -2.5, 0.5, -126.5]
    return w


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
def test_weights_land_where_the_int8_file_puts_them(ops):
    w = _kernel()
    got = np.asarray(fake_quant.fake_quantize_weights(ops, tf.constant(w), (0, 1, 2)))
    want = affine.fake_quantize(w, (-1,))  # float64
    step = np.max(np.abs(w), axis=(0, 1, 2)) / 127
    step[step == 0] = 1
    # the same integers, exactly; their values to float32 rounding (one ulp of the step)
    np.testing.assert_array_equal(np.rint(got / step), np.rint(want / step))
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
    assert list(got[0, 0, :, 3]) == [3.0, -3.0, 1.0, -127.0]  # halves away from zero
    assert not np.any(got[..., 2])


@pytest.mark.parametrize("ops", OPS.values(), ids=OPS.keys())
def test_gradients_pass_straight_through(ops):
    w = tf.Variable(_kernel())
    x = tf.Variable(np.linspace(-3, 3, 13, dtype="float32"))
    with tf.GradientTape(persistent=True) as tape:
        qw = fake_quant.fake_quantize_weights(ops, w, (0, 1, 2))
        qx = fake_quant.fake_quantize_activations(ops, x, 4 / 255, -64)
        loss_w, loss_x = tf.reduce_sum(qw * 2.0), tf.reduce_sum(qx * 2.0)
    np.testing.assert_array_equal(tape.gradient(loss_w, w), np.full(w.shape, 2.0))
    # the grid holds [(-128 + 64) * 4/255, (127 + 64) * 4/255] = [-1.004, 2.996]:
    # saturated values get no gradient, as TensorFlow's fake_quant_with_min_max_vars
    inside = (x.numpy() >= -64 * 4 / 255) & (x.numpy() <= 191 * 4 / 255)
    np.testing.assert_array_equal(tape.gradient(loss_x, x), np.where(inside, 2.0, 0.0))


def test_activation_grid_holds_zero_and_matches_tensorflow():
    for low, high in [(-1.0, 3.0), (0.2, 5.0), (-4.0, -0.5), (-0.37, 0.91)]:
        scale, zero_point = fake_quant.activation_grid(low, high)
        assert -128 <= zero_point <= 127
        x = np.linspace(low - 1, high + 1, 1001).astype("float32")
        got = np.asarray(fake_quant.fake_quantize_activations(tf_ops, tf.constant(x), scale,
                                                              zero_point))
        assert got[np.argmin(np.abs(x))] == 0.0 or 0.0 not in x  # zero is exact
        want = tf.quantization.fake_quant_with_min_max_args(
            x, min(low, 0.0), max(high, 0.0), num_bits=8).numpy()
        # TensorFlow's op nudges the same way, on [0, 255] and rounding halves up: the
        # same values to float32 rounding, away from halves of a step (where float32
        # division alone can round either way)
        fraction = np.abs(np.asarray(x, np.float64) / scale % 1 - 0.5)
        away = fraction > 1e-3
        np.testing.assert_allclose(got[away], want[away], atol=scale * 1e-4)
    assert fake_quant.activation_grid(0.0, 0.0) == (1.0, 0)
