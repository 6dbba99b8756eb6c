"""One `tf_keras.applications` model per family (plus the hand-built ones) folded, eight
of them (one per way their BNs sit) exported to ONNX and TFLite and run (`heavy`: runs
in `make test`; `make zoo` folds every constructor and exports one per family).
Keras 3's `keras.applications`: one model per family folded, three exported (the whole
Keras 3 zoo is `python -m benchmarks.zoo --flavour keras3`). keras-hub's vision models
(`benchmarks/hub_models.py`, built from their constructors): every one folded in float64
and four recalibrated against numpy, six exported (`make zoo`: every one).

Fold parity is 1e-5 of the output scale in float64 (see `benchmarks/zoo.py`: random
weights make deep float32 networks too ill-conditioned for a float32 check to test the
fold); measured errors are 1e-10 or smaller. Export parity is the exporters' default
check in float32: 1e-4 of the output scale plus 8x the model's own float32 noise on the
same inputs (a wrong conversion is off by O(1)). The deepest models are also folded in
float32 with the default check, which the fixed 1e-5 of earlier versions refused.
"""

import numpy as np
import pytest

from benchmarks import zoo

pytestmark = pytest.mark.heavy


def _check_fold(row):
    """A `zoo.fold_case` row: exact in float64 (1e-5 of the output scale), no foldable BN
    left (counted from Keras's own nodes), the original untouched, every BN accounted."""
    assert row.get("verified", True), row  # fold's own check passed
    assert row["fold_error"] <= 1e-5, row
    assert row["foldable_left"] == 0, row
    assert row["original_unchanged"], row
    assert row["folded"] + row["kept"] == row["bn"], row


def _check_export(row, flavour="tf_keras"):
    """A `zoo.export_case` row: the fold and both files passed the exporters' default
    checks (they raise otherwise), and the ONNX file holds a BatchNormalization op for
    each BN kept and none for a folded one. tf-keras writes an inference BN as
    FusedBatchNormV3, which tf2onnx writes as one BatchNormalization; Keras 3 writes it
    as a multiply and an add, so there the file holds none at all. (TFLite has no BN op:
    its converter lowers every BN to MUL/ADD, so its files cannot be counted.)"""
    assert row["onnx_error"] < 1e-2 and row["tflite_error"] < 1e-2, row  # not O(1)
    kept_as_ops = row["kept"] if flavour == "tf_keras" else 0
    assert row["onnx_bn_ops"] == kept_as_ops, row


def test_the_zoo_is_every_constructor():
    names = zoo.constructors()
    assert len(names) >= 70 and {"ResNet50", "ConvNeXtTiny", "RegNetY320"} <= set(names)
    families = {zoo.family(n) for n in names}
    assert {"EfficientNet", "EfficientNetV2", "RegNetX", "RegNetY", "ResNetV2", "ResNetRS",
            "MobileNetV3", "NASNet", "ConvNeXt", "DenseNet", "VGG"} <= families
    assert len(zoo.representatives()) == len(families)


@pytest.mark.parametrize("name", zoo.representatives() + list(zoo.HAND_BUILT))
def test_fold(name):
    row = zoo.fold_case(name)
    _check_fold(row)


#: tf-keras exports in `make test`: one model per way its BNs sit (conv -> BN; BN ->
#: ReLU -> conv, pre-activation and dense blocks, where BNs fold "before" or stay;
#: depthwise with ReLU6; separable; grouped; SiLU and squeeze-excite; hard-swish), and the
#: hand-built models. The other families' representatives (Inception, NASNet, ResNetRS,
#: ConvNeXt, VGG, EfficientNetV2, RegNetY, MobileNet: 412 of the 570 s these exports
#: took, summed over two workers) are exported by `make zoo` (`python -m benchmarks.zoo`).
TF_KERAS_EXPORTS = ("ResNet50", "ResNet50V2", "DenseNet121", "MobileNetV2", "Xception",
                    "RegNetX002", "EfficientNetB0", "MobileNetV3Small")


def test_the_exports_in_make_test_are_family_representatives():
    assert set(TF_KERAS_EXPORTS) <= set(zoo.representatives())


@pytest.mark.parametrize("name", TF_KERAS_EXPORTS + tuple(zoo.HAND_BUILT))
def test_export_one_per_family(name, tmp_path):
    _check_export(zoo.export_case(name, str(tmp_path)))


#: Deep float32 models whose own rounding noise exceeds a fixed 1e-5 of their output
#: scale, and the seed of their random weights. Unseeded, the draw followed whatever the
#: test's worker had drawn before, and EfficientNetV2B0's noise ranged over 1.0e-5 to
#: 2.0e-5 from run to run (seeds 0 to 3: 2.9e-6 to 3.8e-5), so the premise below held in
#: some runs only. Seed 2, measured (error, noise): ResNet50 7.5e-5, 6.0e-5;
#: EfficientNetV2B0 5.6e-5, 3.8e-5.
DEEP_FLOAT32 = ("ResNet50", "EfficientNetV2B0")
DEEP_FLOAT32_SEED = 2


@pytest.mark.parametrize("name", DEEP_FLOAT32)
def test_deep_float32_fold_passes_the_default_check(name):
    """A correct fold of a deep float32 network passes `keras_bn.fold`'s default check:
    its error exceeds the old fixed tolerance (1e-5 of the scale + 1e-6, which refused
    it) but is within the noise term alone, NOISE_MULTIPLE (8) times the model's own
    float32 noise (measured on the zoo: 0.14 to 4.8 times it)."""
    row = zoo.float32_case(name, seed=DEEP_FLOAT32_SEED)
    assert row["f32_verified"], row
    # The old fixed check, 1e-5 + 1e-6 / scale (these scales are above 1), refuses this
    # fold, and the model's own float32 rounding is of the same size.
    assert min(row["noise_f32"], row["fold_error_f32"]) > 1e-5 + 1e-6, row
    assert row["fold_error_f32"] <= 8 * row["noise_f32"], row


def test_foldable_left_counts_an_unfolded_bn():
    """The independent counter sees a BN right after a linear conv (it can fail)."""
    model = zoo.build("residual (hand-built)")
    assert zoo.foldable_left(model) == sum(
        1 for layer in model.layers if type(layer).__name__ == "BatchNormalization"
        and type(layer.inbound_nodes[0].inbound_layers).__name__ == "Conv2D")
    assert zoo.foldable_left(model) > 0
    np.testing.assert_equal(zoo.family("EfficientNetV2B3"), "EfficientNetV2")


#: Keras 3 exports in `make test`: a depthwise CNN with conv -> BN -> Add residuals (the
#: plain conv -> BN path too), one with SiLU/SE blocks. ResNet50 (30 s) is in `make zoo`
#: with the rest; tf-keras's ResNet50 is exported here.
KERAS3_EXPORTS = ("MobileNetV2", "EfficientNetB0")


@pytest.mark.parametrize("name", zoo.representatives("keras3"))
def test_fold_keras3(name):
    row = zoo.fold_case(name, flavour="keras3")
    _check_fold(row)


@pytest.mark.parametrize("name", KERAS3_EXPORTS)
def test_export_keras3(name, tmp_path):
    row = zoo.export_case(name, str(tmp_path), flavour="keras3")
    _check_export(row, "keras3")


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


@pytest.mark.parametrize("name", zoo.INTEGER_MODELS)
def test_int8_exports_of_keras_hub_run_as_users_run_them(name, tmp_path):
    """int8 files of the keras-hub models whose files LiteRT once refused or aborted on
    (one weight draw here, every draw of `zoo.INTEGER_SEEDS` in `make zoo`), run with
    XNNPACK and onnxruntime's CPU provider. SQNR floor: random weights on uniform noise
    measured 21 to 31 dB over seeds 0..4 in both formats; a file answering zeros or
    noise scores 0 dB or below."""
    row = zoo.integer_case(name, str(tmp_path), seed=3)
    assert row["tflite_sqnr_db"] > 10 and row["onnx_sqnr_db"] > 10, row


@pytest.mark.parametrize("name", HUB_EXPORTS)
def test_export_keras_hub(name, tmp_path):
    row = zoo.export_case(name, str(tmp_path), flavour="keras_hub")
    _check_export(row, "keras_hub")
