"""PreciseBN and BatchNormMonitor in a real `fit` on scikit-learn's digits, in either
flavour (`keras_bn.callbacks` for tf-keras, `keras_bn.keras3` for Keras 3, here on the
TensorFlow backend; JAX in `layers/backend_checks.py`)."""

import csv
import json
import os

import numpy as np
import pytest

import keras_bn


def _callbacks(layers):
    """The module holding the flavour's callbacks."""
    return keras_bn.callbacks if layers is keras_bn else layers


def _model(keras, layers, renorm=False):
    keras.utils.set_random_seed(0)
    L = keras.layers
    second = (L.BatchNormalization(name="brn", renorm=True,
                                   renorm_clipping={"rmax": 1.5, "dmax": 0.5})
              if renorm else layers.BatchRenormalization(name="brn"))
    model = keras.Sequential([
        keras.Input((64,)), L.Dense(32, use_bias=False),
        layers.BatchNormalization(momentum=0.99, name="bn"), L.ReLU(),
        L.Dense(16, use_bias=False), second, L.ReLU(), L.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_precise_bn_recalibrates_before_each_validation(digits, flavour):
    keras, layers = flavour
    x_train, y_train, x_test, y_test = digits
    model = _model(keras, layers)
    callback = _callbacks(layers).PreciseBN(x_train, every_n_epochs=2, batch_size=128)
    assert isinstance(callback, keras.callbacks.Callback)
    history = model.fit(x_train, y_train, batch_size=16, epochs=4, verbose=0,
                        validation_data=(x_test, y_test), callbacks=[callback])
    assert [epoch for epoch, _ in callback.history] == [1, 3]
    # The last validation already saw the recalibrated statistics: evaluating now (no
    # training since) gives the same loss. Recalibrating after validation would not.
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(x_test, y_test, verbose=0), rel=1e-5)
    again = keras_bn.recalibrate(model, x_train, batch_size=128, verbose=0)
    assert max(row["mean_shift"] for row in again) < 1e-4  # already precise


def test_precise_bn_without_validation_runs_at_epoch_end(digits, flavour):
    keras, layers = flavour
    x_train, y_train, _, _ = digits
    callback = _callbacks(layers).PreciseBN(x_train[:512], batch_size=128)
    _model(keras, layers).fit(x_train, y_train, batch_size=64, epochs=2, verbose=0,
                              callbacks=[callback])
    assert [epoch for epoch, _ in callback.history] == [0, 1]


def test_a_callback_of_the_other_flavour_is_a_clear_error(flavour):
    keras, layers = flavour
    other = keras_bn.keras3 if layers is keras_bn else keras_bn.callbacks
    model = _model(keras, layers)
    with pytest.raises(keras_bn.InputError, match=r"PreciseBN is a .* callback; model .*Use"):
        other.PreciseBN(np.zeros((4, 64), "float32")).set_model(model)


@pytest.mark.parametrize("renorm", [False, True], ids=["keras_bn_brn", "keras_renorm"])
def test_monitor_logs_every_layer_every_epoch(digits, tmp_path, flavour, renorm):
    keras, layers = flavour
    x_train, y_train, _, _ = digits
    model = _model(keras, layers, renorm)
    monitor = _callbacks(layers).BatchNormMonitor(
        x_train[:256], log_path=tmp_path / "logs" / "bn", log_dir=str(tmp_path / "tb"))
    model.fit(x_train, y_train, batch_size=32, epochs=2, verbose=0, callbacks=[monitor])
    with open(tmp_path / "logs" / "bn.csv") as f:
        table = list(csv.DictReader(f))
    lines = [json.loads(line) for line in open(tmp_path / "logs" / "bn.jsonl")]
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


def test_monitor_drift_is_zero_when_the_statistics_are_the_probes(digits, tmp_path, flavour):
    keras, layers = flavour
    x_train, y_train, _, _ = digits
    model = _model(keras, layers)
    model.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    probe = x_train[:300]
    keras_bn.recalibrate(model, probe, verbose=0)  # moving statistics := the probe's
    monitor = _callbacks(layers).BatchNormMonitor(probe, log_path=tmp_path / "bn")
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_end(0)
    for row in monitor.rows:
        assert row["mean_drift"] < 1e-3 and row["variance_ratio"] == pytest.approx(1, 1e-3)
