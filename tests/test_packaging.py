"""The top-level `export/` folder ships as `keras_bn.export`, editable and not."""

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_MODULES = {"__init__.py", "onnx.py", "tflite.py", "verify.py", "_prepare.py"}


def test_editable_install_maps_export_folder():
    import keras_bn.export

    assert os.path.dirname(keras_bn.export.__file__) == os.path.join(ROOT, "export")
    assert callable(keras_bn.export.to_onnx) and callable(keras_bn.export.to_tflite)


@pytest.mark.heavy
def test_wheel_install_maps_export_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp_path / "dist"), ROOT], check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").iterdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"keras_bn/export/{m}" for m in EXPORT_MODULES} <= names
    assert not any(n.startswith("export/") for n in names)  # no stray top-level package
    source = {str(p.relative_to(ROOT)) for p in pathlib.Path(ROOT, "keras_bn").rglob("*.py")}
    assert source <= names, sorted(source - names)  # every module ships (keras_bn.fold once did not)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=600)
    probe = ("import keras_bn.export as e, keras_bn; "
             "print(e.__file__); print(keras_bn.__file__); e.to_onnx; e.to_tflite")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=600).stdout.split()
    assert out[0] == str(tmp_path / "site" / "keras_bn" / "export" / "__init__.py")
    assert out[1].startswith(str(tmp_path / "site"))
