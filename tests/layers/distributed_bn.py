"""Runs keras_bn layers for a few training steps on one device, under MirroredStrategy
(2 logical CPUs) or as one worker of a MultiWorkerMirroredStrategy, and prints JSON.

Used by tests/layers/test_distributed.py as a subprocess: logical devices and TF_CONFIG must be
set before TensorFlow starts, which a test process cannot do twice.

Usage: python distributed_bn.py MODE LAYER SYNC  (MODE single|mirrored|worker,
LAYER bn|brn, SYNC sync|local)
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MODE, LAYER, SYNC = sys.argv[1], sys.argv[2], sys.argv[3] == "sync"
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras_bn  # noqa: E402

GLOBAL_BATCH, REPLICAS, STEPS = 8, 2, 3
SHAPE = (GLOBAL_BATCH, 4, 4, 3)


def batches():
    rs = np.random.RandomState(0)
    # Halves with different distributions, so local statistics differ from global ones.
    for step in range(STEPS):
        x = rs.randn(*SHAPE).astype("float32")
        x[GLOBAL_BATCH // 2:] = x[GLOBAL_BATCH // 2:] * 3.0 + 2.0 + step
        yield x


def make_layer():
    if LAYER == "bn":
        layer = keras_bn.BatchNormalization(momentum=0.5, synchronized=SYNC)
    else:
        layer = keras_bn.BatchRenormalization(momentum=0.5, renorm_momentum=0.5, rmax=1.5,
                                              dmax=0.5, warmup_steps=0, rmax_ramp_steps=0,
                                              dmax_ramp_steps=0, synchronized=SYNC)
    layer.build(SHAPE[:0] + (None,) + SHAPE[1:])
    layer.gamma.assign([0.5, 1.0, 2.0])
    layer.beta.assign([0.1, -0.2, 0.3])
    return layer


def step(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.cos(y))
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y, dx, dgamma, dbeta


def statistics(layer):
    return {"moving_mean": layer.moving_mean.numpy().tolist(),
            "moving_variance": layer.moving_variance.numpy().tolist()}


def single():
    layer = make_layer()
    records = []
    for x in batches():
        y, dx, dg, db = step(layer, tf.constant(x))
        records.append({"y": y.numpy().tolist(), "dx": dx.numpy().tolist(),
                        "dgamma": dg.numpy().tolist(), "dbeta": db.numpy().tolist()})
    return {"steps": records, **statistics(layer)}


def distributed(strategy, local_slice):
    with strategy.scope():
        layer = make_layer()
    run = tf.function(lambda x: strategy.run(lambda t: step(layer, t), args=(x,)))
    records = []
    for x in batches():
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[local_slice(ctx)]))
        y, dx, dg, db = run(per_replica)
        local = lambda v: np.concatenate([t.numpy() for t in
                                          strategy.experimental_local_results(v)])
        total = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None).numpy()
        records.append({"y": local(y).tolist(), "dx": local(dx).tolist(),
                        "dgamma": total(dg).tolist(), "dbeta": total(db).tolist()})
    return {"steps": records, **statistics(layer)}


def main():
    per_replica = GLOBAL_BATCH // REPLICAS
    if MODE == "single":
        result = single()
    elif MODE == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        result = distributed(strategy, lambda ctx: slice(
            ctx.replica_id_in_sync_group * per_replica,
            (ctx.replica_id_in_sync_group + 1) * per_replica))
    else:
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        assert strategy.num_replicas_in_sync == REPLICAS
        result = distributed(strategy, lambda ctx: slice(task * per_replica,
                                                         (task + 1) * per_replica))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
