"""Every `tf_keras.applications` constructor folded, and one model per family (plus the
hand-built ones) exported to ONNX and TFLite and run (`heavy`: runs in `make test`).
Keras 3's `keras.applications`: one model per family folded, three exported (the whole
Keras 3 zoo is `python -m benchmarks.zoo --flavour keras3`). keras-hub's vision models
(`benchmarks/hub_models.py`, built from their constructors): every one folded in float64
and four recalibrated against numpy, six exported (`make zoo`: every one).

Fold parity is 1e-5 of the output scale in float64 (see `benchmarks/zoo.py`: random
weights make deep float32 networks too ill-conditioned for a float32 check to test the
fold); measured errors are 1e-10 or smaller. Export parity is the exporters' check at
1e-3 of the output scale in float32 (`zoo.EXPORT_RTOL`: measured errors of 1e-7 to
1.3e-4 on these random-weight networks; a wrong conversion is off by O(1)).
"""

import numpy as np
import pytest

from benchmarks import zoo

pytestmark = pytest.mark.heavy


def _check_fold(row):
    """A `zoo.fold_case` row: exact in float64 (1e-5 of the output scale), no foldable BN
    left (counted from Keras's own nodes), the original untouched, every BN accounted."""
    assert row["fold_error"] <= 1e-5, row
    assert row["foldable_left"] == 0, row
    assert row["original_unchanged"], row
    assert row["folded"] + row["kept"] == row["bn"], row


def _check_export(row):
    """A `zoo.export_case` row: both files within EXPORT_RTOL (1e-3, see zoo.py) of the
    output scale, every folded BN gone from them (TFLite lowers kept ones to MUL/ADD, so
    only ONNX's BatchNormalization ops can be counted)."""
    assert row["onnx_error"] <= zoo.EXPORT_RTOL and row["tflite_error"] <= zoo.EXPORT_RTOL, row
    assert row["onnx_bn_ops"] <= row["kept"] and row["tflite_bn_ops"] == 0, row


def test_the_zoo_is_every_constructor():
    names = zoo.constructors()
    assert len(names) >= 70 and {"ResNet50", "ConvNeXtTiny", "RegNetY320"} <= set(names)
    families = {zoo.family(n) for n in names}
    assert {"EfficientNet", "EfficientNetV2", "RegNetX", "RegNetY", "ResNetV2", "ResNetRS",
            "MobileNetV3", "NASNet", "ConvNeXt", "DenseNet", "VGG"} <= families
    assert len(zoo.representatives()) == len(families)


@pytest.mark.parametrize("name", zoo.constructors() + list(zoo.HAND_BUILT))
def test_fold(name):
    row = zoo.fold_case(name)
    _check_fold(row)


@pytest.mark.parametrize("name", zoo.representatives() + list(zoo.HAND_BUILT))
def test_export_one_per_family(name, tmp_path):
    _check_export(zoo.export_case(name, str(tmp_path)))


def test_foldable_left_counts_an_unfolded_bn():
    """The independent counter sees a BN right after a linear conv (it can fail)."""
    model = zoo.build("residual (hand-built)")
    assert zoo.foldable_left(model) == sum(
        1 for layer in model.layers if type(layer).__name__ == "BatchNormalization"
        and type(layer.inbound_nodes[0].inbound_layers).__name__ == "Conv2D")
    assert zoo.foldable_left(model) > 0
    np.testing.assert_equal(zoo.family("EfficientNetV2B3"), "EfficientNetV2")


#: Keras 3 exports in `make test`: a plain CNN, a depthwise one, one with SiLU/SE blocks.
KERAS3_EXPORTS = ("ResNet50", "MobileNetV2", "EfficientNetB0")


@pytest.mark.parametrize("name", zoo.representatives("keras3"))
def test_fold_keras3(name):
    row = zoo.fold_case(name, flavour="keras3")
    _check_fold(row)


@pytest.mark.parametrize("name", KERAS3_EXPORTS)
def test_export_keras3(name, tmp_path):
    row = zoo.export_case(name, str(tmp_path), flavour="keras3")
    _check_export(row)


def test_foldable_left_counts_keras3_bns():
    model = zoo.build("ResNet50", flavour="keras3")
    assert zoo.foldable_left(model) == 53  # every conv -> BN pair of an unfolded ResNet50


@pytest.mark.parametrize("name", zoo.constructors("keras_hub"))
def test_fold_keras_hub(name):
    row = zoo.fold_case(name, flavour="keras_hub")
    _check_fold(row)
    assert row["bn"] > 0, row


@pytest.mark.parametrize("name", ["ResNetV1", "MobileNetV3", "HGNetV2", "DeepLabV3"])
def test_recalibrate_keras_hub(name):
    """Exact against numpy on every BN, those inside keras-hub's custom blocks included
    (float32 sums: 1e-5 of the scale)."""
    row = zoo.recalibrate_case(name)
    assert row["bn"] > 0 and row["recalibrate_error"] <= 1e-5, row


#: keras-hub exports in `make test` (the three vision tasks, a backbone with dict outputs, an
#: SE/SiLU backbone, the two whose blocks call compiled functions); every model's is in
#: `make zoo`.
HUB_EXPORTS = ("ResNetImageClassifier", "DeepLabV3ImageSegmenter", "RetinaNetObjectDetector",
               "RetinaNet", "EfficientNet", "MobileNetV3", "HGNetV2")


@pytest.mark.parametrize("name", HUB_EXPORTS)
def test_export_keras_hub(name, tmp_path):
    row = zoo.export_case(name, str(tmp_path), flavour="keras_hub")
    _check_export(row)
