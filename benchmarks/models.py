"""The models the benchmarks (and tests) measure: real architectures with real-looking BN."""

import numpy as np
import tf_keras

from keras_bn.layers.find import is_batch_norm, is_model


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and parameters in every BN layer of `model` (nested
    included): a fold of fresh BN (mean 0, variance 1) proves nothing."""
    rs = np.random.RandomState(seed)
    for layer in model.layers:
        if is_model(layer):
            randomize_bn(layer, seed + 1)
        elif is_batch_norm(layer):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rs.randn(*shape) * 0.5)
            layer.moving_variance.assign(rs.rand(*shape) + 0.3)
            if layer.gamma is not None:
                layer.gamma.assign(rs.randn(*shape))
            if layer.beta is not None:
                layer.beta.assign(rs.randn(*shape))
    return model


def realistic_bn(model, seed=0, batch=16):
    """BN layers as a trained network has them: moving statistics measured on data (here
    `batch` random normal inputs, recalibrated exactly: every channel its own mean and
    variance), |gamma| in [0.2, 0.8] with random signs, beta ~ N(0, 0.1).

    `randomize_bn`'s independent random statistics make a deep network (EfficientNet,
    200+ BNs) chaotic: its outputs reach 1e11 and float32 rounding alone moves them by
    percent, so no fold check could pass or mean anything there. What else was tried,
    measured in float64 (fold error relative to the output scale): statistics measured
    on 4 inputs leave channels of the deepest stages (one spatial position at 32x32)
    with a tiny std, and ResNetRS152's outputs reach 3e6 with a 20 % error from float64
    rounding alone (64 inputs: 6e-6; 16 inputs: 4e-12); perturbing the measured
    statistics (mean +- 0.1 std, variance x 0.8..1.25) compounds over depth
    (EfficientNetB7's outputs reach 4e33); |gamma| up to 1.5 lets every residual branch
    add more than a unit of variance. The verification inputs are another draw than the
    calibration ones, as in real use.
    """
    from keras_bn.verification import random_inputs
    from keras_bn.layers.find import batch_norm_layers

    rs = np.random.RandomState(seed)
    layers = [layer for _, layer in batch_norm_layers(model)]
    for layer in layers:
        shape = layer.moving_mean.shape
        if layer.gamma is not None:
            layer.gamma.assign(rs.uniform(0.2, 0.8, shape) * rs.choice([-1, 1], shape))
        if layer.beta is not None:
            layer.beta.assign(rs.randn(*shape) * 0.1)
    if layers:  # one training-mode step with momentum 0: each BN keeps its batch's
        # statistics, measured behind earlier BNs that normalize with the same batch's,
        # as in training. (keras_bn.recalibrate measures in inference mode behind the
        # statistics the layers already have: random ones here, which overflow.)
        inputs = random_inputs(model, batch=batch, seed=seed + 1)
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.momentum = 0.0
        model(inputs if len(inputs) > 1 else inputs[0], training=True)
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return model


def randomize_biases(model, seed=0):
    """Non-zero biases, as a trained model has (converters drop an Add of zeros)."""
    rs = np.random.RandomState(seed)
    for weight in model.weights:
        if weight.name.split("/")[-1].startswith("bias"):
            weight.assign(rs.randn(*weight.shape) * 0.1)
    return model


def application(name, quick=False):
    """ResNet50 or MobileNetV2 with `weights=None` (nothing is downloaded), BN statistics
    and biases randomized. `quick` gives small inputs (and a thin MobileNetV2)."""
    kwargs = dict(weights=None, classifier_activation=None)
    if quick:
        kwargs["input_shape"] = (96, 96, 3)
        if name == "MobileNetV2":
            kwargs["alpha"] = 0.35
    model = getattr(tf_keras.applications, name)(**kwargs)
    return randomize_biases(randomize_bn(model))
