"""What fold and the exporters verify on (the user's samples, or random inputs in the
range the model says it takes) and what they hold the result to (a floor plus a small
multiple of the model's own float32 rounding noise, measured against float64)."""

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn import export
from keras_bn.verification import (NOISE_MULTIPLE, VerificationError, check_outputs,
                                   default_rtol, predict, random_inputs,
                                   verification_batches)
from helpers import keras_bn_cli, trained_statistics


def _image_model(keras, bn, first):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3)(first(inputs))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(bn.BatchNormalization()(x)))
    return trained_statistics(keras.Model(inputs, keras.layers.Dense(3)(x)))


@pytest.mark.parametrize("scale,offset", [(1 / 255, 0.0), (1 / 127.5, -1.0)])
def test_random_inputs_fill_the_range_a_rescaling_layer_maps(flavour, scale, offset):
    """Rescaling(1/255) and Rescaling(1/127.5, offset=-1) both take images in [0, 255]:
    the verification batch fills that range (not N(0, 1), 255 times too narrow)."""
    keras, bn = flavour
    model = _image_model(keras, bn, keras.layers.Rescaling(scale, offset=offset))
    x = random_inputs(model, batch=4)[0]
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 200 and x.std() > 50
    _, plan = keras_bn.fold(model, return_plan=True)
    assert plan.verdict.inputs.startswith("random") and "input range" in plan.verdict.inputs


def test_random_inputs_follow_a_normalization_layer(flavour):
    keras, bn = flavour
    mean, variance = np.array([10.0, -20.0, 300.0]), np.array([4.0, 9.0, 2500.0])
    model = _image_model(keras, bn, keras.layers.Normalization(mean=mean, variance=variance))
    x = random_inputs(model, batch=64)[0].reshape(-1, 3)
    assert np.all(np.abs(x.mean(0) - mean) < 0.2 * np.sqrt(variance)), x.mean(0)
    np.testing.assert_allclose(x.std(0), np.sqrt(variance), rtol=0.1)


def test_fold_verifies_on_the_users_samples(flavour):
    keras, bn = flavour
    model = _image_model(keras, bn, keras.layers.Rescaling(1 / 255))
    samples = np.random.RandomState(3).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    folded, plan = keras_bn.fold(model, samples=samples, return_plan=True)
    assert plan.verdict.inputs == "samples (5 rows)"
    want = max(float(np.max(np.abs(a - b))) for a, b in
               zip(predict(model, [samples]), predict(folded, [samples])))
    assert plan.max_error == want and plan.max_error <= plan.tolerance
    assert "verified on samples (5 rows)" in plan.table()
    with pytest.raises(keras_bn.InputError, match=r"samples for input '.*' has shape "
                       r"\(5, 8, 8\); the input takes \(rows, 8, 8, 3\)"):
        keras_bn.fold(model, samples=samples[..., 0])


def test_tolerance_is_the_floor_plus_the_models_own_noise(flavour):
    """Within the floor no noise is measured; beyond it (outputs off by twice the
    model's own noise, against a floor far below float32's resolution) the verdict
    records the noise (the model in float32 against its float64 twin on the same inputs)
    and passes within the floor plus NOISE_MULTIPLE times it; 10x the floor plus
    NOISE_MULTIPLE noise fails."""
    from keras_bn.verification import float32_noise

    keras, bn = flavour
    model = _image_model(keras, bn, keras.layers.Rescaling(1 / 255))
    _, plan = keras_bn.fold(model, return_plan=True)
    assert plan.noise is None and "not measured" in plan.verdict.noise_note
    assert plan.tolerance == pytest.approx(1e-5 * plan.verdict.scale + 1e-6)
    batches, _ = verification_batches(model, None)
    noise, _ = float32_noise(model, batches)
    scale = max(float(np.max(np.abs(o))) for o in predict(model, batches[0]))
    eps = 2.0 ** -23
    assert eps * scale / 100 < noise < 100 * eps * scale  # float32's, not zero
    off = lambda d: lambda x: [o + d for o in predict(model, x)]
    v = check_outputs(model, off(2 * noise), batches, 1e-12, 0.0, "shifted")
    assert v.noise == noise and v.max_error == pytest.approx(2 * noise)
    assert v.tolerance == pytest.approx(1e-12 * scale + NOISE_MULTIPLE * noise)
    with pytest.raises(VerificationError, match="float32 noise"):
        check_outputs(model, off(10 * NOISE_MULTIPLE * noise), batches, 1e-12, 0.0, "far")


def test_the_float64_twin_is_built_once_per_model_and_weights():
    """A second check of the same model reuses its float64 twin; a change of its weights
    rebuilds it, and the noise follows the new weights."""
    from keras_bn import verification as verify

    model = _image_model(tf_keras, keras_bn, tf_keras.layers.Rescaling(1 / 255))
    batches, _ = verification_batches(model, None)
    first, _ = verify.float32_noise(model, batches)
    twin = verify._LAST_TWIN.entry[2]
    assert verify.float32_noise(model, batches)[0] == first
    assert verify._LAST_TWIN.entry[2] is twin
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 3, bias])
    assert verify.float32_noise(model, batches)[0] != first
    assert verify._LAST_TWIN.entry[2] is not twin


def test_a_planted_error_of_1e4_of_the_scale_is_caught_on_a_shallow_model(flavour):
    """The noise a shallow float32 net has (~1e-7 of its scale) leaves the tolerance near
    the 1e-5 floor, so an error of 1e-4 of the output scale (one bias off) still fails,
    and the message gives the error, the floor and the noise."""
    keras, bn = flavour
    model = _image_model(keras, bn, keras.layers.Rescaling(1 / 255))
    folded = keras_bn.fold(model)
    batches, _ = verification_batches(model, None)
    scale = max(float(np.max(np.abs(o))) for o in predict(model, batches[0]))
    head = folded.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + np.float32(1e-4 * scale)])
    with pytest.raises(VerificationError, match=r"differ by up to .*rtol 1e-05 x output "
                       r"scale .* \+ 8 x the model's own float32 noise"):
        check_outputs(model, lambda x: predict(folded, x), batches, default_rtol(model),
                      1e-6, "planted")
    head.set_weights([kernel, bias])
    verdict = check_outputs(model, lambda x: predict(folded, x), batches,
                            default_rtol(model), 1e-6, "honest")
    assert verdict.max_error <= verdict.tolerance < 1e-4 * scale / 2


def _chaotic_float64_model(depth=100, gain=3.0, width=32):
    """Dense + BN + tanh, `depth` times, computing in float64, with BN's gamma `gain`:
    a chaotic net (nearby inputs diverge by ~e^0.13 a layer), so float64 rounding alone
    moves its outputs by ~2e-4 of their scale, beyond the 1e-5 floor (as the zoo's
    random-weight EfficientNetB7 in float64 did on some draws)."""
    policy = tf_keras.mixed_precision.global_policy()  # a test may have set "float32"
    tf_keras.mixed_precision.set_global_policy("float64")
    tf_keras.backend.set_floatx("float64")  # the Input too
    try:
        tf_keras.utils.set_random_seed(0)
        inputs = tf_keras.Input((width,))
        x = inputs
        for _ in range(depth):
            x = tf_keras.layers.Dense(width, use_bias=False)(x)
            x = tf_keras.layers.BatchNormalization(
                gamma_initializer=tf_keras.initializers.Constant(gain))(x)
            x = tf_keras.layers.Activation("tanh")(x)
        return tf_keras.Model(inputs, tf_keras.layers.Dense(4)(x))
    finally:
        tf_keras.backend.set_floatx("float32")
        tf_keras.mixed_precision.set_global_policy(policy)


def test_a_float64_model_is_judged_against_its_own_rounding_noise():
    """A model computing in float64 has no float32 noise; its rounding noise is measured
    as the change of its outputs under a one-ulp change of its inputs. A correct fold of
    a chaotic float64 net (error ~2x that noise, beyond the floor) passes by default,
    and the plan says which noise it was; 10 x NOISE_MULTIPLE that noise still fails."""
    model = _chaotic_float64_model()
    folded, plan = keras_bn.fold(model, return_plan=True)
    assert plan.max_error > 1e-5 * plan.verdict.scale  # beyond the floor: noise decided
    assert plan.verdict.noise_note.startswith("computes in float64")
    assert plan.max_error / 4 < plan.noise < plan.max_error  # tracks the fold's error
    assert "float64 rounding noise" in plan.table()
    batches, _ = verification_batches(model, None)
    off = lambda x: [o + 10 * NOISE_MULTIPLE * plan.noise for o in predict(folded, x)]
    with pytest.raises(VerificationError, match="8 x the model's own float64 rounding"):
        check_outputs(model, off, batches, default_rtol(model), 1e-6, "far")


def test_exports_record_the_noise_beyond_the_floor(tmp_path):
    """The file is checked on the fold's inputs; where its error exceeds the floor (here
    one set far below float32's resolution) the result records the model's noise and the
    tolerance that admitted the file."""
    model = _image_model(tf_keras, keras_bn, tf_keras.layers.Rescaling(1 / 255))
    result = export.to_onnx(model, tmp_path / "m.onnx")
    assert result.noise is None and result.max_error <= result.tolerance
    assert result.verified_on == result.fold_plan.verdict.inputs
    result = export.to_onnx(model, tmp_path / "m.onnx", rtol=1e-12, atol=0.0)
    assert result.max_error <= result.tolerance
    if result.max_error > 0:  # a file bit-identical to Keras needs no noise
        assert result.noise > 0 and result.tolerance >= NOISE_MULTIPLE * result.noise


def test_cli_fold_and_export_take_samples(tmp_path):
    model = _image_model(tf_keras, keras_bn, tf_keras.layers.Rescaling(1 / 255))
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.RandomState(0).uniform(0, 255, (6, 8, 8, 3))
            .astype("float32"))
    fold = keras_bn_cli("fold", tmp_path / "m.keras", tmp_path / "f.keras",
                        "--samples", tmp_path / "x.npy")
    assert fold.returncode == 0, fold.stderr
    assert "verified on samples (6 rows)" in fold.stdout
    exported = keras_bn_cli("export", tmp_path / "m.keras", "--onnx", tmp_path / "m.onnx",
                            "--samples", tmp_path / "x.npy")
    assert exported.returncode == 0, exported.stderr
    assert "float32 noise" in exported.stdout
    np.save(tmp_path / "bad.npy", np.zeros((6, 8, 8), "float32"))
    bad = keras_bn_cli("export", tmp_path / "m.keras", "--onnx", tmp_path / "b.onnx",
                       "--samples", tmp_path / "bad.npy")
    assert bad.returncode == 2 and "--samples" in bad.stderr and "(rows, 8, 8, 3)" in bad.stderr
    assert not (tmp_path / "b.onnx").exists()
