"""keras_bn.export with real tf2onnx, onnxruntime, TensorFlow's converter and LiteRT."""

import os

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn import export
from keras_bn.folding import without_batch_norm
from keras_bn.layers.find import is_batch_norm
from helpers import randomize_biases, randomize_bn, trained_statistics

L = tf_keras.layers
BN_OPS = {"BatchNormalization", "FusedBatchNormV3"}


def _small(kind="functional"):
    layers = [L.Conv2D(8, 3, use_bias=False), keras_bn.BatchNormalization(), L.ReLU(),
              L.Conv2D(8, 3), keras_bn.BatchRenormalization(), L.ReLU(),
              L.GlobalAveragePooling2D(), L.Dense(6), L.BatchNormalization(), L.Dense(3)]
    if kind == "sequential":
        model = tf_keras.Sequential([tf_keras.Input((10, 10, 3))] + layers)
    else:
        inputs = tf_keras.Input((10, 10, 3))
        x = inputs
        for layer in layers:
            x = layer(x)
        model = tf_keras.Model(inputs, x)
    return randomize_bn(model)


def _all_kinds_models():
    """Every foldable layer kind at least once: 1-D, 2-D and 3-D convolutions, Dense."""
    one_d = tf_keras.Input((16, 4))
    x = keras_bn.BatchNormalization()(L.Conv1D(6, 3)(one_d))
    x = L.BatchNormalization()(L.DepthwiseConv1D(3, depth_multiplier=2)(x))
    x = keras_bn.BatchRenormalization()(L.SeparableConv1D(6, 3)(x))
    x = keras_bn.BatchNormalization()(L.Conv1DTranspose(4, 3)(x))
    x = L.Dense(5)(keras_bn.BatchNormalization()(x))  # BN -> Dense on 3-D input
    x = keras_bn.BatchNormalization()(L.Dense(4)(x))
    two_d = tf_keras.Input((12, 12, 4))
    y = keras_bn.BatchNormalization()(L.Conv2D(8, 3)(two_d))
    y = keras_bn.BatchNormalization()(L.DepthwiseConv2D(3, depth_multiplier=2)(y))
    y = L.BatchNormalization()(L.SeparableConv2D(8, 3, use_bias=False)(y))
    y = keras_bn.BatchNormalization()(L.Conv2DTranspose(6, 3, strides=2)(y))
    y = L.Conv2D(4, 3)(keras_bn.BatchNormalization()(L.ReLU()(y)))  # BN -> conv, valid
    three_d = tf_keras.Input((6, 6, 6, 2))
    z = keras_bn.BatchNormalization()(L.Conv3D(4, 2)(three_d))
    z = keras_bn.BatchRenormalization()(L.Conv3DTranspose(3, 2)(z))
    return [randomize_bn(tf_keras.Model(i, o)) for i, o in ((one_d, x), (two_d, y),
                                                             (three_d, z))]


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("fold", [True, False])
def test_onnx_parity(tmp_path, kind, fold):
    model = _small(kind)
    samples = np.random.RandomState(1).rand(7, 10, 10, 3).astype("float32")
    result = export.to_onnx(model, tmp_path / "m.onnx", fold=fold, samples=samples)
    assert os.path.getsize(result.path) == result.size_bytes > 0
    assert result.max_error <= result.tolerance
    assert (not BN_OPS & set(result.op_counts)) if fold else True
    assert result.latency_ms > 0 and result.fold_plan is (None if not fold else result.fold_plan)
    if fold:
        assert len(result.fold_plan.folded) == 3


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_tflite_parity(tmp_path, kind):
    model = _small(kind)
    result = export.to_tflite(model, tmp_path / "m.tflite")
    assert result.format == "tflite" and result.max_error <= result.tolerance
    assert os.path.getsize(tmp_path / "m.tflite") == result.size_bytes


@pytest.mark.parametrize("index", [0, 1, 2], ids=["1d", "2d", "3d"])
def test_every_foldable_kind_through_both_exporters(tmp_path, index):
    model = _all_kinds_models()[index]
    plan = keras_bn.fold_plan(model)
    assert not plan.kept, plan.table()
    onnx_result = export.to_onnx(model, tmp_path / "m.onnx")
    tflite_result = export.to_tflite(model, tmp_path / "m.tflite")
    for result in (onnx_result, tflite_result):
        assert result.max_error <= result.tolerance
    assert not BN_OPS & set(onnx_result.op_counts)


def _op_counts_match_twin(tmp_path, model, exporter, suffix):
    randomize_biases(model)
    folded_ops = exporter(model, tmp_path / f"folded.{suffix}").op_counts
    twin = without_batch_norm(model)
    assert not any(map(is_batch_norm, twin.layers))
    twin_ops = exporter(twin, tmp_path / f"twin.{suffix}", fold=False).op_counts
    assert folded_ops == twin_ops


@pytest.mark.parametrize("exporter,suffix", [(export.to_onnx, "onnx"),
                                             (export.to_tflite, "tflite")])
def test_folded_graph_has_exactly_the_ops_of_the_bn_free_twin(tmp_path, exporter, suffix):
    inputs = tf_keras.Input((9, 9, 3))
    x = L.ReLU()(keras_bn.BatchNormalization()(L.Conv2D(8, 3, use_bias=False)(inputs)))
    x = L.Flatten()(L.BatchNormalization()(L.Conv2D(4, 3)(x)))
    x = L.Dense(5)(keras_bn.BatchRenormalization()(L.Dense(7)(x)))
    _op_counts_match_twin(tmp_path, randomize_bn(tf_keras.Model(inputs, x)), exporter, suffix)


@pytest.mark.heavy
@pytest.mark.parametrize("exporter,suffix", [(export.to_onnx, "onnx"),
                                             (export.to_tflite, "tflite")])
def test_mobilenetv2_folded_ops_equal_the_twin(tmp_path, exporter, suffix):
    model = randomize_bn(tf_keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), weights=None, alpha=0.35, classifier_activation=None))
    _op_counts_match_twin(tmp_path, model, exporter, suffix)


def test_float16_and_int8_report_error_and_accuracy(tmp_path):
    rs = np.random.RandomState(0)
    model = _small()
    data = rs.rand(64, 10, 10, 3).astype("float32")
    labels = np.argmax(model.predict(data, verbose=0), axis=-1)
    half = export.to_tflite(model, tmp_path / "h.tflite", quantize="float16", samples=data,
                            labels=labels)
    assert half.format == "tflite-float16" and half.tolerance is None
    assert 0 < half.max_error < 0.05 and half.accuracy >= 0.9 and half.keras_accuracy == 1.0
    full = export.to_tflite(model, tmp_path / "q.tflite", samples=data, labels=labels,
                            quantize=export.QuantizationOptions("int8", calibration=data))
    assert full.format == "tflite-int8" and full.max_error > 0
    assert "QUANTIZE" in full.op_counts and full.accuracy is not None
    assert full.size_bytes < export.to_tflite(model, tmp_path / "f.tflite").size_bytes


def test_int8_without_calibration_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="mode 'int8' needs calibration data"):
        export.to_tflite(_small(), tmp_path / "q.tflite", quantize="int8")
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'"):
        export.to_tflite(_small(), tmp_path / "q.tflite", quantize="int4")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("exporter", [export.to_onnx, export.to_tflite])
def test_failed_verification_leaves_no_file_and_keeps_the_old_one(tmp_path, exporter):
    model = _small()
    name = "out.onnx" if exporter is export.to_onnx else "out.tflite"
    path = tmp_path / name
    path.write_bytes(b"previous file")
    samples = np.full((2, 10, 10, 3), np.nan, "float32")  # outputs that cannot be verified
    with pytest.raises(keras_bn.VerificationError, match="NaN/Inf"):
        exporter(model, path, samples=samples)
    assert path.read_bytes() == b"previous file"
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind
    with pytest.raises(keras_bn.InputError, match="must end in"):  # checked before work
        exporter(model, tmp_path / "out.bin")
    assert os.listdir(tmp_path) == [name]


def test_all_or_nothing_writes_both_files_or_neither(tmp_path):
    """A verified ONNX file is not written when the TFLite file of the same batch fails
    (an earlier file at its path stays as it was); a batch that passes writes both."""
    from keras_bn.files.output import all_or_nothing

    model = _small()
    onnx_path, tflite_path = tmp_path / "m.onnx", tmp_path / "m.tflite"
    onnx_path.write_bytes(b"previous file")
    nan = np.full((2, 10, 10, 3), np.nan, "float32")
    with pytest.raises(keras_bn.VerificationError, match="NaN/Inf"):
        with all_or_nothing():
            assert export.to_onnx(model, onnx_path).max_error is not None
            export.to_tflite(model, tflite_path, samples=nan)
    assert onnx_path.read_bytes() == b"previous file"
    assert os.listdir(tmp_path) == ["m.onnx"]
    with all_or_nothing():
        export.to_onnx(model, onnx_path)
        export.to_tflite(model, tflite_path)
        waiting = [p for p in os.listdir(tmp_path) if p.startswith(".keras_bn-")]
        assert len(waiting) == 2  # renamed only at the end
        assert sorted(os.listdir(tmp_path)) == sorted(waiting + ["m.onnx"])
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.tflite"]
    assert onnx_path.read_bytes() != b"previous file"


def test_input_model_is_not_changed(tmp_path):
    model = _small()
    before = [w.copy() for w in model.get_weights()]
    export.to_onnx(model, tmp_path / "m.onnx")
    export.to_tflite(model, tmp_path / "m.tflite")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, model.get_weights()))
    assert sum(map(is_batch_norm, model.layers)) == 3


def two_input_model(keras, layers):
    L = keras.layers
    image, meta = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="meta")
    x = L.Conv2D(6, 3)(image)
    x = L.GlobalAveragePooling2D()(L.ReLU()(layers.BatchNormalization()(x)))
    x = L.Concatenate()([x, L.BatchNormalization(renorm=True)(L.Dense(3)(meta))])
    return trained_statistics(keras.Model([image, meta], [L.Dense(2, name="logits")(x),
                                                          L.Dense(1, name="aux")(x)]))


@pytest.mark.parametrize("fmt, options", [
    ("onnx", {}), ("tflite", {}), ("tflite", {"quantize": "float16"}), ("tflite", "int8"),
    ("onnx", "int8")])
def test_multiple_inputs_and_outputs_in_every_format(flavour, tmp_path, fmt, options):
    model = two_input_model(*flavour)
    rs = np.random.RandomState(1)
    samples = [rs.randn(16, 8, 8, 3).astype("float32"), rs.randn(16, 4).astype("float32")]
    if options == "int8":
        options = {"quantize": export.QuantizationOptions(
            "int8", calibration={"image": samples[0], "meta": samples[1]})}
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
        assert result.max_error < 0.1 and result.format == f"{fmt}-int8"
    assert os.listdir(tmp_path) == [path.name]




def test_off_tensorflow_a_layer_class_in_main_is_a_clear_error(monkeypatch, tmp_path):
    """Off the TensorFlow backend the model is converted in a TensorFlow process, which
    must import its custom layer classes: one defined in __main__ cannot be."""
    import keras

    from keras_bn import flavour

    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    Twice.__module__ = "__main__"
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Twice()(keras.layers.Dense(3)(inputs)))
    monkeypatch.setattr(flavour.named("keras3"), "backend", lambda: "jax")
    with pytest.raises(keras_bn.InputError, match=r"'Twice'.*__main__.*KERAS_BACKEND"):
        export.to_onnx(model, tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def test_a_second_export_of_the_same_model_reuses_its_fold(tmp_path, monkeypatch):
    """to_onnx then to_tflite of one model (the CLI's two files) fold and verify it once;
    new weights or other samples fold again."""
    import keras_bn.export._prepare as prepare

    calls = []
    real = prepare._fold
    monkeypatch.setattr(prepare, "_fold", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _small()
    first = export.to_onnx(model, tmp_path / "m.onnx", latency_batch=None)
    second = export.to_tflite(model, tmp_path / "m.tflite", latency_batch=None)
    assert len(calls) == 1 and second.fold_plan is first.fold_plan
    samples = np.random.RandomState(3).rand(4, 10, 10, 3).astype("float32")
    export.to_tflite(model, tmp_path / "s.tflite", samples=samples, latency_batch=None)
    assert len(calls) == 2
    layer = model.get_layer(index=-1)
    layer.set_weights([w * 2 for w in layer.get_weights()])
    third = export.to_tflite(model, tmp_path / "m2.tflite", samples=samples,
                             latency_batch=None)
    assert len(calls) == 3 and third.max_error < third.tolerance  # the new weights' fold
