"""Names and messages from a model file reach the terminal as text (CWE-150): the
escaping itself, and the command line on a real file whose layer names hold terminal
control sequences."""

import pytest

from keras_bn.tools.terminal import LAYOUT, escaped
from helpers import keras_bn_cli

#: Set the window title, clear the screen, ring the bell, a C1 CSI, a right-to-left
#: override: what a hostile layer name would do to a terminal that prints it raw.
HOSTILE = "bn\x1b]0;pwned\x07\x1b[2J\x9b31m\u202egnp.exe"


def test_escaped_writes_controls_as_visible_escapes():
    assert escaped(HOSTILE) == "bn\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202egnp.exe"
    assert escaped("conv2d_1 (after)") == "conv2d_1 (after)"  # plain names unchanged
    assert escaped("é ü 中文 \xa0") == "é ü 中文 \xa0"  # printable text stays itself
    assert escaped("a\nb\r\tc") == "a\\x0ab\\x0d\\x09c"  # one line, whatever it holds
    assert escaped("a\nb\r\tc\b", keep=LAYOUT) == "a\nb\r\tc\b"


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory):
    """A Keras 3 `.keras` file whose Conv2D and BN names hold `HOSTILE`'s sequences
    (Keras 3 takes any name without "/"; tf-keras's name scopes refuse them, but its
    files are edited as easily)."""
    import keras

    import keras_bn.keras3

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv\x1b[5m")(inputs)
    x = keras_bn.keras3.BatchNormalization(name=HOSTILE)(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path_factory.mktemp("hostile") / "m.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("command", ["inspect", "fold"])
def test_the_cli_prints_hostile_names_escaped(hostile_file, tmp_path, command):
    extra = [tmp_path / "folded.keras"] if command == "fold" else []
    result = keras_bn_cli(command, hostile_file, *extra)
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert not any(c in stream for c in "\x1b\x07\x9b\u202e"), repr(stream)
    assert "bn\\x1b]0;pwned\\x07\\x1b[2J" in result.stdout
    assert "conv\\x1b[5m" in result.stdout


def test_an_error_message_holding_controls_is_one_escaped_line(tmp_path):
    result = keras_bn_cli("inspect", tmp_path / "missing\x1b[2J\nsecond line.keras")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-bn")]
    assert len(lines) == 1 and "missing\\x1b[2J\\x0asecond line.keras" in lines[0], lines
    assert "\x1b" not in result.stderr
