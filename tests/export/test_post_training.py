"""BN-aware post-training quantization (keras_bn/quantization/post_training.py,
equalization.py, bias_correction.py, kernels.py) on a MobileNet-style net trained here,
and the int8 files TFLite and onnxruntime write from it (LiteRT and onnxruntime read
them)."""

import numpy as np
import pytest
import tf_keras

from keras_bn.errors import InputError
from keras_bn.export import QuantizationOptions, to_onnx, to_tflite
from keras_bn.quantization import bias_correction, equalization, kernels
from keras_bn.quantization.activations import channel_statistics
from keras_bn.verification import predict
from keras_bn.folding.kinds import kind_of
from keras_bn.folding.rewrite import weight_arrays, with_weights
from helpers import keras_bn_cli

L = tf_keras.layers


def _every_kind():
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2)(x)
    x = L.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, L.Dense(5)(x))


def _file_kernels(path):
    """The per-channel int8 weight tensors of a TFLite file, dequantized, in Keras's
    layouts (conv `[h, w, in, out]`, depthwise `[h, w, channels, 1]`, dense `[in, out]`)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    found = []
    for t in interpreter.get_tensor_details():
        q = t["quantization_parameters"]
        if t["dtype"] != np.int8 or len(q["scales"]) < 2:
            continue
        values = interpreter.get_tensor(t["index"]).astype(np.float64)
        shape = [1] * values.ndim
        shape[q["quantized_dimension"]] = -1
        values = values * q["scales"].reshape(shape)
        if values.ndim == 2:
            found.append(values.T)
        elif values.shape[0] == 1:  # depthwise [1, h, w, channels]
            found.append(values[0][..., None])
        else:
            found.append(values.transpose(1, 2, 3, 0))
    return found


def test_fake_quantize_is_what_the_int8_file_stores(tmp_path):
    """`kernels.quantized` (per output channel, narrow range, halves away from zero) is
    the converter's int8 weights of every kind, to float64 rounding of the scales."""
    model = _every_kind()
    rows = np.random.RandomState(0).rand(64, 12, 12, 3).astype("float32")
    to_tflite(model, tmp_path / "m.tflite",
              quantize=QuantizationOptions("int8", calibration=rows, bias_correction=False))
    stored = _file_kernels(tmp_path / "m.tflite")
    ours = []
    for layer in model.layers:
        kind = kind_of(layer)
        if kind is None:
            continue
        weights = weight_arrays(layer)
        q = kernels.quantized(kind.name, weights)
        for name in kernels.quantized_axes(kind.name, weights):
            kernel = q[name]
            ours.append(kernel.reshape(*kernel.shape[:-2], -1, 1)
                        if name == "depthwise_kernel" and kernel.ndim == 4 else kernel)
    assert len(stored) == len(ours) == 5
    for kernel in ours:
        matches = [s for s in stored if s.shape == kernel.shape
                   and np.allclose(s, kernel, rtol=0, atol=1e-6 * np.abs(kernel).max())]
        assert matches, f"no int8 tensor of the file holds {kernel.shape} as quantized"
    # and the rounding matters: the float weights are not what the file stores
    assert not np.allclose(stored[-1], weight_arrays(model.layers[1])["kernel"], atol=1e-6)


def _layer_mean_errors(model, reference, rows, names):
    """Per layer: the largest |mean over rows and positions| of `model`'s layer with its
    kernels int8-rounded, minus `reference`'s float layer, on the float model's inputs."""
    rounded = with_weights(model, {n: kernels.quantized(kind_of(model.get_layer(n)).name,
                                                        weight_arrays(model.get_layer(n)))
                                   for n in names})
    errors = []
    for name in names:
        x = tf_keras.Model(reference.inputs, reference.get_layer(name).input)(rows)
        delta = (rounded.get_layer(name)(x).numpy().astype(np.float64)
                 - reference.get_layer(name)(x).numpy())
        errors.append(np.abs(delta.reshape(-1, delta.shape[-1]).mean(axis=0)).max())
    return np.array(errors)


def test_bias_correction_removes_the_mean_shift_of_int8_weights(mobilenet):
    """Each corrected layer's int8-rounded outputs have the float layer's mean on the
    calibration data ('same' padding at 16x16 and 8x8 included): the shift drops by more
    than 1000x, to float32 rounding; the float model itself changes only by it."""
    folded, calibration, _ = mobilenet
    corrected, record = bias_correction.correct_biases(folded, [calibration])
    names = record.changed
    assert len(names) == 10 and not record.skipped  # 5 conv, 4 depthwise, 1 dense
    before = _layer_mean_errors(folded, folded, calibration, names)
    after = _layer_mean_errors(corrected, folded, calibration, names)
    assert before.min() > 1e-3  # the rounding shifts every layer's mean
    assert np.all(after < before / 1000), (before, after)
    assert folded.get_layer(names[0]).get_weights()[1] is not None  # the input model
    assert not np.array_equal(folded.get_layer(names[0]).get_weights()[1],
                              corrected.get_layer(names[0]).get_weights()[1])


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_bias_correction_lowers_the_int8_files_mean_error(mobilenet, tmp_path, fmt):
    """On held-out rows, the int8 file's mean output error (its bias against the float
    model) is smaller with bias correction (the default) than without, in both formats:
    the correction is made on the Keras model, for the int8 weights both write."""
    folded, calibration, held_out = mobilenet
    export_to = {"tflite": to_tflite, "onnx": to_onnx}[fmt]
    means = {}
    for on in (False, True):
        path = tmp_path / f"m_{on}.{fmt}"
        result = export_to(folded, path, quantize=QuantizationOptions(
            "int8", calibration=calibration, evaluation=held_out, bias_correction=on))
        assert [t.name for t in result.post_training] == (["bias_correction"] if on else [])
        got = _file_outputs(fmt, path, held_out)
        means[on] = np.abs((got - predict(folded, [held_out])[0]).mean(axis=0)).mean()
    assert means[True] < means[False], means


def _file_outputs(fmt, path, rows):
    """The first output of the file at `path` on `rows`, run in its runtime here."""
    from keras_bn.export.isolated import IsolatedRuntime
    from keras_bn.export.tflite import _fed, _read

    with IsolatedRuntime(fmt, str(path)) as runtime:
        (name, dtype), = runtime.inputs
        output = runtime.outputs[0]
        if fmt == "onnx":
            return np.concatenate([runtime({name: rows[i:i + 50]})[output]
                                   for i in range(0, len(rows), 50)])
        return np.concatenate([_read(runtime({name: _fed(rows[i:i + 50], dtype,
                                                         runtime.quantization.get(name))})
                                     [output], runtime.quantization.get(output))
                               for i in range(0, len(rows), 50)])


def test_equalization_is_exact_in_float_and_evens_the_channel_ranges(mobilenet):
    """Every conv -> ReLU -> next-layer pair is equalized: the float model computes the
    same (to float32 rounding of the rescaled weights), and the spread of the activation
    channels' ranges between the layers shrinks."""
    folded, calibration, held_out = mobilenet
    equalized, record = equalization.equalize(folded, [calibration])
    assert len(record.changed) == 9, record  # conv and every depthwise/1x1 before Dense
    before, after = predict(folded, [held_out])[0], predict(equalized, [held_out])[0]
    assert np.max(np.abs(before - after)) < 1e-5 * np.max(np.abs(before))
    seconds = [pair.split(" -> ")[1] for pair in record.changed]

    def spread(model):
        stats = channel_statistics(model, [model.get_layer(n).input for n in seconds],
                                   [calibration])
        return np.array([equalization._spread(peak) for _, peak in stats])

    assert np.all(spread(equalized) <= spread(folded) * (1 + 1e-6))
    assert np.any(spread(equalized) < spread(folded) / 2)


def test_clipping_activations_stop_equalization():
    """ReLU6 is not positive-homogeneous (relu6(s x) != s relu6(x)): the pair is left
    alone and the record says why; a plain ReLU pair is equalized."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = L.ReLU(max_value=6.0)(L.Conv2D(4, 3, name="clipped")(inputs))
    x = L.ReLU()(L.Conv2D(4, 1, name="plain")(x))
    model = tf_keras.Model(inputs, L.Conv2D(2, 1, name="last")(x))
    rows = np.random.RandomState(0).rand(32, 8, 8, 3).astype("float32")
    _, record = equalization.equalize(model, [rows])
    assert record.changed == ["plain -> last"]
    assert "not positive-homogeneous" in record.skipped["clipped"]


def test_techniques_are_for_int8_and_recorded(mobilenet, tmp_path):
    """Bias correction runs by default in int8, and not in the other modes; asking for a
    technique outside int8 is the user's error, before anything is written."""
    folded, calibration, _ = mobilenet
    result = to_tflite(folded, tmp_path / "d.tflite", quantize="dynamic")
    assert result.post_training == []
    result = to_tflite(folded, tmp_path / "b.tflite", quantize=QuantizationOptions(
        "int8-io", calibration=calibration, equalization=True))
    assert [t.name for t in result.post_training] == ["equalization", "bias_correction"]
    assert "9 changed" in result.post_training[0].summary()
    with pytest.raises(InputError, match="equalization work on calibration data; use a "
                                         "calibrated mode"):
        to_tflite(folded, tmp_path / "f.tflite",
                  quantize=QuantizationOptions("float16", equalization=True))
    assert not (tmp_path / "f.tflite").exists()


def test_cli_technique_flags(mobilenet, tmp_path):
    """`--equalize` and `--ranges mse` print what they did; `--no-bias-correction` leaves
    the biases; any of them outside int8 is a usage error (exit 2) and writes nothing."""
    folded, calibration, _ = mobilenet
    folded.save(tmp_path / "m.keras")
    np.save(tmp_path / "cal.npy", calibration[:100])
    ok = keras_bn_cli("export", tmp_path / "m.keras", "--tflite", tmp_path / "m.tflite",
                      "--int8", tmp_path / "cal.npy", "--equalize", "--ranges", "mse")
    assert ok.returncode == 0, ok.stderr
    assert "tflite-int8 ranges (mse):" in ok.stdout
    assert "tflite-int8 equalization: 9 changed" in ok.stdout
    assert "tflite-int8 bias_correction: 10 changed" in ok.stdout
    off = keras_bn_cli("export", tmp_path / "m.keras", "--tflite", tmp_path / "n.tflite",
                       "--int8", tmp_path / "cal.npy", "--no-bias-correction")
    assert off.returncode == 0 and "bias_correction" not in off.stdout, off.stderr
    bad = keras_bn_cli("export", tmp_path / "m.keras", "--tflite", tmp_path / "f.tflite",
                       "--float16", "--equalize")
    assert bad.returncode == 2 and "--equalize is for --quantize int8" in bad.stderr
    assert not (tmp_path / "f.tflite").exists()


def _shared_with_another_model(keras):
    """A model whose conv, BN and depthwise layers were first called in another model
    built on another Input (a backbone's layers reused in a second model): their
    `layer.input` is that first model's tensor, not connected to this model's inputs."""
    layers = [keras.layers.Conv2D(8, 3, padding="same"), keras.layers.BatchNormalization(),
              keras.layers.ReLU(), keras.layers.DepthwiseConv2D(3, padding="same"),
              keras.layers.BatchNormalization(), keras.layers.Conv2D(8, 1, name="a"),
              keras.layers.ReLU(), keras.layers.Conv2D(8, 1, name="b")]

    def stack(x):
        for layer in layers:
            x = layer(x)
        return x

    first = keras.Input((8, 8, 3))
    keras.Model(first, stack(first))
    second = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(stack(second))
    return keras.Model(second, keras.layers.Dense(4)(x))


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_techniques_measure_layers_shared_with_another_model(flavour, fmt, tmp_path):
    """Equalization and bias correction measure each layer's call in the exported model,
    folded or not (fold=False: the model's own layers, also called elsewhere; each
    technique first, as either may be)."""
    import keras

    model = _shared_with_another_model(tf_keras if flavour == "tf_keras" else keras)
    rows = np.random.RandomState(0).rand(64, 8, 8, 3).astype("float32")
    export_to = {"tflite": to_tflite, "onnx": to_onnx}[fmt]
    for fold in (False, True):
        for equalization in (False, True):
            options = QuantizationOptions("int8", calibration=rows, equalization=equalization)
            result = export_to(model, tmp_path / f"{fold}{equalization}.{fmt}",
                               quantize=options, fold=fold, latency_batch=None)
            done = {record.name: record for record in result.post_training}
            assert done["bias_correction"].changed, done
            assert not equalization or "a -> b" in done["equalization"].changed, done
