"""split_for_int8 (keras_bn/quantization/splitting.py): separable convolutions as
depthwise -> 1x1 and unfused activations as their own layers, the same answers, on both
flavours, Sequential and functional, strides, dilation, depth multipliers, with and
without bias; fused activations and other layers left as they are."""

import keras
import numpy as np
import pytest
import tf_keras

from keras_bn.quantization.splitting import split_for_int8

FLAVOURS = {"keras3": keras, "tf_keras": tf_keras}


def _model(k, sequential):
    layers = [k.layers.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, padding="same",
                                       activation="relu", name="a"),
              k.layers.SeparableConv2D(4, 3, dilation_rate=2, use_bias=False, name="b"),
              k.layers.Conv2D(3, 1, activation="tanh", name="c"),
              k.layers.Flatten(),
              k.layers.Dense(4, activation="softmax", name="e")]
    if sequential:
        return k.Sequential([k.Input((12, 12, 3))] + layers)
    inputs = k.Input((12, 12, 3))
    x = inputs
    for layer in layers:
        x = layer(x)
    return k.Model(inputs, x)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_split_layers_compute_the_same(flavour, sequential):
    k = FLAVOURS[flavour]
    model = _model(k, sequential)
    rs = np.random.RandomState(0)
    for layer in model.layers:
        layer.set_weights([rs.randn(*w.shape).astype("float32") * 0.3
                           for w in layer.get_weights()])
    data = rs.randn(4, 12, 12, 3).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    split = split_for_int8(model)
    kinds = {layer.name: type(layer).__name__ for layer in split.layers}
    assert kinds["a_depthwise"] == "DepthwiseConv2D" and kinds["a"] == "Conv2D"
    assert kinds["b_depthwise"] == "DepthwiseConv2D" and kinds["b"] == "Conv2D"
    assert kinds["c_linear"] == "Conv2D" and kinds["c"] == "Activation"
    assert kinds["e_linear"] == "Dense" and kinds["e"] == "Activation"
    assert split.get_layer("a").get_config()["activation"] == "relu"  # fused: stays
    np.testing.assert_allclose(np.asarray(split(data)), np.asarray(model(data)),
                               rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_a_model_with_nothing_to_split_is_returned_as_it_is():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="relu")(inputs))
    assert split_for_int8(model) is model
