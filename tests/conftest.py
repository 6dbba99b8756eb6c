import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own CPU kernels run convolutions in NHWC only; its oneDNN ones take NCHW
# too (the channels_first tests need them). TensorFlow turns oneDNN on by itself only on
# CPUs with AVX-512; this asks for it on any x86 CPU (AVX2 ones included), as CI's.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    np.random.seed(0)
    tf.random.set_seed(0)
    yield
    import tf_keras
    tf_keras.backend.clear_session()


@pytest.fixture(params=["tf_keras", "keras3"])
def flavour(request):
    """`(keras, keras_bn layers)` of each flavour: `tf_keras` and `keras_bn`, or Keras 3's
    `keras` (the TensorFlow backend in this process) and `keras_bn.keras3`; a test that
    takes it runs once per flavour."""
    import importlib

    if request.param == "tf_keras":
        import keras_bn

        return importlib.import_module("tf_keras"), keras_bn
    from keras_bn import keras3

    return importlib.import_module("keras"), keras3


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as flat 64-feature rows: `(x_train, y_train, x_test, y_test)`."""
    from keras_bn.cli.demo import load_digits

    x_train, y_train, x_test, y_test = load_digits()
    flat = lambda x: x.reshape(len(x), -1)
    return flat(x_train), y_train, flat(x_test), y_test

