"""keras_bn.keras3 layers on every Keras 3 backend: parity with Keras 3's
BatchNormalization on TensorFlow, JAX and torch (each backend in its own process,
`backend_checks.py`, as Keras 3 picks the backend at import), and the same numbers as the
tf-keras layers (in this process). What both flavours promise alike is tested once per
flavour in the other files of this folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import keras3 as kbn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
#: Max error relative to each quantity's scale (max(1, max |reference|)) over 20 steps;
#: float32 reductions in another order give 1e-7..9e-6 (gamma's gradient, a sum over
#: every element, is the largest).
RTOL = 1e-5


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3_parity")
    results = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        run = subprocess.run([sys.executable, os.path.join(HERE, "backend_checks.py"), str(out)],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        with open(out / f"{backend}.json") as f:
            results[backend] = json.load(f)
        results[backend + "_arrays"] = np.load(out / f"{backend}.npz")
    return results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["bn_2d", "bn_4d", "bn_5d", "brn_2d", "brn_4d", "brn_5d"])
def test_matches_keras3_batch_normalization(parity, backend, case):
    errors = dict(parity[backend][case])
    clipped = errors.pop("steps_with_r_or_d_clipped", None)
    assert errors and all(e <= RTOL for e in errors.values()), errors
    if clipped is not None:  # the renorm comparison exercised the clipping
        assert clipped >= 10


#: Across backends: each backend's reductions run in their own order. The 2-D batches of
#: the last steps (16 rows, mean 5.1, std 0.52) lose mean**2 / var ~ 100 times float32's
#: rounding in the variance; torch's outputs differ from TensorFlow's by 1.6e-5 of the
#: scale there (JAX's less), each backend within RTOL of Keras 3's own layer.
CROSS_BACKEND_RTOL = 5e-5


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_numbers_as_on_tensorflow(parity, backend):
    tf_arrays, other = parity["tensorflow_arrays"], parity[backend + "_arrays"]
    assert sorted(tf_arrays.files) == sorted(other.files) and tf_arrays.files
    worst = max(float(np.max(np.abs(tf_arrays[k] - other[k])))
                / max(1.0, float(np.max(np.abs(tf_arrays[k])))) for k in tf_arrays.files)
    assert worst <= CROSS_BACKEND_RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_and_keras_round_trip(parity, backend):
    fit = parity[backend]["fit"]
    assert all(np.isfinite(fit["loss"])) and fit["moving_mean_moved"] > 0.1
    assert fit["renorm_step"] == 8  # 2 epochs x 4 batches
    assert "BatchRenormalization" in fit["reload_classes"]
    assert fit["reload_error"] <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_on_each_backend(parity, backend):
    fold = parity[backend]["fold"]
    # conv->BN, depthwise->BRN and BN->Dense fold; the tolerance is 1e-5 of the scale.
    assert fold["folded"] == 3 and fold["kept"] == 0 and fold["class"] == "Functional"
    assert fold["max_error"] <= fold["tolerance"]
    assert fold["recalibrate"] == "recalibrated"
    # Exported on every backend (JAX: through a TensorFlow process), each file checked
    # against this backend's model (1e-4 of the output scale).
    for fmt, written in fold["export"].items():
        assert written["folded"] == 3 and written["size"] > 0, fmt
        assert written["max_error"] <= written["tolerance"], (fmt, written)
    # int8 with equalization asked for and bias correction by default, whose records
    # come back from the TensorFlow process on JAX
    assert fold["int8_techniques"] == ["equalization", "bias_correction"]
    assert len(fold["int8_bias_corrected"]) == 3  # conv, depthwise, dense
    # a QDQ ONNX file from the same kind of options: quantized by a TensorFlow process on
    # JAX (bias correction's record comes back from it), scored here on 16 rows
    assert fold["onnx_int8"]["format"] == "onnx-int8"
    assert fold["onnx_int8"]["scored_rows"] == 16
    assert fold["onnx_int8"]["techniques"] == ["bias_correction"]
    assert fold["onnx_int8"]["quantize_nodes"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_recalibrate_is_exact_on_each_backend(parity, backend):
    """The step of each backend (`jax.jit` of `stateless_call` on JAX, an eager call
    without gradients on torch) measures the exact statistics: float32 rounding of the
    sums, 1e-5 of the scale; neither JAX nor torch imports TensorFlow for it."""
    result = parity[backend]["recalibrate"]
    assert all(e <= RTOL for e in result["errors"].values()), result
    if backend != "tensorflow":
        assert result["tensorflow_imported"] is False


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_synchronized_is_a_clear_error_off_tensorflow(parity, backend):
    assert parity["tensorflow"]["synchronized"] == "accepted"
    message = parity[backend]["synchronized"]
    assert "synchronized=True" in message and "KERAS_BACKEND=tensorflow" in message


# -- in this process: the two flavours side by side -------------------------------

@pytest.mark.parametrize("options", [
    dict(),
    dict(virtual_batch_size=4),
    dict(axis=[1, 2]),
])
def test_same_numbers_as_the_tf_keras_layer(options):
    """Keras 3 and tf-keras layers share the math: 6 steps through BRN's warm-up and
    ramps (rmax = inf, the no-clipping limit, included) agree to float32 rounding."""
    schedule = dict(warmup_steps=2, rmax_ramp_steps=3, dmax_ramp_steps=2, rmax=float("inf"),
                    dmax=0.5, momentum=0.8, renorm_momentum=0.8)
    ours3 = kbn.BatchRenormalization(**schedule, **options)
    ours2 = keras_bn.BatchRenormalization(**schedule, **options)
    rs = np.random.RandomState(2)
    for step in range(6):
        x = (rs.randn(8, 5, 3) * (1 + step) + step).astype("float32")
        y3, y2 = ours3(x, training=True), ours2(x, training=True)
        np.testing.assert_allclose(np.asarray(y3), np.asarray(y2), rtol=1e-5, atol=1e-5)
    for name in ("moving_mean", "moving_variance", "renorm_mean", "renorm_stddev"):
        np.testing.assert_allclose(getattr(ours3, name), getattr(ours2, name), rtol=1e-5)
    assert int(ours3.renorm_step) == int(ours2.renorm_step) == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_callbacks_in_a_fit_on_each_backend(parity, backend):
    result = parity[backend]["callbacks"]
    assert result["is_keras_callback"] and result["recalibrated_epochs"] == [0, 1]
    assert result["val_loss_gap"] <= 1e-5 and result["monitor_rows"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_freeze_unfreeze_and_summary_on_each_backend(parity, backend):
    result = parity[backend]["freeze"]
    assert result["frozen"] == ["a", "b"] == result["unfrozen"]
    assert result["mean_moved"] == 0 and result["gamma_moved"] > 0
    assert result["frozen_after"] is False
    assert len(result["summary"]) == 2  # each folds after its Dense
    assert all(foldable.endswith("(after)") for foldable in result["summary"])


def test_keras3_namespace_on_jax_imports_no_tensorflow():
    """`import keras_bn.keras3` and a layer call on the JAX backend import neither
    TensorFlow nor tf-keras (~3 s)."""
    code = ("import sys, numpy as np\nimport keras_bn.keras3 as kbn\n"
            "kbn.BatchRenormalization()(np.ones((4, 3), 'float32'), training=True)\n"
            "print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))")
    env = dict(os.environ, KERAS_BACKEND="jax")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
