"""A corpus of hostile model and data files, each built here the way a published attack
builds it, with a harmless but observable payload: a marker file that must never appear,
a secret file whose content must never reach the model.

Every file goes through the API (`load_model`) and the command line; a case passes only
when the file is refused in one line with exit status 2 and the payload never ran. The
benign files after them must keep loading.

References: CVE-2025-1550 (config-chosen functions, GHSA-48g7-3x6r-xfhp), CVE-2025-8747
(`get_file` writes where the file says), CVE-2025-12058 (lookup vocabularies read from
a path), CVE-2026-1669 (HDF5 external storage reads local files).
"""

import json
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_bn
from keras_bn.errors import InputError, UnsafeModelError
from keras_bn.files import load_model

L = tf_keras.layers


def cli(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def small_model():
    inputs = tf_keras.Input((4,), name="x")
    return tf_keras.Model(inputs, keras_bn.BatchNormalization()(L.Dense(3)(inputs)))


def zip_members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def edited_keras(tmp_path, edit, name="hostile.keras"):
    """A tf-keras `.keras` file of `small_model` whose config.json `edit` changed."""
    small_model().save(tmp_path / "base.keras")
    members = zip_members(tmp_path / "base.keras")
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    write_zip(tmp_path / name, members)
    os.remove(tmp_path / "base.keras")
    return tmp_path / name


def add_layer(config, entry, inbound):
    """Appends a layer to a functional config, called on `inbound` (a node list)."""
    entry.setdefault("name", entry["config"]["name"])
    entry["inbound_nodes"] = [inbound]
    config["config"]["layers"].append(entry)
    config["config"]["output_layers"] = [[entry["name"], 0, 0]]


def op_layer(class_name, function, kwargs):
    return {"module": "tf_keras.src.layers.core.tf_op_layer", "class_name": class_name,
            "registered_name": class_name,
            "config": {"name": f"tf.{function}", "trainable": True, "dtype": "float32",
                       "function": function}}, [["batch_normalization", 0, 0, kwargs]]


def assert_refused(tmp_path, path, what, marker=None, command="fold"):
    """Refused by the API and by the CLI (exit 2, one line naming `what`), the payload
    absent."""
    with pytest.raises((UnsafeModelError, InputError), match=what):
        load_model(path)
    args = (command, path) + ((tmp_path / "out.keras",) if command == "fold" else ())
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert what in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    if marker is not None:
        assert not os.path.exists(marker), "the file's payload ran"
    assert not (tmp_path / "out.keras").exists()


# -- Code and functions chosen by the file (CVE-2025-1550 pattern and variants) ---------

@pytest.mark.parametrize("function", [
    {"module": "tf_keras.src.saving.saving_lib", "class_name": "function",
     "config": "os.system", "registered_name": "os.system"},  # qualname through a module
    {"module": "tf_keras.src.utils.io_utils", "class_name": "function",
     "config": "relu", "registered_name": "system"},  # the registered-name fallback
    {"module": "builtins", "class_name": "function", "config": "exec",
     "registered_name": None},
    {"module": "subprocess", "class_name": "function", "config": "getoutput",
     "registered_name": None},
])
def test_functions_the_file_names_are_refused(tmp_path, function):
    marker = tmp_path / "ran.txt"

    def edit(config):
        add_layer(config, {"module": "keras.layers", "class_name": "Activation",
                           "registered_name": None,
                           "config": {"name": "payload", "trainable": True,
                                      "dtype": "float32", "activation": function}},
                  [["_CONSTANT_VALUE", -1, f"touch {marker}", {}]])

    path = edited_keras(tmp_path, edit)
    assert_refused(tmp_path, path, "'payload'", marker)


def test_a_built_in_name_registered_as_something_else_is_refused(tmp_path):
    """The registry is searched by registered name before the module: a built-in class
    whose registered name differs would build whatever is registered under it."""
    def edit(config):
        config["config"]["layers"][1]["registered_name"] = "keras_bn>Anything"

    assert_refused(tmp_path, edited_keras(tmp_path, edit), "not a built-in")


def test_get_file_with_a_file_origin_is_refused(tmp_path):
    """CVE-2025-8747: `get_file(origin="file://...", cache_dir=...)` copies a file where
    the model file says."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")

    def edit(config):
        add_layer(config, {"module": "keras.utils", "class_name": "get_file",
                           "registered_name": None,
                           "config": {"name": "payload", "fname": "stolen.txt",
                                      "origin": f"file://{secret}",
                                      "cache_dir": str(tmp_path / "written")}},
                  [["batch_normalization", 0, 0, {}]])

    assert_refused(tmp_path, edited_keras(tmp_path, edit), "'payload'")
    assert not (tmp_path / "written").exists()


@pytest.mark.parametrize("class_name,function,kwargs", [
    ("TFOpLambda", "compat.v1.write_file", {"filename": "MARKER", "contents": "x"}),
    ("TFOpLambda", "io.write_file", {"filename": "MARKER", "contents": "x"}),
    ("SlicingOpLambda", "io.write_file", {"filename": "MARKER", "contents": "x"}),
    ("TFOpLambda", "compat.v1.read_file", {"filename": "SECRET"}),
    ("TFOpLambda", "io.read_file", {"filename": "SECRET"}),
    ("TFOpLambda", "compat.v1.app.run", {"argv": ["keras-bn", "inspect", "--unsafe", "m"]}),
    ("TFOpLambda", "py_function", {}),
    ("TFOpLambda", "compat.v1.gfile.Remove", {"filename": "MARKER"}),
])
def test_op_layers_that_reach_outside_the_tensors_are_refused(tmp_path, class_name,
                                                               function, kwargs):
    marker, secret = tmp_path / "ran.txt", tmp_path / "secret.txt"
    secret.write_text("s3cret")
    kwargs = json.loads(json.dumps(kwargs).replace("MARKER", str(marker))
                        .replace("SECRET", str(secret)))

    def edit(config):
        add_layer(config, *op_layer(class_name, function, kwargs))

    assert_refused(tmp_path, edited_keras(tmp_path, edit), f"tf.{function}", marker)


def test_op_layers_of_tensor_math_load(tmp_path):
    inputs = tf_keras.Input((4,))
    x = tf.nn.relu(tf.math.multiply(inputs, 2.0))[:, 1:]
    x = tf.reshape(tf.concat([x, x], axis=-1), (-1, 6))
    tf_keras.Model(inputs, x).save(tmp_path / "ops.keras")
    assert len(load_model(tmp_path / "ops.keras").layers) > 3


# -- Files read into the model (CVE-2025-12058, CVE-2026-1669) --------------------------

@pytest.mark.parametrize("class_name", ["StringLookup", "IntegerLookup", "TextVectorization"])
def test_vocabulary_paths_are_refused_inline_vocabularies_load(tmp_path, class_name):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\nword\n" if class_name != "IntegerLookup" else "7\n8\n")
    layer = getattr(L, class_name)
    vocabulary = [7, 8] if class_name == "IntegerLookup" else ["s3cret", "word"]
    dtype = "int64" if class_name == "IntegerLookup" else "string"
    inputs = tf_keras.Input((1,), dtype=dtype)
    tf_keras.Model(inputs, layer(vocabulary=vocabulary, name="lookup")(inputs)).save(
        tmp_path / "inline.keras")
    assert load_model(tmp_path / "inline.keras").get_layer("lookup") is not None
    members = zip_members(tmp_path / "inline.keras")
    config = json.loads(members["config.json"])
    for entry in config["config"]["layers"]:
        if entry["class_name"] == class_name:
            entry["config"]["vocabulary"] = str(secret)
    members["config.json"] = json.dumps(config).encode()
    write_zip(tmp_path / "path.keras", members)
    assert_refused(tmp_path, tmp_path / "path.keras", "the path", command="inspect")


def external_h5(path, target):
    """An HDF5 file whose dataset is stored in `target` (external raw storage)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="uint8", external=[(str(target), 0, 4)])


def test_hdf5_external_storage_is_refused_in_h5_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s3cr")
    small_model().save(tmp_path / "model.h5")
    with h5py.File(tmp_path / "model.h5", "a") as f:
        group = f["model_weights"]["dense"]["dense"]
        kernel = group["kernel:0"][...]
        del group["kernel:0"]
        raw = tmp_path / "kernel.raw"
        raw.write_bytes(kernel.astype("<f4").tobytes())
        group.create_dataset("kernel:0", shape=kernel.shape, dtype="<f4",
                             external=[(str(raw), 0, kernel.nbytes)])
    assert_refused(tmp_path, tmp_path / "model.h5", "external storage", command="inspect")


def test_hdf5_external_storage_links_and_virtual_datasets_in_keras_weights(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s3cr")
    small_model().save(tmp_path / "base.keras")
    members = zip_members(tmp_path / "base.keras")
    cases = {}
    external_h5(tmp_path / "ext.h5", secret)
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["w"] = h5py.ExternalLink(str(tmp_path / "ext.h5"), "w")
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        layout = h5py.VirtualLayout(shape=(4,), dtype="uint8")
        layout[:] = h5py.VirtualSource(str(tmp_path / "ext.h5"), "w", shape=(4,))
        f.create_virtual_dataset("w", layout)
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("w", shape=(1 << 40,), dtype="float32")  # no data: fill values
    for name, what in (("ext", "external storage"), ("link", "a link to"),
                       ("virtual", "virtual dataset"), ("huge", "declares")):
        weights = dict(members, **{"model.weights.h5": (tmp_path / f"{name}.h5").read_bytes()})
        write_zip(tmp_path / f"{name}.keras", weights)
        cases[name] = what
    for name, what in cases.items():
        with pytest.raises(UnsafeModelError, match=what):
            load_model(tmp_path / f"{name}.keras")
    assert_refused(tmp_path, tmp_path / "ext.keras", "external storage", command="inspect")


# -- SavedModel graphs and folders --------------------------------------------------------

class _Payload(tf.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    def __call__(self, x):
        self.op()
        return x


def test_savedmodel_graph_with_file_ops_is_refused(tmp_path):
    """A resource initializer or a function whose graph reads and writes files: the ops
    run at load or when the model is called, whatever the Keras metadata says."""
    marker, secret = tmp_path / "ran.txt", tmp_path / "secret.txt"
    secret.write_text("s3cret")
    small_model().save(tmp_path / "saved", save_format="tf")
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tmp_path / "saved" / "saved_model.pb").read_bytes())
    function = proto.meta_graphs[0].graph_def.library.function[0]
    read = function.node_def.add(name="read", op="ReadFile")
    read.input.append("read_name:output:0")
    write = function.node_def.add(name="write", op="WriteFile")
    write.input.extend(["write_name:output:0", "read:contents:0"])
    (tmp_path / "saved" / "saved_model.pb").write_bytes(proto.SerializeToString())
    assert_refused(tmp_path, tmp_path / "saved", "'ReadFile'", marker, command="inspect")


def test_savedmodel_symlinks_that_leave_the_folder_or_loop(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    small_model().save(tmp_path / "saved", save_format="tf")
    os.makedirs(tmp_path / "saved" / "assets", exist_ok=True)
    os.symlink(secret, tmp_path / "saved" / "assets" / "vocab.txt")
    assert_refused(tmp_path, tmp_path / "saved", "points outside the model folder",
                   command="inspect")
    os.remove(tmp_path / "saved" / "assets" / "vocab.txt")
    os.symlink("b", tmp_path / "saved" / "assets" / "a")
    os.symlink("a", tmp_path / "saved" / "assets" / "b")
    assert_refused(tmp_path, tmp_path / "saved", "cannot be resolved", command="inspect")


# -- Data files the user gives (calibration) ------------------------------------------------

def _npz_with_header(path, header_shape, data=b""):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": header_shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buffer.getvalue() + data)


@pytest.mark.parametrize("case,what", [
    ("pickle", "Python objects"), ("huge", "declares shape"), ("truncated", "holds"),
    ("text", "not a .npy or .npz"), ("strings", "holds <U"),
])
def test_calibration_files_of_any_content_are_one_line_and_exit_2(tmp_path, case, what):
    data = tmp_path / ("d.npy" if case in ("strings",) else "d.npz")
    if case == "pickle":
        np.savez(data, x=np.array([{"a": 1}], dtype=object))
    elif case == "huge":
        _npz_with_header(data, (1 << 40, 4, 4))
    elif case == "truncated":
        _npz_with_header(data, (100, 4), b"\0" * 40)
    elif case == "text":
        data.write_text("not numbers")
    else:
        np.save(data, np.array([["a", "b", "c", "d"]]))
    small_model().save(tmp_path / "m.keras")
    result = cli("export", tmp_path / "m.keras", "--tflite", tmp_path / "q.tflite",
                 "--int8", data, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert what in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "q.tflite").exists()


# -- Custom layers, with consent -----------------------------------------------------------

CUSTOM = '''
import tf_keras

@tf_keras.saving.register_keras_serializable(package="mine")
class Doubler(tf_keras.layers.Layer):
    def __init__(self, fail=False, **kwargs):
        super().__init__(**kwargs)
        if fail:
            raise ValueError("Doubler cannot be built with fail=True")
        self.fail = fail

    def call(self, x):
        return 2.0 * x

    def get_config(self):
        return {**super().get_config(), "fail": self.fail}
'''


@pytest.fixture
def custom_model(tmp_path):
    (tmp_path / "my layers ü").mkdir()
    module = tmp_path / "my layers ü" / "mine_layers.py"
    module.write_text(CUSTOM)
    script = (f"import sys; sys.path.insert(0, {str(module.parent)!r})\n"
              "import tf_keras, keras_bn, mine_layers\n"
              "i = tf_keras.Input((4,))\n"
              "x = keras_bn.BatchNormalization()(tf_keras.layers.Dense(3)(i))\n"
              "m = tf_keras.Model(i, mine_layers.Doubler(name='double')(x))\n"
              f"m.save({str(tmp_path / 'custom model ü.keras')!r})\n"
              f"m.save({str(tmp_path / 'custom.h5')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return module


def test_custom_layers_load_with_import_only(tmp_path, custom_model):
    for name in ("custom model ü.keras", "custom.h5"):
        result = cli("inspect", tmp_path / name, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        # one sentence: the class once, the fix once
        assert result.stderr.count("Doubler") == 1 and result.stderr.count("--import") == 1
        assert "'double'" in result.stderr and len(result.stderr.strip().splitlines()) <= 2
        result = cli("fold", tmp_path / name, tmp_path / "folded.keras", "--import",
                     custom_model, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        os.remove(tmp_path / "folded.keras")


def test_a_custom_layer_that_fails_to_build_is_a_bad_file_naming_it(tmp_path, custom_model):
    members = zip_members(tmp_path / "custom model ü.keras")
    config = json.loads(members["config.json"])
    for entry in config["config"]["layers"]:
        if entry["class_name"] == "Doubler":
            entry["config"]["fail"] = True
    members["config.json"] = json.dumps(config).encode()
    write_zip(tmp_path / "broken.keras", members)
    result = cli("inspect", tmp_path / "broken.keras", "--import", custom_model, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Doubler" in result.stderr and "bug in keras-bn" not in result.stderr


def test_benign_savedmodel_folder_named_keras_loads(tmp_path):
    small_model().save(tmp_path / "folder model.keras", save_format="tf")
    assert len(load_model(tmp_path / "folder model.keras").layers) == 3
