"""quantize_aware (keras_bn/quantization/aware.py) on whole models of both flavours:
which pairs become QuantizedConvBN layers and which BNs stay (with the fold plan's
reasons), the same answers as the original in float and as the int8-grid folded model
in inference, the activation quantizers where the int8 file holds tensors, calibrated,
training with fit, and a .keras file that loads without --unsafe; the Keras 3 cases on
the JAX and torch backends too (subprocesses)."""

import keras
import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.files import load_model
from keras_bn.quantization import affine
from keras_bn.quantization import quantize_aware

FLAVOURS = {"keras3": (keras, keras.layers.BatchNormalization),
            "tf_keras": (tf_keras, keras_bn.BatchNormalization)}
#: float32 rounding of a few layers' sums, relative to the output scale.
RTOL = 2e-5


def _numpy(x):
    """Any backend's tensor (a torch one may require grad) or variable as numpy."""
    if isinstance(x, keras.Variable):
        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.float64)


def _net(flavour):
    """conv -> BN -> ReLU, depthwise -> BN -> ReLU, a BN after a ReLU (kept: it folds
    into the separable conv after it), separable -> BN (split: depthwise, then a 1x1
    conv fused with the BN), pooling, dense -> BN;
    statistics and gammas as a trained net's (random, both signs)."""
    k, bn = FLAVOURS[flavour]
    inputs = k.Input((8, 8, 3))
    x = k.layers.ReLU()(bn()(k.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)))
    x = k.layers.ReLU()(bn()(k.layers.DepthwiseConv2D(3, strides=2, name="depthwise")(x)))
    x = bn(name="after_relu")(x)
    x = bn(name="after_separable")(k.layers.SeparableConv2D(4, 1, name="separable")(x))
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    model = k.Model(inputs, bn(name="head_bn")(k.layers.Dense(3, name="head")(x)))
    rs = np.random.RandomState(0)
    for layer in model.layers:
        if "Normalization" in type(layer).__name__:
            n = layer.moving_mean.shape[0]
            layer.gamma.assign((rs.uniform(0.5, 1.5, n) * rs.choice([-1, 1], n)).astype("f4"))
            layer.beta.assign((rs.randn(n) * 0.2).astype("float32"))
            layer.moving_mean.assign((rs.randn(n) * 0.5).astype("float32"))
            layer.moving_variance.assign(rs.uniform(0.3, 2.0, n).astype("float32"))
    # Kernels drawn here, not by the initializers: their draw follows the test order and,
    # in Keras 3, an unseeded generator, and how far int8 activations move the head
    # depends on the kernels' gains (from 0.7 to 8.3 int8 steps over such draws).
    kernels = np.random.RandomState(1)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if len(shape) >= 2:  # Glorot uniform, as the initializers
            fan_in, fan_out = np.prod(shape[:-1]), np.prod(shape[:-2]) * shape[-1]
            limit = np.sqrt(6 / (fan_in + fan_out))
            weight.assign(kernels.uniform(-limit, limit, shape).astype("float32"))
    return model, rs.randn(32, 8, 8, 3).astype("float32")


def _close(got, want, rtol=RTOL):
    got, want = _numpy(got), _numpy(want)
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want)), (
        np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pairs_fuse_and_the_rest_stays_with_its_reason(flavour):
    model, data = _net(flavour)
    before = [w.copy() for w in model.get_weights()]
    aware, plan = quantize_aware(model, weight_bits=None, return_plan=True,
                                 freeze_after=None)  # conv -> BN in training
    assert sorted(plan.fused) == ["conv", "depthwise", "head", "separable"], plan
    assert set(plan.kept) == {"after_relu"}, plan
    assert plan.kept["after_relu"].startswith("before 'separable_depthwise'"), plan
    assert type(aware.get_layer("separable_depthwise")).__name__ == "DepthwiseConv2D"
    assert [type(aware.get_layer(n)).__name__ for n in plan.fused] == ["QuantizedConvBN"] * 4
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    assert plan.quantized == [] and plan.ranges == {}  # no calibration: weights only
    _close(aware(data, training=False), model(data, training=False))
    _close(aware(data, training=True), model(data, training=True))


def _shortcut_net(flavour):
    """A residual block whose downsampling shortcut is a plain strided 1x1 conv (no BN
    after it), beside a strided 1x1 conv -> BN, and a strided 1x1 head with a sigmoid (split
    twice: its activation, then its stride)."""
    k, bn = FLAVOURS[flavour]
    inputs = k.Input((10, 10, 3))
    x = k.layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inputs)
    shortcut = k.layers.Conv2D(8, 1, strides=2, padding="same", name="shortcut")(x)
    main = bn(name="main_bn")(k.layers.Conv2D(8, 1, strides=2, use_bias=False,
                                              name="main")(x))
    x = k.layers.Add()([shortcut, k.layers.ReLU()(main)])
    x = k.layers.Conv2D(4, 1, strides=(2, 1), activation="sigmoid", name="head")(x)
    model = k.Model(inputs, k.layers.GlobalAveragePooling2D()(x))
    return model, np.random.RandomState(1).randn(16, 10, 10, 3).astype("float32")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_strided_pointwise_conv_trains_as_a_subsampling_and_exports_as_itself(flavour):
    """A strided 1x1 conv (TensorFlow with oneDNN dies training one on few channels) is
    a 1x1 max pooling with its strides, then the conv unstrided, in the QAT model (the
    conv of a conv -> BN pair then fuses with the BN unstrided): the same values;
    `inference_model` makes each one strided conv again."""
    model, data = _shortcut_net(flavour)
    aware, plan = quantize_aware(model, weight_bits=None, return_plan=True,
                                 freeze_after=None)  # conv -> BN in training
    assert plan.fused == {"main": "main_bn"}, plan
    for name, strides in (("shortcut", (2, 2)), ("main", (2, 2)), ("head_linear", (2, 1))):
        subsample = aware.get_layer(f"{name}_subsample")
        assert type(subsample).__name__ == "MaxPooling2D"
        assert tuple(subsample.pool_size) == (1, 1) and tuple(subsample.strides) == strides
        assert tuple(aware.get_layer(name).strides) == (1, 1)
    assert type(aware.get_layer("head")).__name__ == "Activation"
    assert type(aware.get_layer("main")).__name__ == "QuantizedConvBN"
    for layer in aware.layers:  # no strided 1x1 convolution is left to train
        if type(layer).__name__ in ("Conv2D", "QuantizedConvBN"):
            assert tuple(layer.strides) == (1, 1), layer.name
    _close(aware(data, training=False), model(data, training=False))
    _close(aware(data, training=True), model(data, training=True))
    plain = keras_bn.quantization.inference_model(aware, activations=False)
    assert not [layer.name for layer in plain.layers if layer.name.endswith("_subsample")]
    assert tuple(plain.get_layer("shortcut").strides) == (2, 2)
    assert tuple(plain.get_layer("head_linear").strides) == (2, 1)
    assert tuple(plain.get_layer("main").strides) == (2, 2)
    _close(plain(data), model(data, training=False))


def _shared_and_nested_net(flavour):
    """A strided 1x1 conv called twice (a shared shortcut on two branches), and a nested
    model holding one beside a nested model inside it that holds another: the cases
    the top-level split used to leave strided (oneDNN's crash)."""
    k, _ = FLAVOURS[flavour]
    inner_in = k.Input((10, 10, 6))
    deepest_in = k.Input((10, 10, 6))
    deepest = k.Model(deepest_in, k.layers.Conv2D(4, 1, strides=2, name="deep_conv")(
        deepest_in), name="deepest")
    y = k.layers.Conv2D(4, 1, strides=2, padding="same", name="inner_conv")(inner_in)
    inner = k.Model(inner_in, k.layers.Add()([y, deepest(inner_in)]), name="inner")
    inputs = k.Input((10, 10, 3))
    x = k.layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inputs)
    shared = k.layers.Conv2D(4, 1, strides=2, name="shared")
    a, b = shared(x), shared(k.layers.ReLU()(x))
    x = k.layers.Concatenate()([a, b, inner(x)])
    model = k.Model(inputs, k.layers.GlobalAveragePooling2D()(x))
    return model, np.random.RandomState(2).randn(16, 10, 10, 3).astype("float32")


def _strided_pointwise(model, path=()):
    """Every strided 1x1 Conv/QuantizedConvBN of `model`, nested ones too, by path."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found += _strided_pointwise(layer, path + (layer.name,))
        elif (type(layer).__name__ in ("Conv2D", "QuantizedConvBN")
              and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) != (1, 1)):
            found.append("/".join(path + (layer.name,)))
    return sorted(found)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_shared_or_nested_strided_pointwise_conv_trains_as_a_subsampling_too(flavour):
    """A shared strided 1x1 conv is split once, each call of the conv reading the same
    call of its subsampling; nested models (two deep) get their strided 1x1 convs split;
    the values stay, and `inference_model` makes every one a strided conv again."""
    model, data = _shared_and_nested_net(flavour)
    assert _strided_pointwise(model) == ["inner/deepest/deep_conv", "inner/inner_conv",
                                         "shared"]
    aware = quantize_aware(model, weight_bits=None, freeze_after=None)
    assert _strided_pointwise(aware) == []
    subsample = aware.get_layer("shared_subsample")
    assert len(subsample._inbound_nodes) == len(aware.get_layer("shared")._inbound_nodes) == 2
    assert type(aware.get_layer("inner").get_layer("inner_conv_subsample")).__name__ == \
        "MaxPooling2D"
    _close(aware(data, training=False), model(data, training=False))
    _close(aware(data, training=True), model(data, training=True))
    plain = keras_bn.quantization.inference_model(aware, activations=False)
    assert _strided_pointwise(plain) == _strided_pointwise(model)
    assert not [layer.name for layer in plain.get_layer("inner").layers
                if layer.name.endswith("_subsample")]
    _close(plain(data), model(data, training=False))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int8_inference_is_the_folded_model_with_int8_grid_kernels(flavour):
    model, data = _net(flavour)
    aware = quantize_aware(model)
    folded = keras_bn.fold(model)
    for name in ("conv", "depthwise", "head", "separable"):
        layer = folded.get_layer(name)
        weights = layer.get_weights()
        axes = (-2, -1) if name == "depthwise" else (-1,)
        at = 1 if name == "separable" else 0  # its pointwise kernel
        rounded = affine.fake_quantize(weights[at], axes).astype("float32")
        if name == "separable":
            # The BN before the separable conv adds its shift to the bias through the
            # float pointwise kernel in the folded model, through the int8 one in the
            # QAT model (as the file): the shift d through the 1x1 depthwise kernel,
            # then the kernel's rounding, d @ (rounded - float), goes into the bias.
            gamma, beta, mean, variance = model.get_layer("after_relu").get_weights()
            scale = gamma / np.sqrt(variance + model.get_layer("after_relu").epsilon)
            shift = beta - mean * scale
            d = _numpy(model.get_layer("separable").depthwise_kernel)[0, 0, :, 0] * shift
            weights[2] = weights[2] + d @ (rounded - weights[at])[0, 0]
        weights[at] = rounded
        layer.set_weights(weights)
    _close(aware(data, training=False), folded(data, training=False))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fit_freezes_the_statistics_and_the_file_loads_safely(flavour, tmp_path):
    model, data = _net(flavour)
    aware = quantize_aware(model, data, freeze_after=2)
    aware.compile("adam", "mse")
    targets = _numpy(model(data, training=False))
    aware.fit(data, targets, batch_size=8, epochs=1, verbose=0)
    layer = aware.get_layer("conv")
    assert int(_numpy(layer.step)) == 4
    frozen = _numpy(layer.moving_mean).copy()
    aware.fit(data, targets, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(_numpy(layer.moving_mean), frozen)
    path = tmp_path / "aware.keras"
    aware.save(path)
    loaded = load_model(path)  # safe loading: no --unsafe, no import
    _close(loaded(data[:4], training=False), aware(data[:4], training=False), 1e-6)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_estimated_ranges_are_held_in_training_and_min_max_ones_tracked(flavour):
    """By default, min/max ranges follow the batches' min and max in training (momentum
    0.99), while an estimator's ranges ("mse") stay as estimated (momentum 1): the
    batches' min and max would pull them back toward min/max. An explicit momentum
    wins either way."""
    model, data = _net(flavour)
    targets = _numpy(model(data, training=False))

    def ranges_after_fit(**kwargs):
        aware = quantize_aware(model, data, **kwargs)
        quantizers = [l for l in aware.layers if type(l).__name__ == "ActivationQuantizer"
                      and l.fixed is None]
        before = [(float(_numpy(q.low)), float(_numpy(q.high))) for q in quantizers]
        aware.compile(keras.optimizers.SGD(0.0) if flavour == "keras3" else
                      tf_keras.optimizers.SGD(0.0), "mse")
        aware.fit(data * 3, targets, batch_size=8, epochs=1, verbose=0)  # wider batches
        after = [(float(_numpy(q.low)), float(_numpy(q.high))) for q in quantizers]
        return {q.momentum for q in quantizers}, before, after

    momenta, before, after = ranges_after_fit()
    assert momenta == {0.99} and after != before
    momenta, before, after = ranges_after_fit(ranges="mse")
    assert momenta == {1.0} and after == before
    momenta, before, after = ranges_after_fit(ranges="mse", momentum=0.9)
    assert momenta == {0.9} and after != before


def test_a_custom_conv_class_stays_a_keras_layer_with_its_reason():
    """A subclass of the built-in Conv2D (its call differs) is not computed by a
    QuantizedConvBN, with a BN after it or without one, though its class is named Conv2D."""

    class Conv2D(keras.layers.Conv2D):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization(name="custom_bn")(Conv2D(4, 3, name="custom")(inputs))
    x = Conv2D(4, 1, name="custom_plain")(keras.layers.ReLU()(x))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="builtin")(x))
    aware, plan = quantize_aware(model, weight_bits=None, return_plan=True)
    assert plan.fused == {} and plan.plain == ["builtin"], plan
    assert "custom_bn" in plan.kept, plan
    assert type(aware.get_layer("custom_plain")) is Conv2D
    data = np.random.RandomState(2).randn(4, 6, 6, 3).astype("float32")
    _close(aware(data, training=False), model(data, training=False))


def test_bad_freeze_after_is_one_line():
    model, _ = _net("keras3")
    with pytest.raises(ValueError, match="freeze_after=-1; give a number of training "
                                         "steps >= 0, or None"):
        quantize_aware(model, freeze_after=-1)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_statistics_frozen_from_the_first_step(flavour):
    """freeze_after=0: training runs the inference graph from the first step, and fit
    keeps the trained model's moving statistics (freeze_after=1 moves them once, with
    the first batch's statistics, and its first training output is conv -> BN's)."""
    model, data = _net(flavour)
    targets = _numpy(model(data, training=False))
    k = keras if flavour == "keras3" else tf_keras
    for freeze_after, frozen in ((0, True), (1, False)):
        aware = quantize_aware(model, data, freeze_after=freeze_after, momentum=1.0)
        layer = aware.get_layer("conv")
        before = [_numpy(v).copy() for v in (layer.moving_mean, layer.moving_variance)]
        same = np.allclose(_numpy(layer(data, training=True)),
                           _numpy(layer(data, training=False)), rtol=0, atol=1e-6)
        assert same == frozen, freeze_after
        aware.compile(k.optimizers.SGD(0.0), "mse")
        aware.fit(data, targets, batch_size=8, epochs=1, verbose=0)
        after = [_numpy(v) for v in (layer.moving_mean, layer.moving_variance)]
        assert all(np.array_equal(a, b) for a, b in zip(before, after)) == frozen, \
            freeze_after


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_calibration_puts_quantizers_where_the_file_holds_tensors(flavour):
    """The input, each fused layer's output or its ReLU's (fused by the converter), the
    separable's depthwise half's and its pointwise half's (fused with the BN after it;
    not the BN's before it, which the export folds into it), the pooling's and the
    head's; each range the float tensor's min and max
    on the calibration rows; answers within a few int8 steps of the weights-only model."""
    k, _ = FLAVOURS[flavour]
    model, data = _net(flavour)
    aware, plan = quantize_aware(model, data, return_plan=True)
    first = model.layers[0].name
    relus = [layer.name for layer in model.layers if type(layer).__name__ == "ReLU"]
    assert plan.quantized == [first, *relus, "separable_depthwise", "separable", "pool",
                              "head"], plan
    low, high = plan.ranges[f"{first}_quantized"]
    assert (low, high) == (float(data.min()), float(data.max()))
    probe = k.Model(model.inputs, model.get_layer(relus[0]).output)
    assert plan.ranges[f"{relus[0]}_quantized"][1] == pytest.approx(
        float(np.max(_numpy(probe(data)))), rel=1e-2)  # the int8 weights move it a little
    weights_only = _numpy(quantize_aware(model)(data))
    got = _numpy(aware(data))
    step = (plan.ranges["head_quantized"][1] - plan.ranges["head_quantized"][0]) / 255
    # 2.9 steps with _net's kernels, on every backend: the quantizers' half-step
    # rounding, amplified by the layers after each. The calibrated ranges (the head's
    # aside) halved, so clipping, give 153 steps; three times as wide, 8.5.
    assert 0 < np.max(np.abs(got - weights_only)) <= 8 * step, (
        np.max(np.abs(got - weights_only)) / step)


def test_ranges_estimated_as_post_training_quantization_does():
    """`ranges="mse"`: each calibrated range is `keras_bn.quantization.ranges.mse_range`
    of its tensor's histogram over [min, max] (the input's here, exactly), within the
    min/max range widened to hold zero, the input's strictly inside; the quantizers
    where they are with min/max. An unknown estimator is one line."""
    from keras_bn.quantization import ranges as estimators

    model, data = _net("tf_keras")
    _, minmax = quantize_aware(model, data, return_plan=True)
    _, mse = quantize_aware(model, data, ranges="mse", return_plan=True)
    assert mse.quantized == minmax.quantized and sorted(mse.ranges) == sorted(minmax.ranges)
    first = f"{model.layers[0].name}_quantized"
    low, high = float(data.min()), float(data.max())
    counts = np.histogram(data, estimators.BINS, (low, high))[0]
    assert mse.ranges[first] == pytest.approx(estimators.mse_range(counts, low, high))
    for name, (low, high) in mse.ranges.items():  # the grid holds zero either way
        outer = min(minmax.ranges[name][0], 0.0), max(minmax.ranges[name][1], 0.0)
        assert outer[0] - 1e-6 <= low <= high <= outer[1] + 1e-6, name
    # The input's (fixed rows, so not the draw of kernels the test order leaves) shrinks.
    assert minmax.ranges[first][0] < mse.ranges[first][0] < mse.ranges[first][1] < \
        minmax.ranges[first][1], (mse.ranges[first], minmax.ranges[first])
    with pytest.raises(ValueError, match="ranges='entropy'; give one of minmax, percentile, "
                                         "mse"):
        quantize_aware(model, data, ranges="entropy")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_softmax_input_is_ranged_by_the_softmax_error(flavour, monkeypatch):
    """`ranges="mse"` on a net ending in a softmax: the quantizer of the tensor the
    softmax reads takes `ranges.softmax_input_range` of that tensor's calibration values
    (the ones min/max sees: their min and max are its min/max range), a range of its own
    at each end; the other quantizers the histogram's `mse_range`, as before; without
    the softmax, none is ranged so."""
    from keras_bn.quantization import ranges as estimators

    k, _ = FLAVOURS[flavour]
    model, data = _net(flavour)
    model = k.Model(model.inputs, k.layers.Softmax(name="probabilities")(model.output))
    calls = []
    spy = estimators.softmax_input_range

    def recorded(vectors, low, high, *args):
        calls.append((np.array(vectors), low, high, spy(vectors, low, high, *args)))
        return calls[-1][-1]

    monkeypatch.setattr(estimators, "softmax_input_range", recorded)
    _, minmax = quantize_aware(model, data, return_plan=True)
    _, mse = quantize_aware(model, data, ranges="mse", return_plan=True)
    (vectors, low, high, got), = calls
    assert "head" in mse.quantized  # the logits: the dense -> BN head
    quantizer = "head_quantized"
    assert vectors.shape == (len(data), 3)
    assert (low, high) == pytest.approx(minmax.ranges[quantizer])
    assert (float(vectors.min()), float(vectors.max())) == pytest.approx((low, high), rel=1e-6)
    assert mse.ranges[quantizer] == pytest.approx(got)
    calls.clear()
    quantize_aware(_net(flavour)[0], data, ranges="mse")
    assert calls == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bias_correction_removes_the_mean_shift_of_the_int8_kernels(flavour):
    """With `bias_correction`, each int8 layer starts with its folded bias less the
    mean its kernel's rounding adds: the first layer (its inputs the same in every
    copy; activations not rounded) then has the float layer's per-channel mean on the
    calibration rows, to float32 rounding, where without it is off by far more. It
    lands in BN's beta, else in the bias (BN without beta); the depthwise half of a
    separable conv, which has neither, is measured with its pointwise half, which
    takes both shifts; a layer with neither and no such layer after it is named with
    its reason."""
    k, bn = FLAVOURS[flavour]
    model, data = _net(flavour)
    data = np.abs(data)  # inputs with a mean (as images): the shift is then large
    inputs = k.Input((8, 8, 3))
    y = bn(center=False)(k.layers.Conv2D(5, 3, name="conv")(inputs))  # bias, no beta
    y = k.layers.Conv2D(4, 1, use_bias=False, name="bare")(y)  # neither: named
    no_beta = k.Model(inputs, k.layers.Dense(2, name="dense")(k.layers.Flatten()(y)))
    inputs = k.Input((8, 8, 3))  # the depthwise half has no bias: "sep" takes its shift
    y = bn()(k.layers.SeparableConv2D(4, 3, use_bias=False, name="sep")(inputs))
    separable = k.Model(inputs, k.layers.GlobalAveragePooling2D()(y))
    for net, name in ((model, "conv"), (no_beta, "conv"), (separable, "sep")):
        exact = quantize_aware(net, data, weight_bits=None)
        plain = quantize_aware(net, data)
        corrected, plan = quantize_aware(net, data, bias_correction=True, return_plan=True)

        def output(aware):  # the layer's output without the activations' rounding
            lowered = keras_bn.quantization.inference_model(aware, activations=False)
            return _numpy(k.Model(lowered.inputs, lowered.get_layer(name).output)(
                data, training=False))

        def channel_error(aware):
            return np.max(np.abs(np.mean(output(aware) - output(exact), axis=(0, 1, 2))))

        scale = np.max(np.abs(output(exact)))
        assert channel_error(plain) > 1e-4 * scale, channel_error(plain)
        assert channel_error(corrected) <= RTOL * scale, channel_error(corrected)
    assert plan.corrected == {"sep": plan.corrected["sep"],
                              "sep_depthwise": "through the beta of 'sep'"}
    _, plan = quantize_aware(no_beta, data, bias_correction=True, return_plan=True)
    assert sorted(plan.corrected) == ["conv", "dense"]
    assert plan.corrected["conv"].startswith("bias (largest shift ")  # no beta
    assert plan.uncorrected == {"bare": "it has neither a BN beta nor a bias to correct"}
    _, plan = quantize_aware(model, data, bias_correction=True, return_plan=True)
    assert sorted(plan.corrected) == ["conv", "depthwise", "head", "separable"], plan
    assert plan.corrected["conv"].startswith("beta (largest shift ")
    with pytest.raises(keras_bn.InputError, match="bias_correction measures each layer's "
                                                  "shift on calibration rows"):
        quantize_aware(model, bias_correction=True)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_keras3_cases_pass_on_the_other_backends(backend):
    """This file's Keras 3 cases in a process on the JAX and torch backends."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", __file__, "-k", "keras3 and not other_backends"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "10 passed" in run.stdout, run.stdout[-3000:]
