"""Every example runs end to end in its fast setting (real training, real exports)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quickstart():
    """The quick start trains: its loss falls and the held-out accuracy of the two-class
    task is far above chance (measured 2026-12-05: loss 0.151 -> 0.003, accuracy 1.000)."""
    found = re.search(r"training loss ([\d.]+) -> ([\d.]+); held-out accuracy ([\d.]+)",
                      run_example("quickstart.py"))
    assert found, "the quick start printed no training figures"
    first, last, accuracy = (float(v) for v in found.groups())
    assert last < 0.7 * first and accuracy >= 0.9, found.group(0)


def test_sequential():
    out = run_example("sequential.py", "--quick")
    assert "predictions identical: True" in out


def test_fold_and_export(tmp_path):
    out = run_example("fold_and_export.py", "--quick", "--out", str(tmp_path))
    assert "4 folded, 0 kept" in out and "tflite-int8" in out
    assert sorted(os.listdir(tmp_path)) == ["digits.onnx", "digits.tflite",
                                            "digits_int8.tflite"]


def test_transfer_learning():
    out = run_example("transfer_learning.py", "--quick", "--shots", "5")
    for way in ("not frozen", "frozen", "frozen + recalibrated"):
        assert way in out


@pytest.mark.heavy
def test_small_batch_study(tmp_path):
    out = run_example("small_batch_study.py", "--quick", "--out", str(tmp_path))
    assert "| i.i.d. | 4 | BRN |" in out and "2 classes/batch" in out
    assert {"small_batch_study_quick.md", "small_batch_study_quick.json",
            "small_batch_study_quick_accuracy.png",
            "small_batch_study_quick_curves.png"} <= set(os.listdir(tmp_path))


def test_adabn_study(tmp_path):
    out = run_example("adabn_study.py", "--quick", "--out", str(tmp_path))
    assert "| contrast | 3 |" in out and "recalibrated" in out
    assert {"adabn_study_quick.md", "adabn_study_quick.json",
            "adabn_study_quick.png"} <= set(os.listdir(tmp_path))
