"""The pure folding functions, each against the unfolded computation with TensorFlow ops."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bn.folding import math as fm
from helpers import assert_close

# float32 convolutions of O(1) values over <= 100 products: 1e-5 of the output scale.
RTOL = 1e-5
rs = np.random.RandomState(0)


def _bn(channels):
    mean, var = rs.randn(channels), rs.rand(channels) + 0.3
    gamma, beta = rs.randn(channels), rs.randn(channels)
    a, b = fm.bn_affine(mean, var, 1e-3, gamma, beta)
    return a, b


def _f32(*arrays):
    return [np.asarray(x, np.float32) for x in arrays]


def test_bn_affine_is_the_inference_formula():
    x = rs.randn(5, 3)
    mean, var, gamma, beta = rs.randn(3), rs.rand(3) + 0.1, rs.randn(3), rs.randn(3)
    a, b = fm.bn_affine(mean, var, 1e-3, gamma, beta)
    np.testing.assert_allclose(a * x + b, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta,
                               rtol=1e-12)
    a, b = fm.bn_affine(mean, var, 1e-3)  # scale=False, center=False
    np.testing.assert_allclose(a * x + b, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_after_dense(bias):
    x, w = rs.randn(4, 6), rs.randn(6, 3)
    c = rs.randn(3) if bias else None
    a, b = _bn(3)
    k, c2 = fm.fold_bn_after_dense(*_f32(w), c, a, b)
    assert_close(x @ k + c2, a * (x @ w + (0 if c is None else c)) + b, RTOL)


@pytest.mark.parametrize("groups", [1, 2])
def test_after_conv(groups):
    x = rs.randn(2, 7, 7, 4).astype("float32")
    w = rs.randn(3, 3, 4 // groups, 6).astype("float32")
    c = rs.randn(6).astype("float32")
    a, b = _bn(6)
    k, c2 = fm.fold_bn_after_conv(w, c, a, b)
    conv = lambda k: tf.nn.conv2d(x, k, 1, "SAME").numpy()
    assert_close(conv(k) + c2, a * (conv(w) + c) + b, RTOL)


def test_after_depthwise_with_multiplier():
    x = rs.randn(2, 7, 7, 3).astype("float32")
    w = rs.randn(3, 3, 3, 2).astype("float32")  # output channel c*2+q <-> [..., c, q]
    a, b = _bn(6)
    k, c2 = fm.fold_bn_after_depthwise(w, None, a, b)
    conv = lambda k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME").numpy()
    assert_close(conv(k) + c2, a * conv(w) + b, RTOL)


def test_after_separable():
    x = rs.randn(2, 7, 7, 3).astype("float32")
    dw, pw = rs.randn(3, 3, 3, 2).astype("float32"), rs.randn(1, 1, 6, 5).astype("float32")
    c = rs.randn(5).astype("float32")
    a, b = _bn(5)
    dw2, pw2, c2 = fm.fold_bn_after_separable(dw, pw, c, a, b)
    conv = lambda d, p: tf.nn.separable_conv2d(x, d, p, [1, 1, 1, 1], "SAME").numpy()
    assert_close(conv(dw2, pw2) + c2, a * (conv(dw, pw) + c) + b, RTOL)
    np.testing.assert_array_equal(dw2, dw)


def test_after_conv_transpose():
    x = rs.randn(2, 5, 5, 3).astype("float32")
    w = rs.randn(3, 3, 4, 3).astype("float32")  # (h, w, out, in)
    a, b = _bn(4)
    k, c2 = fm.fold_bn_after_conv_transpose(w, None, a, b)
    conv = lambda k: tf.nn.conv2d_transpose(x, k, [2, 11, 11, 4], 2, "VALID").numpy()
    assert_close(conv(k) + c2, a * conv(w) + b, RTOL)


def test_before_dense():
    x, w, c = rs.randn(4, 6), rs.randn(6, 3).astype("float32"), rs.randn(3)
    a, b = _bn(6)
    k, c2 = fm.fold_bn_before_dense(w, c, a, b)
    assert_close(x @ k + c2, (a * x + b) @ w + c, RTOL)


@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (1, 2)])
def test_before_conv_valid(strides, dilation):
    x = rs.randn(2, 9, 9, 3).astype("float32")
    w = rs.randn(3, 3, 3, 5).astype("float32")
    a, b = _bn(3)
    k, c2 = fm.fold_bn_before_conv(w, None, a, b)
    conv = lambda x, k: tf.nn.conv2d(x, k, strides, "VALID", dilations=dilation).numpy()
    assert_close(conv(x, k) + c2, conv((a * x + b).astype("float32"), w), RTOL)


def test_before_conv_same_padding_is_not_exact():
    """Why the plan refuses it: the border outputs see the zero padding, not b."""
    x = rs.randn(1, 6, 6, 2).astype("float32")
    w = rs.randn(3, 3, 2, 2).astype("float32")
    a, b = _bn(2)
    k, c2 = fm.fold_bn_before_conv(w, None, a, b)
    conv = lambda x, k: tf.nn.conv2d(x, k, 1, "SAME").numpy()
    diff = np.abs(conv(x, k) + c2 - conv((a * x + b).astype("float32"), w))
    assert diff[0, 1:-1, 1:-1].max() < 1e-4 and diff[0, 0].max() > 1e-3


def test_before_depthwise_valid():
    x = rs.randn(2, 7, 7, 3).astype("float32")
    w = rs.randn(3, 3, 3, 2).astype("float32")
    c = rs.randn(6).astype("float32")
    a, b = _bn(3)
    k, c2 = fm.fold_bn_before_depthwise(w, c, a, b)
    conv = lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID").numpy()
    assert_close(conv(x, k) + c2, conv((a * x + b).astype("float32"), w) + c, RTOL)


def test_inputs_are_never_modified_and_dtype_is_kept():
    w, c = rs.randn(3, 3, 2, 4).astype("float32"), rs.randn(4).astype("float32")
    w0, c0 = w.copy(), c.copy()
    k, c2 = fm.fold_bn_after_conv(w, c, *_bn(4))
    assert k.dtype == c2.dtype == np.float32
    k, c2 = fm.fold_bn_before_conv(w, c, *_bn(2))
    assert k.dtype == c2.dtype == np.float32
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(c, c0)


def test_compose_affine_is_two_bns_in_a_row():
    x = rs.randn(5, 3)
    first, second = _bn(3), _bn(3)
    a, b = fm.compose_affine(first, second)
    np.testing.assert_allclose(a * x + b, second[0] * (first[0] * x + first[1]) + second[1],
                               rtol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_before_grouped_conv_valid(groups):
    x = rs.randn(2, 7, 7, 4).astype("float32")
    w = rs.randn(3, 3, 4 // groups, 8).astype("float32")
    c = rs.randn(8).astype("float32")
    a, b = _bn(4)
    k, c2 = fm.fold_bn_before_conv(w, c, a, b, groups=groups)
    conv = lambda inp, kernel: tf.nn.conv2d(inp, kernel, 1, "VALID").numpy()
    assert_close(conv(x, k) + c2, conv((a * x + b).astype("float32"), w) + c, RTOL)


def test_before_separable_valid():
    x = rs.randn(2, 7, 7, 3).astype("float32")
    dw = rs.randn(3, 3, 3, 2).astype("float32")
    pw = rs.randn(1, 1, 6, 5).astype("float32")
    c = rs.randn(5).astype("float32")
    a, b = _bn(3)
    dw2, pw2, c2 = fm.fold_bn_before_separable(dw, pw, c, a, b)
    sep = lambda inp, d, p: tf.nn.separable_conv2d(inp, d, p, [1, 1, 1, 1], "VALID").numpy()
    assert_close(sep(x, dw2, pw2) + c2, sep((a * x + b).astype("float32"), dw, pw) + c, RTOL)
