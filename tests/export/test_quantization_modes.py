"""The quantization modes of both formats on a model trained here (scikit-learn's digits):
what each mode changes in the file (tensor types, QDQ nodes, size) and in the answers,
with real TensorFlow's converter, onnxruntime's quantizer, LiteRT and onnxruntime."""

import numpy as np
import pytest
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import keras_bn
from keras_bn import export
from keras_bn.export.tflite import tensor_types
from keras_bn.quantization import CALIBRATED, FORMAT_MODES, QuantizationOptions
from keras_bn.quantization.affine import dequantize, quantize
import digits_models


@pytest.fixture(scope="module")
def trained():
    """A digits MLP with BN, trained 5 epochs (held-out accuracy ~0.9), and its data."""
    return digits_models.trained_classifier()


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    model, calibration, held_out, labels = trained
    folder = tmp_path_factory.mktemp("modes")
    made = {}
    for mode in FORMAT_MODES["tflite"]:
        path = folder / f"{mode}.tflite"
        made[mode] = (path, export.to_tflite(model, path, quantize=_options(mode, calibration),
                                             samples=held_out, labels=labels,
                                             latency_batch=None))
    return made


def _options(mode, calibration, **more):
    return QuantizationOptions(mode, calibration=calibration if mode in CALIBRATED else None,
                               **more)


def _float_ops(content):
    """`[(op, tensor types)]` of the TFLite ops that read or write a FLOAT32 tensor, other
    than the QUANTIZE and DEQUANTIZE at the file's float inputs and outputs."""
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    found = []
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        tensors = [*op.InputsAsNumpy(), *op.OutputsAsNumpy()]
        types = {graph.Tensors(int(t)).Type() for t in tensors if t >= 0}
        if schema.TensorType.FLOAT32 in types and name not in ("QUANTIZE", "DEQUANTIZE"):
            found.append((name, types))
    return found


def _io_types(path):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return ([d["dtype"] for d in runner.get_input_details().values()],
            [d["dtype"] for d in runner.get_output_details().values()])


def test_each_mode_stores_what_it_says(files):
    types = {mode: tensor_types(path.read_bytes()) for mode, (path, _) in files.items()}
    assert types[None] == {"FLOAT32"}
    assert types["float16"] >= {"FLOAT16", "FLOAT32"} and "INT8" not in types["float16"]
    assert types["dynamic"] == {"FLOAT32", "INT8"}  # int8 weights, float activations
    assert {"INT8", "INT32"} <= types["int8"] and "FLOAT32" in types["int8"]  # float I/O
    assert "FLOAT32" not in types["int8-io"]  # nothing float is left
    assert _io_types(files["int8"][0]) == ([np.float32], [np.float32])
    assert _io_types(files["int8-io"][0]) == ([np.int8], [np.int8])
    assert {mode: result.format for mode, (_, result) in files.items()} == {
        None: "tflite", "dynamic": "tflite-dynamic", "float16": "tflite-float16",
        "int8": "tflite-int8", "int8-io": "tflite-int8-io", "int16x8": "tflite-int16x8"}


def test_int16x8_is_integer_only_with_int16_activations(files):
    """Every op of the int16x8 file computes on integers (int8 weights, int16
    activations, int32/int64 biases); float32 is left only where the file's float input
    is quantized and its output dequantized. The int8 file is integer only the same
    way, and the dynamic-range file is not (its kernels take float activations)."""
    content = files["int16x8"][0].read_bytes()
    assert {"INT8", "INT16"} <= tensor_types(content)
    assert _float_ops(content) == []
    assert _float_ops(files["int8"][0].read_bytes()) == []
    assert _float_ops(files["dynamic"][0].read_bytes()) != []
    assert _io_types(files["int16x8"][0]) == ([np.float32], [np.float32])


def test_quantized_modes_are_smaller_and_measured_not_checked(files):
    size = {mode: result.size_bytes for mode, (_, result) in files.items()}
    assert size["float16"] < 0.6 * size[None]
    for mode in ("dynamic", "int8", "int8-io", "int16x8"):
        assert size[mode] < 0.5 * size[None], (mode, size)
    for mode, (_, result) in files.items():
        if mode is None:
            assert result.tolerance is not None and result.max_error < result.tolerance
        else:  # a quantized file's error is what it is: reported, with its accuracy
            assert result.tolerance is None and result.max_error > 0, mode
    # the float model's held-out accuracy ~0.9: each mode keeps it within 3 points here
    for mode, (_, result) in files.items():
        assert abs(result.accuracy - result.keras_accuracy) <= 0.03, (mode, result.accuracy)


def test_int8_io_verification_quantizes_inputs_and_dequantizes_outputs(files, trained):
    """The int8-io file computes what the int8 file computes once its inputs are
    quantized with its own scale and zero point: verification feeding it float inputs
    cast to int8 (or reading its int8 outputs as values) would be off by O(1)."""
    _, _, held_out, _ = trained
    int8, io = files["int8"][1], files["int8-io"][1]
    assert io.max_error == pytest.approx(int8.max_error, rel=1e-6)
    assert io.accuracy == int8.accuracy
    runner = Interpreter(model_path=str(files["int8-io"][0])).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    (out, out_detail), = runner.get_output_details().items()
    got = runner(**{name: quantize(held_out, *detail["quantization"], np.int8)})[out]
    float_file = Interpreter(model_path=str(files["int8"][0])).get_signature_runner()
    (fname, _), = float_file.get_input_details().items()
    want = list(float_file(**{fname: held_out}).values())[0]
    np.testing.assert_array_equal(dequantize(got, *out_detail["quantization"]), want)


def test_quantize_rounds_halves_away_from_zero_and_saturates():
    x = np.array([-300.0, -2.5, -0.5, 0.49, 0.5, 1.5, 2.5, 300.0])
    q = quantize(x, 1.0, 0, np.int8)
    assert q.dtype == np.int8 and q.tolist() == [-128, -3, -1, 0, 1, 2, 3, 127]
    assert quantize([0.0], 0.5, -3, np.int8).tolist() == [-3]
    np.testing.assert_allclose(dequantize(quantize(x[1:-1], 0.1, 5, np.int8), 0.1, 5),
                               x[1:-1], atol=0.05 + 1e-7)


def test_unknown_or_unfit_modes_are_one_line_errors(trained, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'; use one of "
                                         r"\('dynamic', 'float16', 'int8', 'int8-io', "
                                         r"'int16x8'\)"):
        export.to_tflite(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="mode 'int8-io' needs calibration data"):
        export.to_tflite(model, tmp_path / "m.tflite", quantize="int8-io")
    with pytest.raises(ValueError, match="ONNX has no 'int8-io' mode; use one of .*, or "
                                         "export to TFLite"):
        export.to_onnx(model, tmp_path / "m.onnx",
                       quantize=QuantizationOptions("int8-io", calibration=trained[1]))
    with pytest.raises(ValueError, match="mode 'float16' takes no calibration data"):
        export.to_onnx(model, tmp_path / "m.onnx",
                       quantize=QuantizationOptions("float16", calibration=trained[1]))
    with pytest.raises(ValueError, match="ranges='mse' estimates int8 activation ranges; "
                                         "use mode 'int8' \\(not 'int16x8'\\)"):
        export.to_onnx(model, tmp_path / "m.onnx", quantize=QuantizationOptions(
            "int16x8", calibration=trained[1], ranges="mse"))
    with pytest.raises(ValueError, match="calibration data for input .* has shape "
                                         r"\(300, 10\)"):
        export.to_onnx(model, tmp_path / "m.onnx",
                       quantize=QuantizationOptions("int8", calibration=trained[1][:, :10]))
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def onnx_files(trained, tmp_path_factory):
    """The digits MLP in every ONNX mode, calibrated as the TFLite files are."""
    model, calibration, held_out, labels = trained
    folder = tmp_path_factory.mktemp("onnx_modes")
    made = {}
    for mode in FORMAT_MODES["onnx"]:
        path = folder / f"{mode}.onnx"
        made[mode] = (path, export.to_onnx(
            model, path, quantize=_options(mode, calibration, evaluation=held_out),
            samples=held_out, labels=labels, latency_batch=None))
    return made


def _onnx_model(path):
    import onnx

    return onnx.load(str(path))


def test_onnx_int8_is_qdq_with_a_scale_per_output_channel(onnx_files):
    """The int8 file is QDQ: QuantizeLinear/DequantizeLinear around the ops, int8 weights
    with one scale per output channel (a Dense layer's Gemm: per column), zero points 0
    (symmetric weights, as TFLite's), int32 biases at input scale x weight scale (as
    TFLite's FullyConnected); int8 activations."""
    from onnx import numpy_helper

    model = _onnx_model(onnx_files["int8"][0])
    kinds = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= kinds and "Add" not in kinds
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in arrays and arrays[n.input[0]].ndim == 2]
    assert len(weights) == 3  # the three Dense kernels
    for node in weights:
        kernel, scale, zero = (arrays[name] for name in node.input)
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert kernel.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert axis == 1 and scale.shape == (kernel.shape[1],) and len(set(scale)) > 1
        assert np.abs(kernel).max() == 127  # narrow range, each column's max at 127
    biases = [arrays[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in arrays and arrays[n.input[0]].ndim == 1]
    assert [b.dtype for b in biases] == [np.int32] * 3
    activations = [arrays[n.input[2]] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[2] in arrays]
    assert activations and all(z.dtype == np.int8 for z in activations)


def test_onnx_modes_store_what_they_say(onnx_files):
    from onnx import TensorProto, numpy_helper

    def zero_point_types(path):
        model = _onnx_model(path)
        arrays = {i.name: i.data_type for i in model.graph.initializer}
        return {arrays[n.input[2]] for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[2] in arrays}

    assert zero_point_types(onnx_files["int16x8"][0]) == {TensorProto.INT16}
    half = _onnx_model(onnx_files["float16"][0])
    assert {i.data_type for i in half.graph.initializer} >= {TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT]
    dynamic = {n.op_type for n in _onnx_model(onnx_files["dynamic"][0]).graph.node}
    assert "DynamicQuantizeLinear" in dynamic and "MatMulInteger" in dynamic
    assert {mode: r.format for mode, (_, r) in onnx_files.items()} == {
        None: "onnx", "dynamic": "onnx-dynamic", "float16": "onnx-float16",
        "int8": "onnx-int8", "int16x8": "onnx-int16x8"}
    # the weights' bytes (node names and attributes weigh as much again in so small a file)
    size = {mode: sum(numpy_helper.to_array(i).nbytes for i in _onnx_model(path).graph.initializer)
            for mode, (path, _) in onnx_files.items()}
    assert size["float16"] < 0.55 * size[None]
    for mode in ("dynamic", "int8", "int16x8"):
        assert size[mode] < 0.4 * size[None], (mode, size)


def test_one_calibration_gives_both_formats_the_same_answers(files, onnx_files, trained):
    """From the same calibration rows, the ONNX int8 file agrees with the float model
    within 1 point of the TFLite int8 file on 397 held-out rows (both quantize weights
    per channel in [-127, 127] and calibrate activations to the same min/max; they round
    differently inside the kernels), and int16x8 as closely; every file keeps the float
    model's held-out accuracy within 3 points."""
    model, calibration, held_out, labels = trained
    for mode in ("int8", "int16x8"):
        tflite = export.to_tflite(model, files[mode][0].parent / f"again_{mode}.tflite",
                                  quantize=_options(mode, calibration, evaluation=held_out),
                                  latency_batch=None)
        onnx = onnx_files[mode][1]
        assert tflite.evaluated_on == onnx.evaluated_on == "evaluation data (397 rows)"
        assert abs(tflite.evaluation[0].agreement - onnx.evaluation[0].agreement) <= 0.01, (
            mode, tflite.evaluation, onnx.evaluation)
    for mode, (_, result) in onnx_files.items():
        assert abs(result.accuracy - result.keras_accuracy) <= 0.03, (mode, result.accuracy)
        if mode is not None:
            assert result.tolerance is None and result.max_error > 0, mode
