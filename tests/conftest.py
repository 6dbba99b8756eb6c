import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def assert_close(actual, expected, rtol, what=""):
    """max|actual - expected| <= rtol * max(1, max|expected|): a tolerance on the scale of
    the values, since float32 reductions in a different order differ by ~n * 6e-8."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


@pytest.fixture(autouse=True)
def _seed_and_clear():
    np.random.seed(0)
    tf.random.set_seed(0)
    yield
    import tf_keras
    tf_keras.backend.clear_session()


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and parameters (a fold test with mean 0, var 1 proves
    nothing), in every BN layer of `model` and its nested models."""
    from keras_bn.fold.plan import is_batch_norm, is_model

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


def randomize_biases(model, seed=0):
    """Non-zero biases, as a trained model has (converters drop an Add of zeros)."""
    rs = np.random.RandomState(seed)
    for weight in model.weights:
        if weight.name.split("/")[-1].startswith("bias"):
            weight.assign(rs.randn(*weight.shape) * 0.1)
    return model
