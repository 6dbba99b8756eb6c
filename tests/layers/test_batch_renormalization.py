"""keras_bn.BatchRenormalization against tf-keras's `renorm=True` and against the paper."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn import flavour as flavour_module
from keras_bn.layers import fused as fused_kernel, statistics
from helpers import assert_close
from test_batch_normalization import CASES, RTOL, _as_4d, _batches, _train_step

CONSTANT = dict(warmup_steps=0, rmax_ramp_steps=0, dmax_ramp_steps=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("shape,axis", CASES)
def test_matches_tf_keras_renorm_for_20_steps(shape, axis, fused, monkeypatch):
    rmax, dmax = 1.5, 0.5  # tight, so the clipping is active on these batches
    ours = keras_bn.BatchRenormalization(axis=axis, momentum=0.9, renorm_momentum=0.8,
                                         rmax=rmax, dmax=dmax, **CONSTANT)
    ref = tf_keras.layers.BatchNormalization(
        axis=axis, momentum=0.9, renorm=True, renorm_momentum=0.8,
        renorm_clipping={"rmin": 1 / rmax, "rmax": rmax, "dmax": dmax})
    # BRN's inference statistics are defined as BN's: compare with tf-keras's fused BN.
    to4, from4, ref_axis = _as_4d(shape, axis)
    bn = tf_keras.layers.BatchNormalization(axis=ref_axis, momentum=0.9)
    if fused:  # small inputs of other layouts take the fused kernel only when told to
        monkeypatch.setattr(fused_kernel, "FUSED_MIN_ELEMENTS", 0)
    else:
        ours._can_fuse = lambda *args: False
    gamma = (np.random.RandomState(1).rand(shape[axis]) + 0.5).astype("float32")
    for layer, layer_shape in ((ours, shape), (ref, shape), (bn, to4(tf.zeros(shape)).shape)):
        layer.build(layer_shape)
        layer.gamma.assign(gamma)
    clipped = 0
    for step, x in enumerate(_batches(shape, 20)):
        r_unclipped = np.sqrt(x.var(axis=tuple(i for i in range(len(shape))
                                               if i != axis % len(shape))) + 1e-3)
        clipped += np.any(r_unclipped / np.maximum(ref.renorm_stddev.numpy(), 0.03) > rmax)
        got = _train_step(ours, x)
        want = _train_step(ref, x)
        for name, g, w in zip(["output", "d/dx", "d/dgamma", "d/dbeta"], got, want):
            assert_close(g, w, RTOL, f"step {step} {name}")
        _train_step(bn, x, to4, from4)
    assert clipped > 0, "the test data never reached the clipping"
    assert_close(ours.renorm_mean, ref.renorm_mean, RTOL, "renorm_mean")
    assert_close(ours.renorm_stddev, ref.renorm_stddev, RTOL, "renorm_stddev")
    assert_close(ours.moving_mean, ref.moving_mean, RTOL, "moving_mean")
    assert_close(ours.moving_variance, bn.moving_variance, RTOL, "moving_variance")
    assert int(ours.renorm_step.numpy()) == 20
    x = next(_batches(shape, 1, seed=5))
    assert_close(ours(x, training=False), from4(bn(to4(x), training=False)), RTOL,
                 "inference is plain BN")


def test_r_and_d_follow_the_paper():
    """Algorithm 1 of Ioffe (2017) written out in numpy, one step from given statistics."""
    rs = np.random.RandomState(0)
    x = (rs.randn(32, 4) * [0.2, 1.0, 5.0, 1.0] + [0.0, 3.0, 0.0, -9.0]).astype("float32")
    layer = keras_bn.BatchRenormalization(rmax=2.0, dmax=1.0, epsilon=1e-3, **CONSTANT)
    layer.build(x.shape)
    layer.gamma.assign([1.5, 0.5, 1.0, 2.0])
    layer.beta.assign([0.1, 0.2, 0.3, 0.4])
    mu, sigma = np.array([0.0, 1.0, 0.5, -8.5]), np.array([1.0, 1.0, 1.0, 1.0])
    layer.renorm_mean.assign(mu)
    layer.renorm_stddev.assign(sigma)
    y = layer(x, training=True).numpy()
    mean_b, sigma_b = x.mean(0), np.sqrt(x.var(0) + 1e-3)
    r = np.clip(sigma_b / sigma, 1 / 2.0, 2.0)
    d = np.clip((mean_b - mu) / sigma, -1.0, 1.0)
    assert r.min() == 0.5 and r.max() == 2.0 and np.abs(d).max() == 1.0  # clipping active
    want = layer.gamma.numpy() * ((x - mean_b) / sigma_b * r + d) + layer.beta.numpy()
    assert_close(y, want, RTOL)


@pytest.mark.parametrize("flavour", flavour_module.NAMES)
def test_schedule_is_plain_bn_then_ramps_linearly(flavour):
    ops = flavour_module.named(flavour).ops

    def limits(step, *schedule):
        return tuple(float(v) for v in statistics.renorm_limits(
            ops, step, 3.0, 5.0, *(schedule or (10, 20, 40))))

    assert limits(0) == (1.0, 0.0)
    assert limits(9) == (1.0, 0.0)
    assert limits(10) == (1.0, 0.0)
    assert limits(20) == (2.0, 1.25)
    assert limits(30) == (3.0, 2.5)
    assert limits(1000) == (3.0, 5.0)
    assert limits(0, 0, 0, 0) == (3.0, 5.0)
    assert limits(ops.convert_to_tensor(20)) == (2.0, 1.25)


def test_warmup_is_exactly_batch_normalization():
    rs = np.random.RandomState(0)
    brn = keras_bn.BatchRenormalization(warmup_steps=5)
    bn = keras_bn.BatchNormalization()
    for _ in range(5):
        x = (rs.randn(8, 3) * 4 + 2).astype("float32")
        assert_close(brn(x, training=True), bn(x, training=True), RTOL)
    x = (rs.randn(8, 3) * 4 + 2).astype("float32")
    brn.warmup_steps, brn.rmax_ramp_steps, brn.dmax_ramp_steps = 5, 0, 0
    assert np.abs(brn(x, training=True) - bn(x, training=True)).max() > 1e-2


def test_step_counter_is_saved_and_training_resumes(tmp_path):
    model = tf_keras.Sequential([tf_keras.Input((3,)), keras_bn.BatchRenormalization(
        warmup_steps=2, rmax_ramp_steps=4, dmax_ramp_steps=4)])
    for _ in range(3):
        model(np.random.randn(4, 3).astype("float32"), training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    layer = loaded.layers[0]
    assert int(layer.renorm_step.numpy()) == 3
    assert [float(v) for v in layer.clip_limits()] == [1.5, 1.25]
