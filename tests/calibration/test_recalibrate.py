"""recalibrate: exact statistics of every BN's inputs over the whole data, whatever the
batching and order, all or nothing, on every kind of BN layer.

Tolerance: 1e-5 relative (the issue's bound). Batch moments are float32 sums over at most
a few thousand elements (relative error ~1e-7) merged in float64; numpy's reference is
float64 over the concatenated inputs.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn.calibration.measure import merge
from keras_bn.layers.find import distinct_batch_norm_layers

L = tf_keras.layers
RTOL = 1e-5


def sorted_by_class(n=3, per=60, shape=(6, 6, 2), seed=0):
    """Groups with very different means and spreads, one after the other (AdaBN's case:
    data that arrives by class, domain or file)."""
    rs = np.random.RandomState(seed)
    return np.concatenate([rs.randn(per, *shape) * (g + 1) + 4.0 * g
                           for g in range(n)]).astype("float32")


def two_bn_model(first=keras_bn.BatchNormalization, second=L.BatchNormalization, **kw):
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((6, 6, 2))
    b1, b2 = first(name="b1", **kw), second(name="b2")
    x = b2(L.ReLU()(b1(L.Conv2D(4, 3, name="c1")(inputs))))
    return tf_keras.Model(inputs, L.Dense(3)(L.Flatten()(x))), b1, b2


def bn_inputs(model, layers, x):
    """The inputs each BN layer meets in inference mode, as float64 arrays."""
    probe = tf_keras.Model(model.inputs, [layer.input for layer in layers])
    outputs = probe.predict(x, verbose=0)
    outputs = outputs if len(layers) > 1 else [outputs]
    return [np.asarray(a, np.float64) for a in outputs]


def assert_exact(layer, inputs):
    flat = inputs.reshape(-1, inputs.shape[-1])
    np.testing.assert_allclose(layer.moving_mean.numpy(), flat.mean(0), rtol=RTOL,
                               atol=RTOL * np.abs(flat).max())
    np.testing.assert_allclose(layer.moving_variance.numpy(), flat.var(0, ddof=1), rtol=RTOL)


def test_chan_merge_equals_the_statistics_of_the_union():
    rs = np.random.RandomState(1)
    a, b = rs.randn(7, 3) + 10, rs.randn(12, 3) * 5 - 2

    def triple(x):
        return np.full(3, len(x), np.float64), x.mean(0), ((x - x.mean(0)) ** 2).sum(0)

    n, mean, m2 = merge(triple(a), triple(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m2 / (n - 1), both.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 7, 32, 180])  # 180: one batch; 7: ragged last
def test_exact_on_class_sorted_data_for_any_batch_size(batch_size):
    x = sorted_by_class()
    model, b1, b2 = two_bn_model()
    b1.moving_mean.assign([3.0] * 4)  # statistics far from the data's
    expected = bn_inputs(model, [b1, b2], x)  # one pass: b2 measured behind b1's old state
    keras_bn.recalibrate(model, x, batch_size=batch_size, passes=1, verbose=0)
    assert_exact(b1, expected[0])
    assert_exact(b2, expected[1])


def test_order_does_not_matter_and_averaging_variances_would_be_far_off():
    x = sorted_by_class()  # class means 0, 4, 8; within-class variances 1, 4, 9
    bn = keras_bn.BatchNormalization()
    model = tf_keras.Sequential([tf_keras.Input(x.shape[1:]), bn])
    keras_bn.recalibrate(model, x, batch_size=60, passes=1, verbose=0)
    sorted_variance = bn.moving_variance.numpy().copy()
    shuffled = x[np.random.RandomState(3).permutation(len(x))]
    keras_bn.recalibrate(model, shuffled, batch_size=60, passes=1, verbose=0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), sorted_variance, rtol=RTOL)
    per_class = x.reshape(3, -1, x.shape[-1]).astype(np.float64)  # the three class batches
    averaged = per_class.var(1, ddof=1).mean(0)  # what averaging per-batch variances gives
    ratio = sorted_variance / averaged  # (within + between) / within: ~15.3 / 4.7
    assert np.all(ratio > 2.5), ratio


def test_second_pass_measures_behind_the_new_statistics():
    x = sorted_by_class()
    model, b1, b2 = two_bn_model()
    b1.moving_mean.assign([3.0] * 4)
    keras_bn.recalibrate(model, x, batch_size=50, passes=2, verbose=0)
    assert_exact(b2, bn_inputs(model, [b2], x)[0])  # inputs of the final model
    b1.moving_mean.assign([3.0] * 4)
    keras_bn.recalibrate(model, x, batch_size=50, verbose=0)  # until converged: the same
    assert_exact(b2, bn_inputs(model, [b2], x)[0])


def test_datasets_pairs_nested_and_shared_layers():
    x = sorted_by_class()
    shared = keras_bn.BatchNormalization(name="shared")
    inner_in = tf_keras.Input((6, 6, 2))
    inner = tf_keras.Model(inner_in, shared(inner_in), name="inner")
    outer_in = tf_keras.Input((6, 6, 2))
    model = tf_keras.Model(outer_in, inner(inner(outer_in) * 2.0))  # called twice
    first = np.asarray(x, np.float64)
    second = 2.0 * np.asarray(inner.predict(x, verbose=0), np.float64)
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(16)
    summary = keras_bn.recalibrate(model, data, passes=1, verbose=0)
    assert_exact(shared, np.concatenate([first, second]))
    assert [row["name"] for row in summary] == ["inner/shared"]
    assert summary[0]["count"] == 2 * len(x) * 36


def test_frozen_and_renorm_layers():
    x = sorted_by_class()
    model, b1, b2 = two_bn_model(first=keras_bn.BatchRenormalization,
                                 second=lambda name: L.BatchNormalization(name=name,
                                                                           renorm=True))
    keras_bn.freeze(model)
    expected = bn_inputs(model, [b1, b2], x)
    step = int(b1.renorm_step.numpy())
    keras_bn.recalibrate(model, x, passes=1, verbose=0)
    assert_exact(b1, expected[0])
    assert_exact(b2, expected[1])
    np.testing.assert_allclose(b1.renorm_mean.numpy(), b1.moving_mean.numpy())
    np.testing.assert_allclose(b1.renorm_stddev.numpy() ** 2,
                               b1.moving_variance.numpy() + b1.epsilon, rtol=RTOL)
    # tf-keras keeps moving_variance = moving_stddev**2 - epsilon: both are consistent
    np.testing.assert_allclose(b2.moving_stddev.numpy() ** 2 - b2.epsilon,
                               b2.moving_variance.numpy(), rtol=RTOL)
    assert int(b1.renorm_step.numpy()) == step and not b1.trainable


def test_a_failure_part_way_changes_nothing():
    x = sorted_by_class()
    model, b1, b2 = two_bn_model(first=keras_bn.BatchRenormalization)
    before = [v.numpy().copy() for v in model.variables]

    def batches():
        yield x[:32]
        yield x[32:64]
        raise RuntimeError("the data source broke")

    with pytest.raises(RuntimeError, match="broke"):
        keras_bn.recalibrate(model, batches(), verbose=0)
    with pytest.raises(RuntimeError, match="broke"):  # during the second pass
        keras_bn.recalibrate(model, _Once(x), passes=2, verbose=0)
    for value, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), value)


class _Once:
    """Iterable that gives its batches once, then fails."""

    def __init__(self, x):
        self.x, self.used = x, False

    def __iter__(self):
        if self.used:
            raise RuntimeError("the data source broke")
        self.used = True
        return iter([self.x[:90], self.x[90:]])


def test_under_a_distribution_strategy():
    """Two logical CPUs under MirroredStrategy (set before TensorFlow starts, hence a
    subprocess): each replica measures half of every batch; the merge is exact."""
    script = f"""
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras, keras_bn
rs = np.random.RandomState(0)
x = np.concatenate([rs.randn(60, 5) * (g + 1) + 4 * g for g in range(3)]).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    bn = keras_bn.BatchNormalization()
    model = tf_keras.Sequential([tf_keras.Input((5,)), bn])
    keras_bn.recalibrate(model, x, batch_size={50}, verbose=0)
print(json.dumps([strategy.num_replicas_in_sync,
                  float(np.max(np.abs(bn.moving_mean.numpy() / x.mean(0) - 1))),
                  float(np.max(np.abs(bn.moving_variance.numpy() / x.var(0, ddof=1) - 1)))]))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    replicas, mean_error, variance_error = json.loads(result.stdout.strip().splitlines()[-1])
    assert replicas == 2 and mean_error < RTOL and variance_error < RTOL


def test_bad_arguments_are_input_errors():
    model, _, _ = two_bn_model()
    with pytest.raises(keras_bn.InputError, match="passes=0"):
        keras_bn.recalibrate(model, sorted_by_class(), passes=0)


def test_compiled_once_per_model_and_shape():
    """The measuring step is a tf.function traced once per model, mode (batch or stored
    statistics) and batch shape, not again for each pass or call."""
    from keras_bn.calibration.measure import _STEPS

    x = sorted_by_class()
    model, _, _ = two_bn_model()
    keras_bn.recalibrate(model, x, batch_size=60, verbose=0)  # batch pass, then stored
    keras_bn.recalibrate(model, x, batch_size=60, passes=3, verbose=0)
    keras_bn.recalibrate(model, x, batch_size=60, verbose=0)
    steps = [step for step, _ in _STEPS[model].values()]
    assert len(steps) == 2
    assert [step.experimental_get_tracing_count() for step in steps] == [1, 1]


def test_several_channel_axes():
    x = sorted_by_class()
    bn = keras_bn.BatchNormalization(axis=[1, 3])
    model = tf_keras.Sequential([tf_keras.Input(x.shape[1:]), bn])
    keras_bn.recalibrate(model, x, batch_size=50, verbose=0)
    per_channel = np.moveaxis(x.astype(np.float64), [1, 3], [0, 1]).reshape(6, 2, -1)
    np.testing.assert_allclose(np.reshape(bn.moving_mean.numpy(), (6, 2)),
                               per_channel.mean(-1), rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(np.reshape(bn.moving_variance.numpy(), (6, 2)),
                               per_channel.var(-1, ddof=1), rtol=RTOL)


def test_layers_frozen_with_trainable_gamma_beta():
    x = sorted_by_class()
    model, b1, b2 = two_bn_model(second=keras_bn.BatchRenormalization)
    keras_bn.freeze(model, train_gamma_beta=True)  # inference mode, gamma/beta trainable
    expected = bn_inputs(model, [b1, b2], x)
    keras_bn.recalibrate(model, x, passes=1, verbose=0)
    assert_exact(b1, expected[0])
    assert_exact(b2, expected[1])


def test_overflowing_statistics_change_nothing():
    model, b1, _ = two_bn_model()
    before = [v.numpy().copy() for v in model.variables]
    huge = np.full((8, 6, 6, 2), 3e38, np.float32)  # squares overflow float32
    with pytest.raises(keras_bn.InputError, match="not finite"):
        keras_bn.recalibrate(model, huge, verbose=0)
    for value, variable in zip(before, model.variables):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (100.0, 0.1)])
def test_exact_on_large_feature_maps(offset, scale):
    """112x112 positions per example (ResNet's first stage), a mean far from 0 and a small
    spread: the float32 part of the sums stays within the bound."""
    x = (np.random.RandomState(5).randn(6, 112, 112, 3) * scale + offset).astype("float32")
    bn = keras_bn.BatchNormalization()
    keras_bn.recalibrate(tf_keras.Sequential([tf_keras.Input(x.shape[1:]), bn]), x,
                         batch_size=4, verbose=0)
    assert_exact(bn, x.astype(np.float64))


def test_progress_bar_per_pass(capsys):
    model, _, _ = two_bn_model()
    keras_bn.recalibrate(model, sorted_by_class(), batch_size=60, passes=2, verbose=1)
    out = capsys.readouterr().out
    assert "recalibrate, pass 1/2" in out and "recalibrate, pass 2/2" in out
    assert "3/3" in out  # Keras's Progbar: 3 batches of 60


def test_a_generator_on_a_second_pass_is_a_clear_error():
    model, b1, _ = two_bn_model()
    before = b1.moving_mean.numpy().copy()
    x = sorted_by_class()
    with pytest.raises(keras_bn.InputError, match="read only once"):
        keras_bn.recalibrate(model, (x[i:i + 60] for i in range(0, len(x), 60)), passes=2,
                             verbose=0)
    np.testing.assert_array_equal(b1.moving_mean.numpy(), before)
    keras_bn.recalibrate(model, (x[i:i + 60] for i in range(0, len(x), 60)), passes=1,
                         verbose=0)


def test_batch_moments_with_and_without_a_mask():
    from keras_bn.calibration.measure import batch_moments

    rs = np.random.RandomState(2)
    x = (rs.randn(5, 7, 3) * 2 + 30).astype("float32")
    mask = rs.rand(5, 7) > 0.4
    for m, kept in ((None, x.reshape(-1, 3)), (mask, x[mask])):
        count, mean, m2 = batch_moments(x, [2], m)
        kept = kept.astype(np.float64)
        np.testing.assert_array_equal(count, [len(kept)] * 3)
        np.testing.assert_allclose(mean, kept.mean(0), rtol=RTOL)
        np.testing.assert_allclose(m2 / (count - 1), kept.var(0, ddof=1), rtol=RTOL)


def assert_fixed_point(model, layers, x, rtol):
    """Every BN's statistics are those of the inputs it meets in the model as it now is
    (every BN before it normalizing with its own new statistics), relative to each
    channel's spread."""
    probe = type(model)(model.inputs, [layer.input for layer in layers])
    for layer, inputs in zip(layers, probe.predict(x, verbose=0, batch_size=64)):
        flat = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
        std = flat.std(0) + 1e-3
        mean, variance = (np.asarray(v, np.float64) for v in (layer.moving_mean,
                                                              layer.moving_variance))
        assert np.all(np.abs(mean - flat.mean(0)) <= rtol * std), layer.name
        np.testing.assert_allclose(variance, flat.var(0, ddof=1), rtol=rtol,
                                   atol=1e-6, err_msg=layer.name)


def test_a_deep_chain_from_stale_statistics_reaches_the_fixed_point():
    """14 conv-BN-ReLU blocks in a row whose statistics fit other inputs: each inference
    pass settles one more BN, so a fixed number of passes cannot reach the last (6
    passes and a 1 % stop did not); passes continue until nothing moves."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((6, 6, 2))
    x, layers = inputs, []
    for _ in range(14):
        layers.append(L.BatchNormalization())
        x = L.ReLU()(layers[-1](L.Conv2D(6, 3, padding="same")(x)))
    model = tf_keras.Model(inputs, L.Dense(3)(L.Flatten()(x)))
    data = sorted_by_class()
    for i, layer in enumerate(layers):  # measured on other inputs
        layer.moving_mean.assign(np.full(6, 0.3 * i, "float32"))
        layer.moving_variance.assign(np.full(6, 0.5 + i, "float32"))
    keras_bn.recalibrate(model, data, batch_size=40, verbose=0)
    assert_fixed_point(model, layers, data, rtol=1e-4)  # the convergence test's bound


@pytest.mark.heavy
def test_fresh_statistics_of_a_real_architecture_do_not_overflow():
    """Keras's MobileNetV3Small (34 BNs) with freshly initialised statistics (mean 0,
    variance 1) on images in [0, 255]: inference-mode passes from those statistics
    overflowed float32 by the 10th block ("the model's activations overflow") although
    the model's outputs are finite in either mode; the first pass normalizing by batch
    statistics starts every BN near its fixed point, and the result is exact."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3),
                                                classes=10, classifier_activation=None)
    x = np.random.RandomState(1).rand(64, 64, 64, 3).astype("float32") * 255
    keras_bn.recalibrate(model, x, verbose=0)
    layers = [layer for _, layer in distinct_batch_norm_layers(model)]
    assert len(layers) == 34
    assert_fixed_point(model, layers, x, rtol=1e-3)
