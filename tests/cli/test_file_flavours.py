"""Keras 3 files on the command line, which tells them from tf-keras ones by their metadata
(what the CLI does alike for both flavours is tested once, in test_cli.py, on tf-keras
files)."""

import json
import os
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_bn import keras3 as kbn  # noqa: E402
from keras_bn.files import load_model, writer  # noqa: E402
from helpers import keras_bn_cli, trained_statistics  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras3")
    model = trained_statistics(keras.Sequential([
        keras.Input((8, 8, 3), name="img"), L.Conv2D(4, 3), kbn.BatchRenormalization(),
        L.ReLU(), L.Conv2D(4, 1, use_bias=False), L.BatchNormalization(),
        L.GlobalAveragePooling2D(), L.Dense(2)]))
    model.save(folder / "k3.keras")
    model.save(folder / "k3.h5")
    np.save(folder / "calibration.npy", np.random.RandomState(0).randn(40, 8, 8, 3)
            .astype("float32"))
    return folder, model


def test_writer_is_read_from_the_metadata(files):
    folder, _ = files
    assert writer(folder / "k3.keras", "keras")[0] == "keras3"
    assert writer(folder / "k3.h5", "h5")[0] == "keras3"
    loaded = load_model(folder / "k3.keras")
    assert isinstance(loaded, keras.Model)
    assert type(loaded.layers[1]) is kbn.BatchRenormalization


def test_cli_inspect_fold_export_a_keras3_file(files, tmp_path):
    folder, model = files
    result = keras_bn_cli("inspect", folder / "k3.h5")
    assert result.returncode == 0, result.stderr
    assert "keras_bn.keras3.BatchRenormalization" in result.stdout
    assert "keras.BatchNormalization" in result.stdout
    result = keras_bn_cli("fold", folder / "k3.keras", tmp_path / "f.keras")
    assert result.returncode == 0 and "2 folded, 0 kept" in result.stdout, result.stderr
    folded = keras.saving.load_model(tmp_path / "f.keras")
    x = np.random.RandomState(2).randn(3, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)
    result = keras_bn_cli("export", folder / "k3.keras", "--onnx", tmp_path / "m.onnx",
                          "--tflite", tmp_path / "m8.tflite", "--int8",
                          folder / "calibration.npy")
    assert result.returncode == 0, result.stderr
    assert "tflite-int8" in result.stdout and (tmp_path / "m.onnx").exists()


def _relabel(source, target, version):
    """A copy of the `.keras` zip whose metadata claims another Keras version."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "metadata.json":
                meta = json.loads(data)
                meta["keras_version"] = version
                data = json.dumps(meta).encode()
            new.writestr(item, data)


def test_flavour_mismatch_is_a_clear_error(files, tmp_path):
    folder, _ = files
    _relabel(folder / "k3.keras", tmp_path / "claims_tf_keras.keras", "2.21.0")
    result = keras_bn_cli("inspect", tmp_path / "claims_tf_keras.keras")
    assert result.returncode == 2, result.stderr
    assert "tf-keras could not load it" in result.stderr
    assert "Traceback" not in result.stderr
