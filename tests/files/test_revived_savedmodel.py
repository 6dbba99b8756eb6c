"""SavedModels whose custom classes are not importable load without --unsafe: tf-keras
revives those layers from their saved graphs (whose ops `saved_model.check_graph` allows
op by op), no Python of the file runs. `inspect` lists them, `fold` keeps the BNs inside
them and folds the others, and the model exports to ONNX and TFLite.

The file is made the way a published audio model ships: a tf-keras SavedModel whose
signal-processing, padding and reshaping layers live in a package the user does not
have (written by a child process that has it; this process never sees the module).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_bn
from keras_bn.files import load_model
from keras_bn.layers.find import revived_layers

LAYERS = '''
import numpy as np
import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable("audio")
class PadTime(tf_keras.layers.Layer):
    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        return tf.pad(x, [[0, 0], [self.pad, self.pad]], mode="REFLECT")

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


@tf_keras.utils.register_keras_serializable("audio")
class LogFrames(tf_keras.layers.Layer):
    """Framed signal through a fixed cosine basis, log-magnitude (real ops only)."""

    def call(self, x):
        frames = tf.signal.frame(x, 64, 32)
        basis = np.cos(np.pi / 64 * np.outer(np.arange(64) + 0.5, np.arange(16)))
        return tf.math.log(tf.abs(tf.tensordot(frames, basis.astype("float32"), 1)) + 1e-3)


@tf_keras.utils.register_keras_serializable("audio")
class ToImage(tf_keras.layers.Layer):
    def call(self, x):
        return tf.expand_dims(x, -1)


@tf_keras.utils.register_keras_serializable("audio")
class ConvBlock(tf_keras.layers.Layer):
    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = tf_keras.layers.Conv2D(filters, 3, padding="same")
        self.bn = tf_keras.layers.BatchNormalization()

    def call(self, x, training=None):
        return tf.nn.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
'''

SAVE = '''
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, tf_keras
from audio_layers import ConvBlock, LogFrames, PadTime, ToImage
tf_keras.utils.set_random_seed(0)
L = tf_keras.layers
inputs = tf_keras.Input((1000,))
x = ToImage()(LogFrames()(PadTime(16)(inputs)))
x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x)))
x = ConvBlock(8, name="block")(x)
x = L.GlobalAveragePooling2D()(x)
x = L.BatchNormalization()(L.Dense(16)(x))
model = tf_keras.Model(inputs, L.Dense(4)(x))
rs = np.random.RandomState(0)
for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
        layer.moving_mean.assign(rs.randn(*layer.moving_mean.shape).astype("float32") * 0.1)
        layer.moving_variance.assign(rs.uniform(0.5, 2, layer.moving_variance.shape)
                                     .astype("float32"))
model.save(sys.argv[2], save_format="tf")
x = rs.randn(3, 1000).astype("float32")
np.save(sys.argv[3], x)
np.save(sys.argv[4], model.predict(x, verbose=0))
'''

REVIVED = [("pad_time", "audio>PadTime"), ("log_frames", "audio>LogFrames"),
           ("to_image", "audio>ToImage"), ("block", "audio>ConvBlock")]


def cli(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_bn.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    """`(SavedModel folder, inputs, the outputs its own classes computed)`."""
    root = tmp_path_factory.mktemp("revived")
    (root / "package").mkdir()
    (root / "package" / "audio_layers.py").write_text(LAYERS)
    paths = [root / "package", root / "audio model", root / "x.npy", root / "y.npy"]
    subprocess.run([sys.executable, "-c", SAVE, *map(str, paths)], check=True,
                   capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "audio_layers" not in sys.modules
    return paths[1], np.load(paths[2]), np.load(paths[3])


def test_loads_without_unsafe_as_revived_layers_that_compute_the_same(audio_model):
    path, x, y = audio_model
    model = load_model(path)
    assert revived_layers(model) == REVIVED
    assert "audio_layers" not in sys.modules  # nothing imported the file's package
    np.testing.assert_allclose(model.predict(x, verbose=0), y, rtol=1e-4, atol=1e-5)


def test_fold_keeps_the_bn_inside_a_revived_layer_and_folds_the_others(audio_model):
    path, x, y = audio_model
    model = load_model(path)
    folded, plan = keras_bn.fold(model, return_plan=True, samples=x)
    (kept,) = plan.kept
    assert len(plan.folded) == 2 and kept.bn.startswith("block/"), plan.kept
    assert "revived from a SavedModel without its class" in kept.reason
    np.testing.assert_allclose(folded.predict(x, verbose=0), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_exports_and_the_file_computes_what_the_model_does(audio_model, tmp_path, fmt):
    from keras_bn import export

    path, x, _ = audio_model
    model = load_model(path)
    write = export.to_onnx if fmt == "onnx" else export.to_tflite
    result = write(model, tmp_path / f"audio.{fmt}", samples=x, latency_batch=None)
    assert len(result.fold_plan.folded) == 2 and result.max_error <= result.tolerance


def test_command_line_inspects_and_folds_into_a_savedmodel_folder(audio_model, tmp_path):
    path, _, _ = audio_model
    result = cli("inspect", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Revived from a SavedModel without their classes" in result.stdout
    assert "block (audio>ConvBlock)" in result.stdout
    # a .keras file of it would need the classes: refused before folding, one line
    result = cli("fold", path, tmp_path / "folded.keras", cwd=tmp_path)
    assert result.returncode == 2 and "Give a folder path" in result.stderr, result.stderr
    assert not (tmp_path / "folded.keras").exists()
    result = cli("fold", path, tmp_path / "folded", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = load_model(tmp_path / "folded")  # a SavedModel that revives the same way
    assert revived_layers(again) == REVIVED
    assert sum(1 for layer in again.layers if "batch_normalization" in layer.name) == 0
