"""What several test folders share: tolerances on the scale of the values, models with
the statistics a trained one has, the command line as a user runs it. Imported as
`helpers` (the tests folder is on the path, as conftest.py's folder)."""

import os
import subprocess
import sys

import numpy as np

# Shared with the benchmarks, which measure the same kind of models.
from benchmarks.models import randomize_biases, randomize_bn  # noqa: F401


def assert_close(actual, expected, rtol, what=""):
    """max|actual - expected| <= rtol * max(1, max|expected|): a tolerance on the scale of
    the values, since float32 reductions in a different order differ by ~n * 6e-8."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


def trained_statistics(model, seed=0):
    """Non-trivial statistics and affine parameters in every BN variable of `model`
    (renormalization's too), found by variable name, so on either flavour: a fold of
    fresh BN (mean 0, variance 1) proves nothing."""
    rs = np.random.RandomState(seed)
    for w in model.weights:
        name = getattr(w, "path", w.name).split("/")[-1].split(":")[0]
        if name in ("moving_variance", "moving_stddev", "renorm_stddev"):
            w.assign(rs.uniform(0.5, 2.0, w.shape))
        elif name in ("moving_mean", "renorm_mean", "beta"):
            w.assign(rs.randn(*w.shape) * 0.3)
        elif name == "gamma":
            w.assign(rs.uniform(0.5, 1.5, w.shape))
    return model


def keras_bn_cli(*args, cwd=None):
    """Runs `keras-bn ARGS` with this interpreter; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
