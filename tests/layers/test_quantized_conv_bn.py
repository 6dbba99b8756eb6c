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
    "pointwise_strided": ("conv", "Conv2D", dict(filters=5, kernel_size=1, strides=2,
                                                 padding="same"),
                          dict(filters=5, kernel_size=1, strides=2, padding="same"),
                          (9, 9, 3)),
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


def _numpy(x):
    """Any backend's tensor (a torch one may require grad) or variable as numpy."""
    if isinstance(x, keras.Variable):
        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.float64)


def _close(got, want, rtol=RTOL):
    got, want = _numpy(got), _numpy(want)
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
        _close(mine, theirs)
    assert int(_numpy(fused.step)) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_after_freeze_after_steps_training_runs_the_folded_conv(flavour):
    reference, model, data = _pair(flavour, "conv", freeze_after=2)
    fused = model.layers[-1]
    for _ in range(2):
        model(data, training=True)
    frozen = [_numpy(fused.moving_mean), _numpy(fused.moving_variance)]
    got = model(data, training=True)  # the third step: frozen
    _close(got, model(data, training=False))
    np.testing.assert_array_equal(_numpy(fused.moving_mean), frozen[0])
    np.testing.assert_array_equal(_numpy(fused.moving_variance), frozen[1])


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
    assert np.max(np.abs(_numpy(model(data)) - _numpy(unquantized))) > RTOL * np.max(
        np.abs(_numpy(unquantized)))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", CASES)
def test_without_a_bn_it_is_the_layer_on_the_int8_grid_in_training_too(flavour, case):
    """`batch_norm=False` (a layer no BN follows): the Keras layer with its kernel on the
    int8 grid, in training and inference alike; only `kernel` and `bias` weights, and
    from its config the same layer again."""
    k, layers, _ = FLAVOURS[flavour]
    kind, name, keras_args, args, shape = CASES[case]
    k.utils.set_random_seed(2)  # seeded kernels: none within float32 rounding of a tie
    rs = np.random.RandomState(2)
    inputs = k.Input(shape)
    keras_layer = getattr(k.layers, name)(**keras_args)
    reference = k.Model(inputs, keras_layer(inputs))
    kernel = keras_layer.get_weights()[0]
    bias = rs.randn(*keras_layer.bias.shape).astype("float32") * 0.3
    axes = (-2, -1) if case == "depthwise" else (-1,)
    keras_layer.set_weights([affine.fake_quantize(kernel, axes).astype("float32"), bias])
    inputs2 = k.Input(shape)
    plain = layers.QuantizedConvBN(kind, batch_norm=False, **args)
    model = k.Model(inputs2, plain(inputs2))
    plain.kernel.assign(kernel)
    plain.bias.assign(bias)
    assert [w.name.split("/")[-1].split(":")[0] for w in plain.weights] == ["kernel", "bias"]
    data = rs.randn(16, *shape).astype("float32")
    for training in (False, True):
        _close(model(data, training=training), reference(data, training=training))
    again = layers.QuantizedConvBN.from_config(plain.get_config())
    k.Model(inputs2, again(inputs2))
    assert not again.get_config()["batch_norm"] and len(again.weights) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fit_trains_through_the_int8_weights_and_saves(flavour, tmp_path):
    """Gradients reach the kernel, gamma and beta through the fake-quantized folded
    weights (straight through) and the correction; `step` counts the training steps;
    the layer saves and loads as a registered class with its weights."""
    k, layers, _ = FLAVOURS[flavour]
    rs = np.random.RandomState(0)
    inputs = k.Input((8, 8, 3))
    x = layers.QuantizedConvBN("conv", 4, kernel_size=3, freeze_after=3)(inputs)
    x = k.layers.GlobalAveragePooling2D()(k.layers.ReLU()(x))
    model = k.Model(inputs, k.layers.Dense(2)(x))
    model.compile("adam", "mse")
    layer = model.layers[1]
    before = [_numpy(v) for v in (layer.kernel, layer.gamma, layer.beta)]
    data, targets = rs.randn(32, 8, 8, 3).astype("float32"), rs.randn(32, 2).astype("float32")
    history = model.fit(data, targets, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.any(_numpy(v) != b) for v, b in
               zip((layer.kernel, layer.gamma, layer.beta), before))
    assert int(_numpy(layer.step)) == 4  # 4 batches; frozen from the fourth
    path = tmp_path / "qat.keras"
    model.save(path)
    loaded = k.models.load_model(path)
    np.testing.assert_allclose(_numpy(loaded(data[:4])), _numpy(model(data[:4])), rtol=1e-6)
    assert loaded.layers[1].get_config()["freeze_after"] == 3


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_keras3_cases_pass_on_the_other_backends(backend):
    """This file's Keras 3 cases in a process on the JAX and torch backends (Keras 3
    picks its backend at import; this process runs TensorFlow's)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", __file__, "-k", "keras3 and not other_backends"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-3000:]
    assert "14 passed" in run.stdout, run.stdout[-500:]


#: How the crashing Conv2D(16, 1, strides=2) on 3 channels sits in the model.
_STRIDED_POINTWISE = {
    "BN": "x = keras.layers.BatchNormalization()(conv(i))\n",
    "nothing": "x = conv(i)\n",
    "shared": "x = keras.layers.Add()([conv(i), conv(keras.layers.ReLU()(i))])\n",
    "nested": "x = keras.Model(i, conv(i), name='nested')(i)\n"}


@pytest.mark.parametrize("after", _STRIDED_POINTWISE)
def test_training_a_strided_pointwise_conv_does_not_crash_with_onednn_on(after, tmp_path):
    """TensorFlow 2.21 with oneDNN on (the Makefile's setting) dies with SIGSEGV training
    a Conv2D(16, 1, strides=2) on 3 channels; a QAT model of it trains, whether a BN
    follows (a QuantizedConvBN) or not (a residual shortcut: a subsampling, then the
    conv unstrided), called twice, or inside a nested model (which QAT trains float).
    A child process: a crash is a return code, not this run's end."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, keras\n"
        "from keras_bn.quantization import quantize_aware\n"
        "i = keras.Input((64, 64, 3))\n"
        "conv = keras.layers.Conv2D(16, 1, strides=2, padding='same', use_bias=False)\n"
        + _STRIDED_POINTWISE[after] +
        "x = keras.layers.ReLU()(x)\n"
        "m = keras.Model(i, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))\n"
        "d = np.random.rand(32, 64, 64, 3).astype('float32')\n"
        "q = quantize_aware(m, d, freeze_after=None)\n"  # batch statistics throughout
        "q.compile('adam', 'mse')\n"
        "q.fit(d, np.random.rand(32, 2), epochs=2, verbose=0)\n"
        "print('trained')\n")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0 and "trained" in run.stdout, (run.returncode,
                                                             run.stderr[-2000:])
