"""keras_bn.BatchNormalization against tf-keras's BatchNormalization, with real TensorFlow."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn.layers import fused as fused_kernel
from helpers import assert_close

# float32, values O(1), reductions over <= 1e4 elements in another order: 1e-5 relative.
RTOL = 1e-5

CASES = [  # (shape, axis): 2-D .. 5-D, channels last and first
    ((16, 6), -1),
    ((4, 10, 6), -1),
    ((4, 6, 10), 1),
    ((4, 5, 7, 6), -1),
    ((4, 6, 5, 7), 1),
    ((2, 3, 4, 5, 6), -1),
    ((2, 6, 3, 4, 5), 1),
]


def _batches(shape, steps, seed=0):
    rs = np.random.RandomState(seed)
    for step in range(steps):
        # A different distribution per step, so the moving averages have work to do.
        yield (rs.randn(*shape) * (1.0 + 0.5 * step % 3) + rs.randn()).astype("float32")


def _train_step(layer, x, transform=lambda t: t, untransform=lambda t: t):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = untransform(layer(transform(x), training=True))
        loss = tf.reduce_sum(y * tf.cos(y))  # a loss whose gradient is not uniform
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [y.numpy()] + [g.numpy() for g in grads]


def _as_4d(shape, axis):
    """tf-keras's fused (Bessel-corrected) path only takes 4-D/5-D: view others as 4-D."""
    channels = shape[axis]
    if len(shape) >= 4:
        return (lambda t: t), (lambda t: t), axis
    if axis in (-1, len(shape) - 1):
        return (lambda t: tf.reshape(t, [1, -1, 1, channels]),
                lambda t: tf.reshape(t, shape), -1)
    return (lambda t: tf.reshape(t, [shape[0], channels, -1, 1]),
            lambda t: tf.reshape(t, shape), 1)


def _pair(shape, axis, ours_cls=keras_bn.BatchNormalization, ref_kwargs=None, **kwargs):
    to4, from4, ref_axis = _as_4d(shape, axis)
    ours = ours_cls(axis=axis, momentum=0.9, **kwargs)
    ref = tf_keras.layers.BatchNormalization(axis=ref_axis, momentum=0.9,
                                             **(ref_kwargs or {}))
    ours.build(shape)
    ref.build(to4(tf.zeros(shape)).shape)
    rs = np.random.RandomState(1)
    gamma = (rs.rand(shape[axis]) + 0.5).astype("float32")
    beta = rs.randn(shape[axis]).astype("float32")
    for layer in (ours, ref):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return ours, ref, to4, from4


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("shape,axis", CASES)
def test_matches_tf_keras_fused_for_20_steps(shape, axis, fused, monkeypatch):
    ours, ref, to4, from4 = _pair(shape, axis)
    assert ref.fused
    if fused:  # small inputs of other layouts take the fused kernel only when told to
        monkeypatch.setattr(fused_kernel, "FUSED_MIN_ELEMENTS", 0)
    else:
        ours._can_fuse = lambda *args: False  # exercise the generic (non-fused) path
    for step, x in enumerate(_batches(shape, 20)):
        got = _train_step(ours, x)
        want = _train_step(ref, x, to4, from4)
        for name, g, w in zip(["output", "d/dx", "d/dgamma", "d/dbeta"], got, want):
            assert_close(g, w, RTOL, f"step {step} {name}")
    assert_close(ours.moving_mean, ref.moving_mean, RTOL, "moving_mean")
    assert_close(ours.moving_variance, ref.moving_variance, RTOL, "moving_variance")
    x = next(_batches(shape, 1, seed=5))
    assert_close(ours(x, training=False), from4(ref(to4(x), training=False)), RTOL,
                 "inference")


def test_moving_variance_is_bessel_corrected_on_2d():
    x = np.random.RandomState(0).randn(8, 3).astype("float32")
    layer = keras_bn.BatchNormalization(momentum=0.0)
    layer(x, training=True)
    assert_close(layer.moving_variance, np.var(x, axis=0, ddof=1), 1e-6)
    assert_close(layer.moving_mean, np.mean(x, axis=0), 1e-6)


def test_virtual_batch_matches_tf_keras_ghost_batches():
    shape = (8, 5, 3)
    ours = keras_bn.BatchNormalization(virtual_batch_size=4, momentum=0.5)
    ref = tf_keras.layers.BatchNormalization(virtual_batch_size=4, momentum=0.5)
    x = np.random.RandomState(0).randn(*shape).astype("float32") * 3 + 1
    got = _train_step(ours, x)
    want = _train_step(ref, x)
    # tf-keras keeps ghost-batch weights as (1, 1, 1, C); ours are (C,).
    for name, g, w in zip(["output", "d/dx", "d/dgamma", "d/dbeta"], got, want):
        assert_close(g, np.reshape(w, g.shape), RTOL, name)
    assert_close(ours.moving_mean, np.reshape(ref.moving_mean, -1), RTOL)
    # tf-keras's non-fused path stores the biased variance; ours the unbiased one, with
    # n = 4 examples x 5 steps per ghost batch: (ours - 0.5) / (ref - 0.5) == n / (n - 1).
    n = 4 * 5
    assert_close((ours.moving_variance.numpy() - 0.5) * (n - 1) / n,
                 np.reshape(ref.moving_variance, -1) - 0.5, RTOL)


def test_virtual_batch_must_divide_batch():
    layer = keras_bn.BatchNormalization(virtual_batch_size=3, name="ghost")
    with pytest.raises(ValueError, match=r"ghost.*batch of 8.*virtual_batch_size=3"):
        layer(tf.zeros((8, 4)), training=True)


def test_mask_excludes_positions_from_statistics():
    rs = np.random.RandomState(0)
    x = rs.randn(3, 6, 4).astype("float32")
    mask = rs.rand(3, 6) > 0.4
    layer = keras_bn.BatchNormalization(momentum=0.0, epsilon=1e-3)
    y = layer(x, training=True, mask=tf.constant(mask)).numpy()
    kept = x[mask]
    mean, var = kept.mean(0), kept.var(0)
    assert_close(y, (x - mean) / np.sqrt(var + 1e-3), RTOL)
    assert_close(layer.moving_mean, mean, 1e-6)
    assert_close(layer.moving_variance, kept.var(0, ddof=1), 1e-6)


def test_masking_layer_feeds_mask_through_a_model():
    x = np.random.RandomState(0).randn(4, 5, 3).astype("float32")
    x[:, 3:] = 0.0
    model = tf_keras.Sequential([tf_keras.layers.Masking(0.0, input_shape=(5, 3)),
                                 keras_bn.BatchNormalization(momentum=0.0)])
    model(x, training=True)
    assert_close(model.layers[1].moving_mean, x[:, :3].reshape(-1, 3).mean(0), 1e-6)


def test_synchronized_without_strategy_equals_one_device():
    x = np.random.RandomState(0).randn(6, 4, 4, 3).astype("float32")
    plain = keras_bn.BatchNormalization()
    synced = keras_bn.BatchNormalization(synchronized=True)
    for a, b in zip(_train_step(plain, x), _train_step(synced, x)):
        assert_close(a, b, RTOL)
    assert_close(plain.moving_variance, synced.moving_variance, RTOL)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_batch_does_not_poison_moving_statistics(flavour, bad):
    _, layers = flavour
    layer = layers.BatchNormalization(momentum=0.5)
    good = np.random.RandomState(0).randn(4, 3, 3, 2).astype("float32")
    layer(good, training=True)
    mean, var = np.array(layer.moving_mean), np.array(layer.moving_variance)
    poisoned = good.copy()
    poisoned[0, 0, 0, 1] = bad
    layer(poisoned, training=True)
    np.testing.assert_array_equal(np.array(layer.moving_mean), mean)
    np.testing.assert_array_equal(np.array(layer.moving_variance), var)
    assert int(np.array(layer.skipped_updates)) == 1
    layer(good, training=True)
    assert int(np.array(layer.skipped_updates)) == 1
    assert not np.array_equal(np.array(layer.moving_mean), mean)


def test_a_fully_masked_batch_is_skipped_and_counted(flavour):
    _, layers = flavour
    layer = layers.BatchNormalization(momentum=0.5)
    x = (np.random.RandomState(0).randn(4, 5, 3) * 3.0 + 2.0).astype("float32")
    layer(x, training=True, mask=np.ones((4, 5), bool))
    mean, variance = np.array(layer.moving_mean), np.array(layer.moving_variance)
    layer(x, training=True, mask=np.zeros((4, 5), bool))
    np.testing.assert_array_equal(np.array(layer.moving_mean), mean)
    np.testing.assert_array_equal(np.array(layer.moving_variance), variance)
    assert int(np.array(layer.skipped_updates)) == 1
    y = layer(x, training=False)  # inference is unaffected by the empty batch
    assert float(np.max(np.abs(np.array(y)))) < 10.0


@pytest.mark.parametrize("setup", ["trainable", "frozen"])
def test_trainable_false_and_frozen_mean_inference(flavour, setup):
    _, layers = flavour
    x = (np.random.RandomState(1).randn(16, 3) * 3 + 2).astype("float32")
    layer = layers.BatchNormalization()
    layer.build(x.shape)
    if setup == "trainable":
        layer.trainable = False
    else:
        layer.frozen = True
    assert_close(layer(x, training=True), x / np.sqrt(1 + 1e-3), 1e-6)
    np.testing.assert_array_equal(np.array(layer.moving_mean), np.zeros(3))


def _dtype(value):
    return str(getattr(value.dtype, "name", value.dtype))


@pytest.mark.parametrize("cls", ["BatchNormalization", "BatchRenormalization"])
def test_integer_inputs_under_a_mixed_float16_layer_policy(flavour, cls):
    _, layers = flavour
    layer = getattr(layers, cls)(dtype="mixed_float16")
    y = layer(np.arange(24, dtype="int32").reshape(8, 3), training=True)
    assert _dtype(y) == "float16"
    assert {_dtype(w) for w in layer.weights} <= {"float32", "int32", "int64"}


def test_training_none_follows_learning_phase_and_trainable_false_means_inference():
    x = np.random.RandomState(0).randn(4, 3).astype("float32") * 5 + 2
    layer = keras_bn.BatchNormalization()
    assert_close(layer(x), x / np.sqrt(1 + 1e-3), 1e-6)  # learning phase 0: inference
    with tf_keras.backend.learning_phase_scope(1):
        y = layer(x).numpy()
    assert_close(y.mean(0), np.zeros(3), 1e-5)  # batch statistics
    frozen = keras_bn.BatchNormalization(trainable=False)
    before = frozen(x, training=False).numpy()
    assert_close(frozen(x, training=True), before, 0)
    assert_close(frozen.moving_mean, np.zeros(3), 0)


def test_training_as_a_tensor_inside_tf_function():
    layer = keras_bn.BatchNormalization(momentum=0.0)
    x = np.random.RandomState(0).randn(5, 2).astype("float32") * 3 + 1
    run = tf.function(lambda x, t: layer(x, training=t))
    assert_close(run(x, tf.constant(False)), x / np.sqrt(1 + 1e-3), 1e-6)
    run(x, tf.constant(True))
    assert_close(layer.moving_mean, x.mean(0), 1e-6)


def test_mixed_float16_keeps_statistics_in_float32():
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for cls in (keras_bn.BatchNormalization, keras_bn.BatchRenormalization):
            layer = cls()
            x = np.random.RandomState(0).randn(4, 5, 5, 3).astype("float32")
            y = layer(tf.constant(x, tf.float16), training=True)
            assert y.dtype == tf.float16
            assert all(w.dtype == tf.float32 for w in layer.weights if w.dtype.is_floating)
            want = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3)
            # float16 keeps 11 bits: 1e-2 relative is its rounding of O(1) values.
            assert_close(y.numpy(), want, 1e-2)
            layer(tf.constant(x, tf.float16), training=False)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_any_channel_axis_of_a_3d_input_in_the_middle():
    x = np.random.RandomState(0).randn(4, 3, 5, 6).astype("float32")
    layer = keras_bn.BatchNormalization(axis=2, momentum=0.0)
    y = layer(x, training=True).numpy()
    mean = x.mean((0, 1, 3), keepdims=True)
    var = x.var((0, 1, 3), keepdims=True)
    assert_close(y, (x - mean) / np.sqrt(var + 1e-3), RTOL)


def test_multiple_axes():
    x = np.random.RandomState(0).randn(6, 3, 4).astype("float32")
    layer = keras_bn.BatchNormalization(axis=[1, 2], momentum=0.0)
    y = layer(x, training=True).numpy()
    assert layer.gamma.shape == (3, 4)
    assert_close(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), RTOL)
    assert_close(layer.moving_variance, x.var(0, ddof=1), 1e-6)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(momentum=1.0), r"'bad'.*momentum=1\.0.*\[0, 1\)"),
    (dict(momentum=-0.1), r"'bad'.*momentum=-0\.1"),
    (dict(epsilon=0.0), r"'bad'.*epsilon=0\.0"),
    (dict(virtual_batch_size=0), r"'bad'.*virtual_batch_size=0"),
    (dict(axis="x"), r"'bad'.*axis='x'"),
])
def test_bad_configuration_is_a_clear_error(flavour, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        flavour[1].BatchNormalization(name="bad", **kwargs)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(rmax=0.5), r"'bad'.*rmax=0\.5.*>= 1"),
    (dict(dmax=-1.0), r"'bad'.*dmax=-1\.0.*>= 0"),
    (dict(warmup_steps=-3), r"'bad'.*warmup_steps=-3"),
    (dict(renorm_momentum=1.5), r"'bad'.*renorm_momentum=1\.5"),
])
def test_bad_renorm_configuration_is_a_clear_error(flavour, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        flavour[1].BatchRenormalization(name="bad", **kwargs)


@pytest.mark.parametrize("shape,kwargs,pattern", [
    ((4,), {}, r"'bad'.*rank >= 2.*\(4,\)"),
    ((4, 3), dict(axis=2), r"'bad'.*axis=2.*rank 2.*-2\.\.1"),
    ((4, 3), dict(axis=0), r"'bad'.*axis=0.*batch axis"),
    ((4, None), {}, r"'bad'.*channel dimension.*must be known"),
])
def test_bad_input_shape_is_a_clear_error(flavour, shape, kwargs, pattern):
    layer = flavour[1].BatchNormalization(name="bad", **kwargs)
    with pytest.raises(ValueError, match=pattern):
        layer.build(shape)


def test_single_element_batch_warns():
    layer = keras_bn.BatchNormalization(name="one")
    with pytest.warns(UserWarning, match=r"'one'.*one element per channel"):
        layer(tf.ones((1, 3)), training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(tf.ones((1, 3)), training=False)  # inference is fine


def test_sequential_model_trains_with_fit():
    rs = np.random.RandomState(0)
    x = rs.randn(256, 8, 8, 1).astype("float32")
    y = (x.mean((1, 2, 3)) > 0).astype("int32")
    model = tf_keras.Sequential([
        tf_keras.layers.Conv2D(8, 3, input_shape=(8, 8, 1)),
        keras_bn.BatchNormalization(),
        tf_keras.layers.ReLU(),
        tf_keras.layers.Conv2D(8, 3),
        keras_bn.BatchRenormalization(warmup_steps=2, rmax_ramp_steps=5, dmax_ramp_steps=5),
        tf_keras.layers.ReLU(),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(2),
    ])
    model.compile(tf_keras.optimizers.Adam(1e-2),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history["loss"]
    # It learns: the best later epoch is 20 % below the first (the last one alone is noisy:
    # TensorFlow on CPU is not bit-deterministic, and once gave 0.515 after 0.477).
    assert min(history[1:]) < 0.8 * history[0], history
    assert int(model.layers[4].renorm_step.numpy()) == 4 * 8
