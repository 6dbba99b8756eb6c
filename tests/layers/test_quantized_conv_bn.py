"""QuantizedConvBN (keras_bn/layers/quantized_conv_bn.py), the fold-aware layer of
quantization-aware training, against the layers it replaces: in float (weight_bits=None)
conv -> BN in training and the folded conv in inference; with int8 weights, the folded
conv whose kernel is on the int8 files' grid (`affine.fake_quantize`)."""

import keras
import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.layers import keras3 as k3_layers, tf_keras as tfk_layers
from keras_bn.quantization import affine

FLAVOURS = {"keras3": (keras, k3_layers, keras_bn.keras3.BatchNormalization),
            "tf_keras": (tf_keras, tfk_layers, keras_bn.BatchNormalization)}

#: The layer kinds, each as (kind, Keras layer, its arguments, QuantizedConvBN's, input).
CASES = {
    "conv": ("conv", "Conv2D", dict(filters=6, kernel_size=3, strides=2, padding="same"),
             dict(filters=6, kernel_size=3, strides=2, padding="same"), (9, 9, 4)),
    "depthwise": ("depthwise", "DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=2),
                  dict(filters=2, kernel_size=3), (8, 8, 3)),
    "dense": ("dense", "Dense", dict(units=5), dict(filters=5), (7,)),
}

#: float32 rounding of a 3x3x4 sum of products and of a BN: relative to the output scale.
RTOL = 2e-5


def _pair(flavour, case, weight_bits=None, freeze_after=None):
    """`(conv -> BN model, QuantizedConvBN model, data)`, the same weights (BN with
    measured-looking statistics, gammas of both signs)."""
    k, layers, bn_class = FLAVOURS[flavour]
    kind, name, keras_args, args, shape = CASES[case]
    rs = np.random.RandomState(1)
    inputs = k.Input(shape)
    conv = getattr(k.layers, name)(**keras_args)
    bn = bn_class(momentum=0.9)
    reference = k.Model(inputs, bn(conv(inputs)))
    bias = rs.randn(*conv.bias.shape).astype("float32") * 0.3
    conv.set_weights([conv.get_weights()[0], bias])
    channels = bn.gamma.shape[0]
    statistics = [rs.uniform(0.5, 1.5, channels) * rs.choice([-1, 1], channels),
                  rs.randn(channels) * 0.2, rs.randn(channels) * 0.5,
                  rs.uniform(0.3, 2.0, channels)]
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    for name, value in zip(names, statistics):
        getattr(bn, name).assign(value.astype("float32"))
    inputs2 = k.Input(shape)
    fused = layers.QuantizedConvBN(kind, momentum=0.9, weight_bits=weight_bits,
                                   freeze_after=freeze_after, **args)
    model = k.Model(inputs2, fused(inputs2))
    fused.kernel.assign(conv.get_weights()[0])
    fused.bias.assign(bias)
    for name, value in zip(names, statistics):
        getattr(fused, name).assign(value.astype("float32"))
    data = rs.randn(16, *shape).astype("float32")
    return reference, model, data


def _close(got, want, rtol=RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= rtol * scale, np.max(np.abs(got - want)) / scale


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", CASES)
def test_float_equals_conv_then_bn_in_training_and_the_folded_conv_in_inference(flavour,
                                                                               case):
    reference, model, data = _pair(flavour, case)
    _close(model(data, training=False), reference(data, training=False))
    folded = keras_bn.fold(reference)
    _close(model(data, training=False), folded(data, training=False))
    for _ in range(2):  # training: batch statistics, and the moving ones updated alike
        _close(model(data, training=True), reference(data, training=True))
    bn = reference.layers[-1]
    fused = model.layers[-1]
    for mine, theirs in ((fused.moving_mean, bn.moving_mean),
                         (fused.moving_variance, bn.moving_variance)):
        _close(np.asarray(mine), np.asarray(theirs))
    assert int(np.asarray(fused.step)) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_after_freeze_after_steps_training_runs_the_folded_conv(flavour):
    reference, model, data = _pair(flavour, "conv", freeze_after=2)
    fused = model.layers[-1]
    for _ in range(2):
        model(data, training=True)
    frozen = [np.asarray(fused.moving_mean), np.asarray(fused.moving_variance)]
    got = model(data, training=True)  # the third step: frozen
    _close(got, model(data, training=False))
    np.testing.assert_array_equal(np.asarray(fused.moving_mean), frozen[0])
    np.testing.assert_array_equal(np.asarray(fused.moving_variance), frozen[1])


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", CASES)
def test_int8_inference_is_the_folded_conv_on_the_int8_grid(flavour, case):
    reference, model, data = _pair(flavour, case, weight_bits=8)
    folded = keras_bn.fold(reference)
    layer = folded.layers[-1]
    kernel, bias = layer.get_weights()
    axes = (-2, -1) if case == "depthwise" else (-1,)
    layer.set_weights([affine.fake_quantize(kernel, axes).astype("float32"), bias])
    _close(model(data, training=False), folded(data, training=False))
    # and not the float folded conv: the int8 grid is visible at this tolerance
    unquantized = keras_bn.fold(reference)(data, training=False)
    assert np.max(np.abs(np.asarray(model(data)) - np.asarray(unquantized))) > RTOL * np.max(
        np.abs(np.asarray(unquantized)))
