"""The package as users get it: built into a wheel and an sdist, installed into a fresh
virtual environment, and the top-level `export/` folder shipping as `keras_bn.export`."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The tree to build: this checkout, or KERAS_BN_SOURCE (to run the test on another commit).
SOURCE = os.environ.get("KERAS_BN_SOURCE", ROOT)


def test_editable_install_maps_export_folder():
    import keras_bn.export

    assert os.path.dirname(keras_bn.export.__file__) == os.path.join(ROOT, "export")
    assert callable(keras_bn.export.to_onnx) and callable(keras_bn.export.to_tflite)


def test_export_package_imports_its_exporters_on_first_use():
    """`import keras_bn.export` (and its constants' modules) loads no TensorFlow, tf2onnx
    or LiteRT, as `import keras_bn`; the exporters come on first use."""
    code = ("import sys\nimport keras_bn.export as e\n"
            "from keras_bn.quantization.options import MODES\n"
            "heavy = {'tensorflow', 'tf2onnx', 'onnxruntime', 'ai_edge_litert'}\n"
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
            "assert e.__all__ == ['ExportResult', 'QuantizationOptions', 'to_onnx', "
            "'to_tflite']\n"
            "assert callable(e.to_tflite) and 'tensorflow' in sys.modules\n")
    _run([sys.executable, "-c", code], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_tf_keras_first_imported_by_keras_bn_still_registers_its_layers(tmp_path):
    """tf_keras imported first by keras_bn itself (a Keras 3 user's `fold` looks at both
    flavours) registers keras_bn's tf-keras layers, with no warning: it used to warn
    "could not register its layers ... partially initialized module" and leave them
    unregistered for tf-keras's loaders."""
    code = ("import sys, warnings\nwarnings.simplefilter('error')\nimport keras_bn\n"
            "from keras_bn import flavour\n"
            "assert 'tf_keras' not in sys.modules\n"
            "plumbing = flavour.named('tf_keras')  # the first import of tf_keras\n"
            "import tf_keras\n"
            "cls = tf_keras.saving.get_registered_object('keras_bn>BatchNormalization')\n"
            "assert cls is keras_bn.BatchNormalization, cls\n")
    _run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], cwd=tmp_path,
         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _modules(source):
    """Every module a wheel must hold, as its path inside the wheel."""
    root = pathlib.Path(source)
    mine = {str(p.relative_to(root)) for p in (root / "keras_bn").rglob("*.py")}
    export = {"keras_bn/export/" + str(p.relative_to(root / "export"))
              for p in (root / "export").rglob("*.py")}
    return mine | export


def _run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    """(fresh venv, dist folder): the sdist built from the tree, the wheel built from the
    sdist (so a file missing from the sdist breaks the wheel too), installed into a new
    virtual environment. That environment sees the dependencies (TensorFlow etc.) through
    a path line in a .pth file, which puts the dev venv's site-packages on sys.path without
    running its .pth files: the editable install's finder is not active there, and the
    source tree is not on the path (the commands run in an empty folder)."""
    tmp = tmp_path_factory.mktemp("fresh")
    _run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), SOURCE])
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    (wheel,) = (tmp / "dist").glob("*.whl")
    python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
          "--no-deps", "--no-index", str(wheel)])
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    pathlib.Path(purelib.strip(), "dev_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n")
    return venv, tmp / "dist"


@pytest.mark.heavy
def test_wheel_and_sdist_hold_every_module_and_the_license(fresh_install):
    _, dist = fresh_install
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _modules(SOURCE) - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert not any(n.startswith("export/") for n in names)  # no stray top-level package
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
    (sdist,) = dist.glob("*.tar.gz")
    in_sdist = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= in_sdist


@pytest.mark.heavy
def test_fresh_venv_imports_runs_the_cli_and_exports(fresh_install, tmp_path):
    venv, _ = fresh_install
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "keras-bn")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    where = _run([python, "-c", "import keras_bn, keras_bn.export as e; e.to_onnx; "
                  "print(keras_bn.__file__)"], cwd=tmp_path, env=env)
    assert where.strip().startswith(str(venv)), where  # the installed copy, not the source
    assert "usage: keras-bn" in _run([cli, "--help"], cwd=tmp_path, env=env)
    _run([python, "-c", "import tf_keras as k, keras_bn; k.Sequential([k.Input((8, 8, 3)), "
          "k.layers.Conv2D(4, 3), keras_bn.BatchNormalization(), k.layers.Flatten(), "
          "k.layers.Dense(2)]).save('m.keras')"], cwd=tmp_path, env=env)
    _run([cli, "fold", "m.keras", "folded.keras"], cwd=tmp_path, env=env)
    _run([cli, "export", "m.keras", "--onnx", "m.onnx"], cwd=tmp_path, env=env)
    assert (tmp_path / "folded.keras").stat().st_size > 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
