"""Safe loading: decided on what tf-keras will load, never on the file's name or text.

Each hostile file holds code that leaves a marker file behind if it ever runs; a test
passes only if the CLI refuses the file *and* the marker is absent.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import h5py
import pytest
import tf_keras

import keras_bn
from keras_bn.errors import InputError, UnsafeModelError
from keras_bn.files import load_model, model_format, refusals

L = tf_keras.layers


def cli(*args, cwd, pythonpath=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def save_lambda_model(marker, path, **save):
    """Saves a model whose Lambda writes `marker` when it runs (as it does on load)."""
    where = str(marker)
    inputs = tf_keras.Input((4,))
    x = L.Dense(3)(inputs)
    x = L.Lambda(lambda t: (open(where, "w").write("ran"), t)[1], name="payload")(x)
    tf_keras.Model(inputs, keras_bn.BatchNormalization()(x)).save(path, **save)
    os.remove(where)  # building and saving the model ran it, here


def harmless_model():
    inputs = tf_keras.Input((4,))
    return tf_keras.Model(inputs, keras_bn.BatchNormalization()(L.Dense(3)(inputs)))


def assert_refused(result, marker, what):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert what in result.stderr and "--unsafe" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(marker), "the file's code ran"


def test_hdf5_with_an_appended_keras_zip_is_read_as_hdf5(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "model.h5"
    save_lambda_model(marker, path)
    harmless_model().save(tmp_path / "harmless.keras")
    with open(path, "ab") as f:  # a valid zip at the end: zipfile reads it, h5py ignores it
        f.write((tmp_path / "harmless.keras").read_bytes())
    assert zipfile.is_zipfile(path) and h5py.is_hdf5(path) and model_format(path) == "h5"
    assert_refused(cli("inspect", path, cwd=tmp_path), marker, "'payload'")


def test_keras_name_on_an_hdf5_file_is_read_as_hdf5(tmp_path):
    marker = tmp_path / "ran.txt"
    save_lambda_model(marker, tmp_path / "model.h5")
    os.rename(tmp_path / "model.h5", tmp_path / "model.keras")
    assert model_format(tmp_path / "model.keras") == "h5"
    assert_refused(cli("inspect", tmp_path / "model.keras", cwd=tmp_path), marker, "'payload'")


def test_savedmodel_with_compact_metadata_json(tmp_path):
    from tf_keras.protobuf import saved_metadata_pb2

    marker = tmp_path / "ran.txt"
    path = tmp_path / "saved"
    save_lambda_model(marker, path, save_format="tf")
    meta = saved_metadata_pb2.SavedMetadata()
    meta.ParseFromString((path / "keras_metadata.pb").read_bytes())
    for node in meta.nodes:  # the same JSON, written without spaces
        node.metadata = json.dumps(json.loads(node.metadata), separators=(",", ":"))
    (path / "keras_metadata.pb").write_bytes(meta.SerializeToString())
    assert '"class_name": "Lambda"' not in (path / "keras_metadata.pb").read_text("latin-1")
    assert_refused(cli("inspect", path, cwd=tmp_path), marker, "'payload'")


def test_module_named_in_the_config_is_not_imported(tmp_path):
    """tf-keras imports any `module` a config names: importing runs that module's code."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "side_effect.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nfrom tf_keras import Model as MyModel\n")
    harmless_model().save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    # tf-keras imports the model class's module to find the class (layers it looks up
    # by name), then builds the model as usual.
    config.update(module="side_effect", class_name="MyModel", registered_name=None)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "hostile.keras", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    result = cli("fold", tmp_path / "hostile.keras", tmp_path / "out.keras", cwd=tmp_path,
                 pythonpath=tmp_path / "site")
    assert_refused(result, marker, "would import 'side_effect'")
    assert not (tmp_path / "out.keras").exists()


def _config(model):
    return json.loads(model.to_json())


def test_references_found_in_nested_models_and_wrappers():
    inner_in = tf_keras.Input((5, 4))
    inner = tf_keras.Model(inner_in, L.TimeDistributed(L.Lambda(lambda t: t, name="deep"))(
        inner_in), name="inner")
    outer_in = tf_keras.Input((5, 4))
    x = inner(outer_in)
    x = tf_keras.layers.Dense(2)(x) + 1.0
    refs = refusals(_config(tf_keras.Model(outer_in, x)))
    assert [ref.layer for ref in refs] == ["deep"]


@pytest.mark.parametrize("node,what", [
    ({"class_name": "__lambda__", "config": {"code": "..."}}, "Python bytecode"),
    ({"module": "builtins", "class_name": "function", "config": "exec"}, "builtins.exec"),
    ({"module": "__main__", "class_name": "Custom", "config": {"name": "c"}},
     "would import '__main__'"),
    ({"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}},
     "tf.io.write_file"),
    ({"class_name": "TFOpLambda", "config": {"name": "p", "function": "compat.v1.py_func"}},
     "tf.compat.v1.py_func"),
])
def test_each_kind_of_code_reference(node, what):
    (found,) = refusals({"layers": [node]})
    assert what in found[1]


def test_real_architectures_hold_no_refusals():
    """Keras's own classes, functions and TF ops (ConvNeXt: a private LayerScale class,
    TFOpLambda math) and keras_bn layers must load without --unsafe."""
    convnext = tf_keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3))
    assert refusals(json.loads(convnext.to_json())) == []
    inputs = tf_keras.Input((8, 8, 3))
    x = keras_bn.BatchRenormalization()(L.Conv2D(4, 3, activation="gelu")(inputs))
    x = L.Dense(2, activation=tf_keras.activations.swish)(L.Flatten()(x * 2.0))
    assert refusals(_config(tf_keras.Model(inputs, x))) == []


def test_keras3_application_layers_load_without_unsafe(tmp_path):
    """Keras 3's InceptionResNetV2 names its CustomScaleLayer by private module and class
    (building all 40 keras.applications constructors found it the only refusal)."""
    import keras
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = keras.Input((4, 4, 2))
    y = CustomScaleLayer(0.17)([inputs, keras.layers.Conv2D(2, 1)(inputs)])
    keras.Model(inputs, y).save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert type(loaded.layers[-1]) is CustomScaleLayer


@pytest.mark.heavy
def test_keras_hub_task_files_load_with_import_keras_hub(tmp_path):
    """A saved keras-hub classifier task (its classes registered by keras_hub, named by
    module in the file): refused in one line that names the package and the flag, then
    folded and exported by the CLI with --import keras_hub, without --unsafe."""
    from benchmarks import hub_models

    hub_models.resnet_classifier().save(tmp_path / "classifier.keras")
    refused = cli("inspect", "classifier.keras", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert "'keras_hub'" in message and message.count("--import keras_hub") == 1, message
    assert "'ResNetImageClassifier'" in message and "--unsafe" not in message, message
    folded = cli("fold", "classifier.keras", "folded.keras", "--import", "keras_hub",
                 cwd=tmp_path)
    assert folded.returncode == 0, folded.stderr[-2000:]
    exported = cli("export", "folded.keras", "--tflite", "c.tflite", "--import",
                   "keras_hub", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["c.tflite", "classifier.keras", "folded.keras"]


@pytest.mark.parametrize("name,save", [("m.keras", {}), ("m.h5", {}),
                                       ("saved", {"save_format": "tf"})])
def test_every_format_loads_from_its_content(tmp_path, name, save):
    harmless_model().save(tmp_path / name, **save)
    loaded = load_model(tmp_path / name)
    assert isinstance(loaded.layers[-1], keras_bn.BatchNormalization)
    assert sorted(os.listdir(tmp_path)) == [name]  # the private copy is gone


def test_errors_name_the_file(tmp_path):
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(InputError, match="notes.keras: not a tf-keras model file"):
        load_model(tmp_path / "notes.keras")
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        load_model(tmp_path / "nowhere.h5")
    harmless_model().save_weights(tmp_path / "weights.h5")
    with pytest.raises(InputError, match="weights.h5: an HDF5 file without a model"):
        load_model(tmp_path / "weights.h5")
    save_lambda_model(tmp_path / "ran.txt", tmp_path / "l.keras")
    with pytest.raises(UnsafeModelError, match=r"l\.keras: refusing .*'payload'"):
        load_model(tmp_path / "l.keras")
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("imports", [
    "import sys\nimport keras_bn\nassert 'tensorflow' not in sys.modules\nimport tf_keras\n",
    "import tf_keras\nimport keras_bn\n"], ids=["keras_bn first", "tf_keras first"])
def test_import_keras_bn_registers_the_layers_for_tf_keras_loaders(tmp_path, imports):
    """`import keras_bn` alone, before or after tf-keras, lets tf-keras's own load_model
    read .h5 and SavedModel files holding keras_bn layers; `import keras_bn` by itself
    imports no TensorFlow (the names bind on first use)."""
    harmless_model().save(tmp_path / "m.h5")
    harmless_model().save(tmp_path / "saved", save_format="tf")
    script = (f"{imports}"
              "for path in ('m.h5', 'saved'):\n"
              "    layer = tf_keras.models.load_model(path).layers[-1]\n"
              "    assert type(layer).__module__.startswith('keras_bn'), type(layer)\n"
              "assert callable(keras_bn.freeze) and callable(keras_bn.summary)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_hostile_configurations_are_input_errors(tmp_path):
    """Deeply nested JSON and odd values in the places the walk looks at: one-line
    errors or refusals, never a crash."""
    harmless_model().save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        files = {n: z.read(n) for n in z.namelist()}
    depth = 2 * sys.getrecursionlimit()
    files["config.json"] = ("[" * depth + "]" * depth).encode()
    with zipfile.ZipFile(tmp_path / "deep.keras", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(InputError, match="deep.keras"):
        load_model(tmp_path / "deep.keras")
    (found,) = refusals({"class_name": "TFOpLambda", "config": "math.add"})
    assert "without a function name" in found[1]
