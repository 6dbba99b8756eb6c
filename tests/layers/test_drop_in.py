"""keras_bn.BatchNormalization in place of tf-keras's, side by side: weights, integer
inputs, TF1 graph mode, and the guards (fully masked batches, unclipped BRN).

Tolerances: 1e-6 where both layers compute the same float32 expression (weights moved
between them, identical updates); outputs of different kernels 1e-5.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn

L = tf_keras.layers


def _model(bn):
    inputs = tf_keras.Input((6, 6, 3))
    x = bn(name="bn")(L.Conv2D(4, 3, name="conv")(inputs))
    return tf_keras.Model(inputs, L.Dense(2, name="head")(L.Flatten(name="flatten")(x)))


@pytest.fixture(scope="module")
def trained_tf_keras_model():
    """A tf-keras model with non-trivial BN weights and statistics."""
    model = _model(L.BatchNormalization)
    rs = np.random.RandomState(0)
    model.get_layer("bn").set_weights([rs.rand(4) + 0.5, rs.randn(4), rs.randn(4),
                                       rs.rand(4) + 0.5])
    return model


@pytest.mark.parametrize("how", ["weights.h5", "legacy.h5", "checkpoint", "get_weights",
                                 "layer"])
def test_tf_keras_weights_load_into_keras_bn(trained_tf_keras_model, tmp_path, how):
    source, target = trained_tf_keras_model, _model(keras_bn.BatchNormalization)
    if how == "get_weights":
        target.set_weights(source.get_weights())
    elif how == "layer":
        for layer in source.layers[1:]:
            target.get_layer(layer.name).set_weights(layer.get_weights())
    else:
        path = str(tmp_path / {"weights.h5": "w.weights.h5", "legacy.h5": "w.h5",
                               "checkpoint": "ckpt"}[how])
        source.save_weights(path)
        target.load_weights(path)
    x = np.random.RandomState(1).rand(3, 6, 6, 3).astype("float32")
    np.testing.assert_allclose(target(x), source(x), rtol=1e-5, atol=1e-6)
    assert len(target.get_layer("bn").weights) == 4  # the same list as tf-keras's


def test_keras_bn_weights_load_into_tf_keras(tmp_path):
    source, target = _model(keras_bn.BatchNormalization), _model(L.BatchNormalization)
    source.get_layer("bn").moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    source.save_weights(str(tmp_path / "w.h5"))
    target.load_weights(str(tmp_path / "w.h5"))
    np.testing.assert_array_equal(target.get_layer("bn").moving_mean.numpy(), [1, 2, 3, 4])


def test_the_counter_is_still_saved_with_the_model(tmp_path):
    model = _model(keras_bn.BatchNormalization)
    model.get_layer("bn").skipped_updates.assign(3)
    model.save(tmp_path / "m.keras")
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.get_layer("bn").skipped_updates.numpy()) == 3


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("training", [True, False])
def test_integer_inputs_behave_as_in_tf_keras(policy, training):
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        ours, theirs = keras_bn.BatchNormalization(), L.BatchNormalization()
        x = tf.constant(np.random.RandomState(0).randint(0, 9, (8, 5)), tf.int32)
        y_ours, y_theirs = ours(x, training=training), theirs(x, training=training)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert y_ours.dtype == y_theirs.dtype == tf.as_dtype(
        "float16" if policy == "mixed_float16" else "float32")
    np.testing.assert_allclose(np.float32(y_ours), np.float32(y_theirs),
                               rtol=1e-2 if policy == "mixed_float16" else 1e-5, atol=1e-3)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(),
                               rtol=1e-6)


GRAPH_MODE = """
import json, sys, numpy as np, tensorflow as tf
if sys.argv[1] == "v1":
    tf.compat.v1.disable_eager_execution()
import tf_keras, keras_bn
rs = np.random.RandomState(0)
x = (rs.randn(64, 2, 2, 3) + 5.0).astype("float32")
y = rs.randn(64, 1).astype("float32")
result = {}
for name, cls in (("tf_keras", tf_keras.layers.BatchNormalization),
                  ("keras_bn", keras_bn.BatchNormalization)):
    tf_keras.utils.set_random_seed(0)
    bn = cls(momentum=0.5)
    if sys.argv[1] == "v1":
        model = tf_keras.Sequential([tf_keras.Input((2, 2, 3)), bn, tf_keras.layers.Flatten(),
                                     tf_keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        get = tf_keras.backend.get_value
        result[name] = [len(bn.updates) > 0, get(bn.moving_mean).tolist(),
                        get(bn.moving_variance).tolist()]
    else:
        bn.build((None, 2, 2, 3))
        step = tf.compat.v1.wrap_function(lambda t: bn(t, training=True),
                                          [tf.TensorSpec((None, 2, 2, 3), tf.float32)])
        for i in range(3):
            step(tf.constant(x[16 * i:16 * i + 16]))
        result[name] = [True, bn.moving_mean.numpy().tolist(),
                        bn.moving_variance.numpy().tolist()]
print(json.dumps(result))
"""


@pytest.mark.parametrize("mode", ["v1", "wrap_function"])
def test_tf1_graph_mode_updates_as_tf_keras_does(mode):
    """TF1 graph mode (v1 `fit` runs `layer.updates`) and `tf.compat.v1.wrap_function`,
    each in a fresh process (graph mode is process-wide). 4-D inputs: tf-keras's fused
    path, whose moving variance is Bessel-corrected like ours, so the numbers match."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", GRAPH_MODE, mode], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (has_updates, mean, variance), (ours_updates, our_mean, our_variance) = (
        result["tf_keras"], result["keras_bn"])
    assert ours_updates == has_updates
    np.testing.assert_allclose(our_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(our_variance, variance, rtol=1e-5)
    if mode == "v1":  # the statistics moved toward the data's mean of 5
        assert min(our_mean) > 4.0, our_mean


@pytest.mark.parametrize("limit", ["rmax", "dmax", "both"])
def test_infinite_limits_through_warmup_and_ramp(limit):
    """`inf` means "no clipping" (tf-keras's default); the schedule must not compute
    `inf * 0` during warm-up."""
    inf = float("inf")
    kwargs = {"rmax": inf if limit in ("rmax", "both") else 3.0,
              "dmax": inf if limit in ("dmax", "both") else 5.0}
    layer = keras_bn.BatchRenormalization(momentum=0.5, warmup_steps=2, rmax_ramp_steps=3,
                                          dmax_ramp_steps=3, **kwargs)
    rs = np.random.RandomState(0)
    seen = []
    for step in range(7):  # 2 warm-up steps, then the ramps, then past them
        x = tf.constant(rs.randn(16, 3) * (step + 1) + step, tf.float32)
        y = layer(x, training=True)
        assert np.all(np.isfinite(y.numpy())), (step, y)
        seen.append([float(v) for v in layer.clip_limits()])
    assert seen[0] == [1.0, 0.0]  # warm-up: plain BN
    assert all(np.isfinite(layer.moving_variance.numpy()))
    final = seen[-1]
    assert final[0] == kwargs["rmax"] and final[1] == kwargs["dmax"]
    inputs = tf.constant(rs.randn(8, 3) * 50.0, tf.float32)
    assert np.all(np.isfinite(layer(inputs, training=True).numpy()))
