"""PreciseBN and BatchNormMonitor in a real `fit` on scikit-learn's digits."""

import csv
import json
import os

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.callbacks import BatchNormMonitor, PreciseBN

L = tf_keras.layers


def _model(second=keras_bn.BatchRenormalization):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((64,)), L.Dense(32, use_bias=False),
        keras_bn.BatchNormalization(momentum=0.99, name="bn"), L.ReLU(),
        L.Dense(16, use_bias=False), second(name="brn"), L.ReLU(), L.Dense(10)])
    model.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_precise_bn_recalibrates_before_each_validation(digits):
    x_train, y_train, x_test, y_test = digits
    model = _model()
    callback = PreciseBN(x_train, every_n_epochs=2, batch_size=128)
    history = model.fit(x_train, y_train, batch_size=16, epochs=4, verbose=0,
                        validation_data=(x_test, y_test), callbacks=[callback])
    assert [epoch for epoch, _ in callback.history] == [1, 3]
    # The last validation already saw the recalibrated statistics: evaluating now (no
    # training since) gives the same loss. Recalibrating after validation would not.
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(x_test, y_test, verbose=0), rel=1e-5)
    again = keras_bn.recalibrate(model, x_train, batch_size=128, verbose=0)
    assert max(row["mean_shift"] for row in again) < 1e-4  # already precise


def test_precise_bn_without_validation_runs_at_epoch_end(digits):
    x_train, y_train, _, _ = digits
    callback = PreciseBN(x_train[:512], batch_size=128)
    _model().fit(x_train, y_train, batch_size=64, epochs=2, verbose=0, callbacks=[callback])
    assert [epoch for epoch, _ in callback.history] == [0, 1]


@pytest.mark.parametrize("second", [keras_bn.BatchRenormalization,
                                    lambda name: L.BatchNormalization(
                                        name=name, renorm=True,
                                        renorm_clipping={"rmax": 1.5, "dmax": 0.5})])
def test_monitor_logs_every_layer_every_epoch(digits, tmp_path, second):
    x_train, y_train, _, _ = digits
    model = _model(second)
    monitor = BatchNormMonitor(x_train[:256], log_path=tmp_path / "logs" / "bn",
                               log_dir=str(tmp_path / "tb"))
    model.fit(x_train, y_train, batch_size=32, epochs=2, verbose=0, callbacks=[monitor])
    with open(tmp_path / "logs" / "bn.csv") as f:
        table = list(csv.DictReader(f))
    lines = [json.loads(l) for l in open(tmp_path / "logs" / "bn.jsonl")]
    assert [(r["epoch"], r["layer"]) for r in lines] == [(1, "bn"), (1, "brn"),
                                                          (2, "bn"), (2, "brn")]
    assert len(table) == 4 and table[0]["layer"] == "bn"
    for row in lines:
        assert row["mean_drift"] >= 0 and row["variance_ratio"] > 0
        assert 0 <= row["gamma_near_zero"] <= 1
    bn, brn = lines[-2], lines[-1]
    assert bn["skipped_updates"] == 0 and bn["r_clipped"] is None
    assert 0 <= brn["r_clipped"] <= 1 and 0 <= brn["d_clipped"] <= 1
    assert any(name.startswith("events.out.tfevents")
               for name in os.listdir(tmp_path / "tb"))


def test_monitor_drift_is_zero_when_the_statistics_are_the_probes(digits, tmp_path):
    x_train, y_train, _, _ = digits
    model = _model()
    model.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    probe = x_train[:300]
    keras_bn.recalibrate(model, probe, verbose=0)  # moving statistics := the probe's
    monitor = BatchNormMonitor(probe, log_path=tmp_path / "bn")
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_end(0)
    for row in monitor.rows:
        assert row["mean_drift"] < 1e-3 and row["variance_ratio"] == pytest.approx(1, 1e-3)
