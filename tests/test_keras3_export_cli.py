"""Keras 3 models exported (ONNX, TFLite float32/float16/int8, verified by running the
files) and handled by the command line, which tells Keras 3 files from tf-keras ones by
their metadata."""

import json
import os
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import keras_bn  # noqa: E402
from keras_bn import export, keras3 as kbn  # noqa: E402
from keras_bn.files import load_model, writer  # noqa: E402
from test_cli import keras_bn_cli  # noqa: E402
from test_keras3_fold import _statistics  # noqa: E402

L = keras.layers


def two_input_model():
    image, meta = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="meta")
    x = L.GlobalAveragePooling2D()(L.ReLU()(kbn.BatchNormalization()(L.Conv2D(6, 3)(image))))
    x = L.Concatenate()([x, L.BatchNormalization(renorm=True)(L.Dense(3)(meta))])
    return _statistics(keras.Model([image, meta], [L.Dense(2, name="logits")(x),
                                                   L.Dense(1, name="aux")(x)]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras3")
    model = _statistics(keras.Sequential([
        keras.Input((8, 8, 3), name="img"), L.Conv2D(4, 3), kbn.BatchRenormalization(),
        L.ReLU(), L.Conv2D(4, 1, use_bias=False), L.BatchNormalization(),
        L.GlobalAveragePooling2D(), L.Dense(2)]))
    model.save(folder / "k3.keras")
    model.save(folder / "k3.h5")
    lam = keras.Sequential([keras.Input((3,)), L.Lambda(lambda x: x * 2),
                            L.BatchNormalization()])
    lam.save(folder / "lambda.keras")
    np.save(folder / "calibration.npy", np.random.RandomState(0).randn(40, 8, 8, 3)
            .astype("float32"))
    return folder, model


@pytest.mark.parametrize("fmt, options", [
    ("onnx", {}), ("tflite", {}), ("tflite", {"quantize": "float16"}), ("tflite", "int8")])
def test_export_two_input_keras3_model(tmp_path, fmt, options):
    model = two_input_model()
    rs = np.random.RandomState(1)
    samples = [rs.randn(16, 8, 8, 3).astype("float32"), rs.randn(16, 4).astype("float32")]
    if options == "int8":
        options = {"quantize": "int8", "representative_data": {"image": samples[0],
                                                               "meta": samples[1]}}
    function = export.to_onnx if fmt == "onnx" else export.to_tflite
    path = tmp_path / f"m.{fmt}"
    result = function(model, path, samples=samples, **options)
    assert path.exists() and result.size_bytes == os.path.getsize(path)
    assert len(result.fold_plan.folded) == 2 and not result.fold_plan.kept
    assert not any("batchnorm" in op.lower().replace("_", "") for op in result.op_counts)
    if options.get("quantize") is None:  # checked against the tolerance (1e-4 of scale)
        assert result.max_error <= result.tolerance
    elif options["quantize"] == "float16":
        assert result.max_error < 1e-2
    else:
        assert result.max_error < 0.1 and result.format == "tflite-int8"
    assert os.listdir(tmp_path) == [path.name]


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


def test_cli_refuses_keras3_lambda_without_unsafe(files, tmp_path):
    folder, _ = files
    result = keras_bn_cli("fold", folder / "lambda.keras", tmp_path / "out.keras")
    assert result.returncode == 2 and "Lambda" in result.stderr
    assert not (tmp_path / "out.keras").exists()
    result = keras_bn_cli("fold", folder / "lambda.keras", tmp_path / "out.keras", "--unsafe")
    assert result.returncode == 0, result.stderr


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


def test_export_on_a_non_tensorflow_backend_is_refused(monkeypatch):
    from keras_bn import flavour

    monkeypatch.setattr(flavour.named("keras3"), "backend", lambda: "jax")
    with pytest.raises(keras_bn.InputError, match="needs the TensorFlow backend"):
        export.to_onnx(two_input_model(), "never.onnx")
    assert not os.path.exists("never.onnx")
