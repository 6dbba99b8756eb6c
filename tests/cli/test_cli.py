"""The keras-bn command line, run as a subprocess like a user runs it."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

import keras_bn
from keras_bn.files import load_model
from keras_bn.layers.find import is_batch_norm
from helpers import keras_bn_cli, randomize_bn

L = tf_keras.layers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    inputs = tf_keras.Input((8, 8, 3))
    x = L.ReLU()(keras_bn.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="conv1")(inputs)))
    x = keras_bn.BatchRenormalization(name="brn2")(L.Conv2D(4, 3, name="conv2")(x))
    x = L.Dense(3, name="head")(L.Flatten()(L.ReLU()(x)))
    path = tmp_path_factory.mktemp("models") / "model.keras"
    randomize_bn(tf_keras.Model(inputs, x)).save(path)
    return path


def test_help_has_examples_for_every_command():
    result = keras_bn_cli("--help")
    assert result.returncode == 0 and "examples:" in result.stdout
    for command in ("fold", "export", "inspect", "demo"):
        sub = keras_bn_cli(command, "--help")
        assert sub.returncode == 0 and f"keras-bn {command}" in sub.stdout.split("examples:")[1]


def test_fold_writes_a_folded_model(model_file, tmp_path):
    out = tmp_path / "folded.keras"
    result = keras_bn_cli("fold", model_file, out)
    assert result.returncode == 0, result.stderr
    assert "2 folded, 0 kept" in result.stdout and "[3/3] save" in result.stderr
    folded = tf_keras.models.load_model(out)
    assert not any(map(is_batch_norm, folded.layers))
    assert [p for p in os.listdir(tmp_path)] == ["folded.keras"]


def test_export_onnx_and_tflite(model_file, tmp_path):
    result = keras_bn_cli("export", model_file, "--onnx", tmp_path / "m.onnx",
                          "--tflite", tmp_path / "m.tflite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.tflite").exists()
    assert "onnx" in result.stdout and "tflite" in result.stdout
    assert "max abs error" in result.stdout


def test_export_takes_the_output_positionally_by_its_extension(model_file, tmp_path):
    """`export MODEL OUT` as `fold MODEL OUT` reads: the format from OUT's extension,
    beside the other flag; any other extension, or the same format twice, is one line
    (exit 2) and writes nothing."""
    result = keras_bn_cli("export", model_file, tmp_path / "m.onnx", "--tflite",
                          tmp_path / "m.tflite")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.tflite"]
    for out, extra, message in ((tmp_path / "m.keras", [], "OUT must end in .onnx or "
                                 ".tflite (the format comes from the extension)"),
                                (tmp_path / "n.tflite", ["--tflite", tmp_path / "o.tflite"],
                                 "both ask for the tflite file: give one")):
        bad = keras_bn_cli("export", model_file, out, *extra)
        lines = [line for line in bad.stderr.splitlines() if line.startswith("keras-bn")]
        assert bad.returncode == 2 and len(lines) == 1 and message in lines[0], bad.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.tflite"]


def test_export_writes_every_output_or_none(model_file, tmp_path):
    """The ONNX file converts and verifies, then the TFLite one cannot be written (its
    folder is a file): exit 2, the message names the failed step and says nothing was
    written, and the ONNX path keeps its earlier file."""
    (tmp_path / "m.onnx").write_bytes(b"previous file")
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = keras_bn_cli("export", model_file, "--onnx", tmp_path / "m.onnx",
                          "--tflite", tmp_path / "blocker" / "m.tflite")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert 'in step "fold, convert, verify' in line and "m.tflite" in line, line
    assert "none of" in line and "was written" in line, line
    assert (tmp_path / "m.onnx").read_bytes() == b"previous file"
    assert sorted(os.listdir(tmp_path)) == ["blocker", "m.onnx"]


def test_export_int8_with_calibration_data(model_file, tmp_path):
    np.save(tmp_path / "data.npy", np.random.RandomState(0).rand(32, 8, 8, 3).astype("f4"))
    result = keras_bn_cli("export", model_file, "--tflite", tmp_path / "q.tflite",
                          "--int8", tmp_path / "data.npy")
    assert result.returncode == 0, result.stderr
    assert "tflite-int8" in result.stdout


def test_export_int8_io_and_dynamic_modes(model_file, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    np.save(tmp_path / "data.npy", np.random.RandomState(0).rand(32, 8, 8, 3).astype("f4"))
    result = keras_bn_cli("export", model_file, "--tflite", tmp_path / "io.tflite",
                          "--quantize", "int8-io", "--calibration", tmp_path / "data.npy")
    assert result.returncode == 0, result.stderr
    assert "tflite-int8-io" in result.stdout
    runner = Interpreter(model_path=str(tmp_path / "io.tflite")).get_signature_runner()
    details = [*runner.get_input_details().values(), *runner.get_output_details().values()]
    assert [d["dtype"] for d in details] == [np.int8, np.int8]
    # every weight of this model has under 1024 values: dynamic range leaves it float
    result = keras_bn_cli("export", model_file, "--tflite", tmp_path / "dyn.tflite",
                          "--quantize", "dynamic")
    assert result.returncode == 1, result.stderr
    assert "wrote no int8 tensor (dynamic-range quantization leaves weights of under 1024 " \
        "values in float)" in result.stderr
    assert not (tmp_path / "dyn.tflite").exists()


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    """A digits MLP with BN trained here (int8 changes a few of its answers), saved, with
    its calibration and held-out rows."""
    import digits_models

    model, calibration, held_out, _ = digits_models.trained_classifier()
    folder = tmp_path_factory.mktemp("digits")
    model.save(folder / "digits.keras")
    np.save(folder / "calibration.npy", calibration)
    np.save(folder / "held.npy", held_out)
    return folder


def test_export_scores_the_file_on_eval_data_and_min_agreement_exits_1(digits_file, tmp_path):
    common = ("--int8", digits_file / "calibration.npy", "--eval", digits_file / "held.npy")
    result = keras_bn_cli("export", digits_file / "digits.keras", "--tflite",
                          tmp_path / "q.tflite", *common)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()[-2:]
    assert "top-1 agreement" in header and "SQNR" in header
    assert "tflite-int8" in row and "evaluation data (397 rows)" in row
    agreement = float(row.split("rows)")[1].split("%")[0]) / 100
    assert 0.9 < agreement < 1, row
    result = keras_bn_cli("export", digits_file / "digits.keras", "--tflite",
                          tmp_path / "q2.tflite", *common, "--min-agreement", "1")
    assert result.returncode == 1, result.stderr
    assert "below min_agreement 100.00%" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "q2.tflite").exists()


def test_inspect_prints_the_bn_table(model_file):
    result = keras_bn_cli("inspect", model_file)
    assert result.returncode == 0, result.stderr
    assert "bn1" in result.stdout and "brn2" in result.stdout
    assert "conv1 (after)" in result.stdout and "momentum" in result.stdout


@pytest.mark.parametrize("args,message", [
    (("fold", "missing.keras", "out.keras"), "missing.keras: no such file"),
    (("fold", "{model}", "out.onnx"), "out.onnx: the output must end in .keras or .h5"),
    (("export", "{model}"), "nothing to export"),
    (("export", "{model}", "--onnx", "m.onnx", "--quantize", "int8-io", "--calibration",
      "d.npy"), "--onnx m.onnx: ONNX has no int8-io mode; --quantize applies to every file"),
    (("export", "{model}", "--tflite", "m.tflite", "--quantize", "int8-io"),
     "give --calibration DATA"),
    (("export", "{model}", "--tflite", "m.tflite", "--quantize", "dynamic", "--calibration",
      "d.npy"), "--calibration is for --quantize int8 or int8-io or int16x8, not dynamic"),
    (("export", "{model}", "--tflite", "m.tflite", "--quantize", "int8", "--float16"),
     "choose one of --quantize and --float16"),
    (("export", "{model}", "--onnx", "m.onnx", "--min-agreement", "99"),
     "--min-agreement 99: give a fraction between 0 and 1"),
    (("export", "{model}", "--tflite", "m.tflite", "--int8", "missing.npy"),
     "missing.npy: cannot read"),
    (("inspect", "not_a_model.txt"), "not a tf-keras model file"),
])
def test_bad_input_exits_2_with_one_line(model_file, tmp_path, args, message):
    (tmp_path / "not_a_model.txt").write_text("hello")
    args = [a.format(model=model_file) for a in args]
    result = keras_bn_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-bn")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.keras").exists()


def test_lambda_layer_needs_unsafe(flavour, tmp_path):
    keras, _ = flavour
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(
        keras.layers.BatchNormalization()(keras.layers.Dense(3)(inputs)))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, x).save(path)
    refused = keras_bn_cli("inspect", path)
    assert refused.returncode == 2 and "layer 'double': a Lambda layer" in refused.stderr
    assert "--unsafe" in refused.stderr and "Traceback" not in refused.stderr
    allowed = keras_bn_cli("inspect", path, "--unsafe")
    assert allowed.returncode == 0, allowed.stderr
    # The user's choice carries into the fold's rebuild of the model (and only there).
    folded = keras_bn_cli("fold", path, tmp_path / "folded.keras", "--unsafe")
    assert folded.returncode == 0, folded.stderr
    model = keras.models.load_model(tmp_path / "folded.keras", safe_mode=False)
    assert not any(map(is_batch_norm, model.layers))


def test_lambda_in_h5_is_refused_too(flavour, tmp_path):
    keras, _ = flavour
    inputs = keras.Input((4,))
    path = tmp_path / "lambda.h5"
    keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0, name="plus")(inputs)).save(path)
    refused = keras_bn_cli("fold", path, tmp_path / "o.keras")
    assert refused.returncode == 2 and "'plus'" in refused.stderr


def test_demo_runs_and_prints_the_table(tmp_path):
    result = keras_bn_cli("demo", "--epochs", "2", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    for fmt in ("keras (folded)", "onnx", "tflite ", "tflite-int8"):
        assert fmt in result.stdout
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    # progress lines only: no TensorFlow start-up lines, converter or HDF5 chatter
    assert all(line.startswith("[") for line in result.stderr.splitlines()), result.stderr
    assert sorted(os.listdir(tmp_path / "demo")) == [
        "demo.png", "digits.onnx", "digits.tflite", "digits_int8.tflite"]


def _digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("make_out,args", [
    (lambda model, d: model, ("fold", "{model}", "{out}")),
    (lambda model, d: os.symlink(model, d / "link.keras") or d / "link.keras",
     ("fold", "{model}", "{out}")),
    (lambda model, d: os.link(model, d / "hard.keras") or d / "hard.keras",
     ("fold", "{model}", "{out}")),
    (lambda model, d: model, ("export", "{model}", "--onnx", "{out}")),
    (lambda model, d: d / "m.tflite", ("export", "{model}", "--onnx", "{out}")),
    (lambda model, d: d / "m.onnx", ("export", "{model}", "--tflite", "{out}")),
])
def test_the_input_and_other_formats_are_never_overwritten(model_file, tmp_path, make_out,
                                                              args):
    model = tmp_path / "model.keras"
    model.write_bytes(model_file.read_bytes())
    out = make_out(model, tmp_path)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    result = keras_bn_cli(*[a.format(model=model, out=out) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert ("this is the input file" in result.stderr
            or "the output must end in" in result.stderr), result.stderr
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before


def test_written_files_get_umask_permissions_and_keep_their_own(model_file, tmp_path):
    def run(umask, *args):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=600,
                              preexec_fn=lambda: os.umask(umask))

    out = tmp_path / "new" / "folder" / "f.keras"  # missing folders are created
    assert run(0o022, "fold", model_file, out).returncode == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert run(0o077, "export", model_file, "--onnx", tmp_path / "m.onnx").returncode == 0
    assert oct((tmp_path / "m.onnx").stat().st_mode & 0o777) == oct(0o600)
    os.chmod(out, 0o640)  # an overwritten file keeps its mode
    assert run(0o022, "fold", model_file, out).returncode == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """Two inputs; dynamic spatial dimensions; integer input (Embedding first)."""
    folder = tmp_path_factory.mktemp("odd")
    a, b = tf_keras.Input((8,), name="wide"), tf_keras.Input((4,), name="narrow")
    x = keras_bn.BatchNormalization()(L.Concatenate()([L.Dense(4)(a), b]))
    tf_keras.Model([a, b], L.Dense(2)(x)).save(folder / "two.keras")
    image = tf_keras.Input((None, None, 3))
    x = keras_bn.BatchNormalization()(L.Conv2D(4, 3)(image))
    tf_keras.Model(image, L.GlobalAveragePooling2D()(x)).save(folder / "dynamic.keras")
    tokens = tf_keras.Input((5,), dtype="int32")
    x = keras_bn.BatchNormalization()(L.Dense(3)(L.Embedding(10, 4)(tokens)))
    tf_keras.Model(tokens, x).save(folder / "tokens.keras")
    return folder


def _int8_tensors(path):
    from keras_bn.export.tflite import tensor_types

    return "INT8" in tensor_types(open(path, "rb").read())


def test_int8_calibration_by_input_name_and_on_dynamic_shapes(odd_models, tmp_path):
    rs = np.random.RandomState(0)
    np.savez(tmp_path / "two.npz", wide=rs.rand(16, 8), narrow=rs.rand(16, 4))
    result = keras_bn_cli("export", odd_models / "two.keras", "--tflite", tmp_path / "two.tflite",
                          "--int8", tmp_path / "two.npz")
    assert result.returncode == 0, result.stderr
    assert _int8_tensors(tmp_path / "two.tflite")
    np.save(tmp_path / "images.npy", rs.rand(16, 12, 12, 3).astype("float32"))
    result = keras_bn_cli("export", odd_models / "dynamic.keras", "--tflite",
                          tmp_path / "dyn.tflite", "--int8", tmp_path / "images.npy")
    assert result.returncode == 0, result.stderr
    assert _int8_tensors(tmp_path / "dyn.tflite")


@pytest.mark.parametrize("model,arrays,message", [
    ("dynamic.keras", {"": np.zeros((0, 12, 12, 3))}, "has no rows"),
    ("dynamic.keras", {"": np.zeros((4, 12, 12))}, "takes (rows, any, any, 3)"),
    ("two.keras", {"": np.zeros((4, 8))}, "has 2 inputs"),
    ("two.keras", {"wide": np.zeros((4, 8)), "other": np.zeros((4, 4))},
     "the model's inputs are ['wide', 'narrow']"),
    ("two.keras", {"wide": np.zeros((4, 8)), "narrow": np.zeros((3, 4))},
     "different numbers of rows"),
])
def test_bad_calibration_data_is_a_clear_error(odd_models, tmp_path, model, arrays, message):
    data = tmp_path / ("d.npy" if "" in arrays else "d.npz")
    np.save(data, arrays[""]) if "" in arrays else np.savez(data, **arrays)
    result = keras_bn_cli("export", odd_models / model, "--onnx", tmp_path / "q.onnx",
                          "--tflite", tmp_path / "q.tflite", "--quantize", "int8",
                          "--calibration", data)
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-bn")]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "q.tflite").exists() and not (tmp_path / "q.onnx").exists()


def test_tflite_verification_feeds_integer_inputs(odd_models, tmp_path):
    result = keras_bn_cli("export", odd_models / "tokens.keras", "--tflite",
                          tmp_path / "t.tflite", "--onnx", tmp_path / "t.onnx")
    assert result.returncode == 0, result.stderr


def _cli_with_fold_replaced(fold_source, *args):
    """Runs the CLI in a process whose keras_bn.fold is `fold_source` (a bug stand-in)."""
    script = ("import sys, keras_bn.folding as f\n" + fold_source +
              "\nf.fold = fold\nfrom keras_bn.cli import main\nsys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BN_DEBUG", None)
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_internal_error_has_its_own_exit_status_and_one_line(model_file, tmp_path):
    bug = "def fold(*a, **k):\n    raise ValueError('index 7 out of range')"
    result = _cli_with_fold_replaced(bug, "fold", model_file, tmp_path / "f.keras")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "internal error (a bug in keras-bn" in lines[-1] and "index 7" in lines[-1]
    assert "Traceback" not in result.stderr and "--debug" in lines[-1]
    debug = _cli_with_fold_replaced(bug, "fold", model_file, tmp_path / "f.keras", "--debug")
    assert debug.returncode == 3 and "Traceback" in debug.stderr
    assert not (tmp_path / "f.keras").exists()


def test_no_native_log_lines_unless_verbose(model_file, tmp_path):
    np.save(tmp_path / "d.npy", np.random.RandomState(0).rand(16, 8, 8, 3).astype("f4"))
    args = ("export", model_file, "--onnx", tmp_path / "m.onnx", "--tflite",
            tmp_path / "m.tflite", "--int8", tmp_path / "d.npy")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert all(line.startswith("[") for line in quiet.stderr.splitlines()), quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args), "--verbose"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0 and not all(
        line.startswith("[") for line in loud.stderr.splitlines())


def test_help_does_not_import_tensorflow():
    """`keras-bn --help` answers without TensorFlow (3 s to import): the console script
    and `python -m keras_bn.cli` both, measured by Python's own import log."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-bn")
    for command in ([script, "--help"], [sys.executable, "-m", "keras_bn.cli", "fold", "--help"]):
        result = subprocess.run(command, env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage: keras-bn" in result.stdout
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
        assert "keras_bn" in imported and "tensorflow" not in imported, sorted(imported)


def test_export_of_a_quantization_aware_model_needs_no_calibration(tmp_path):
    """A trained QAT .keras file (loaded safely) gives integer files from its learned
    ranges: `--quantize int8` alone, both formats, each within the output steps the
    exporter checks; scored against the QAT model by default (and said so), against the
    float model with `--reference`."""
    from tests.export.test_quantization_aware import _trained

    aware, data, model = _trained("keras3")
    aware.save(tmp_path / "qat.keras")
    model.save(tmp_path / "float.keras")
    np.save(tmp_path / "x.npy", data)
    result = keras_bn_cli("export", tmp_path / "qat.keras", "--onnx", tmp_path / "q.onnx",
                          "--tflite", tmp_path / "q.tflite", "--quantize", "int8",
                          "--eval", tmp_path / "x.npy")
    assert result.returncode == 0, result.stderr
    for fmt in ("onnx-int8", "tflite-int8"):
        line = next(line for line in result.stdout.splitlines()
                    if line.startswith(f"{fmt} learned ranges: "))
        share = float(line.split(": ")[1].split("%")[0])
        assert share >= 99 and "of the output values within a step" in line, line
    assert (tmp_path / "q.onnx").exists() and (tmp_path / "q.tflite").exists()
    # Scored against the QAT model, it says so and how to score against the float one.
    assert "give --reference FLOAT_MODEL to score them against it" in result.stdout
    against = keras_bn_cli("export", tmp_path / "qat.keras", "--tflite",
                           tmp_path / "r.tflite", "--quantize", "int8", "--eval",
                           tmp_path / "x.npy", "--reference", tmp_path / "float.keras")
    assert against.returncode == 0, against.stderr
    assert "--reference" not in against.stdout and "SQNR" in against.stdout

    def sqnr(stdout):  # the scores table's tflite-int8 row
        row = next(line for line in stdout.splitlines() if line.startswith("tflite-int8 ")
                   and line.rstrip().endswith("dB"))
        return float(row.split()[-2])

    # The file is far nearer its own simulation than the float model.
    assert sqnr(result.stdout) > sqnr(against.stdout) + 10, (result.stdout, against.stdout)


def test_qat_trains_toward_the_models_answers_and_its_file_exports(tmp_path):
    """`qat MODEL OUT --data DATA` on unlabelled rows: a .keras QAT model written
    atomically, the held-out agreement reported; `export OUT --quantize int8` then needs
    no calibration. Labels of the wrong kind are one line."""
    from tests.quantization.test_distillation import _trained

    model, _, rows, labels = _trained("tf_keras", "softmax")
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", rows)
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "bad.npy", rows[:, 0])
    result = keras_bn_cli("qat", tmp_path / "model.keras", tmp_path / "qat.keras",
                          "--data", tmp_path / "x.npy", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "2 layer -> BN pair(s) trained folded and int8" in result.stdout, result.stdout
    assert "judged on 80 held-out rows: top-1 agreement with the float model" in result.stdout
    assert re.search(r"\(epoch \d of 2 kept\)|start kept\)", result.stdout), result.stdout
    # By default the model's moving statistics are kept through training.
    assert "BN statistics frozen from the start" in result.stdout, result.stdout

    def statistics(path):
        return [layer.moving_mean.numpy() for layer in load_model(path).layers
                if type(layer).__name__ == "QuantizedConvBN" and layer.moving_mean is not None]

    given = [layer.moving_mean.numpy() for layer in model.layers if is_batch_norm(layer)]
    kept = statistics(tmp_path / "qat.keras")
    assert len(kept) == len(given) == 2
    assert all(np.array_equal(a, b) for a, b in zip(kept, given))
    exported = keras_bn_cli("export", tmp_path / "qat.keras", tmp_path / "q.tflite",
                            "--quantize", "int8")
    assert exported.returncode == 0, exported.stderr
    labelled = keras_bn_cli("qat", tmp_path / "model.keras", tmp_path / "qat2.keras",
                            "--data", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                            "--epochs", "1", "--ranges", "mse", "--bias-correction",
                            "--significance", "1", "--freeze-after", "2")
    assert labelled.returncode == 0 and "task loss" in labelled.stdout, labelled.stderr
    assert "BN statistics frozen after 2 steps" in labelled.stdout, labelled.stdout
    assert re.search(r"epoch 1 of 1 kept|\(p < 1\): start kept", labelled.stdout)
    assert re.search(r"bias correction: [1-9]\d* layer\(s\) corrected", labelled.stdout)
    bad = keras_bn_cli("qat", tmp_path / "model.keras", tmp_path / "qat3.keras",
                       "--data", tmp_path / "x.npy", "--labels", tmp_path / "bad.npy")
    assert bad.returncode == 2 and "give one integer class label per row" in bad.stderr
    assert not (tmp_path / "qat3.keras").exists()
