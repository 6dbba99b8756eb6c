"""keras_bn.export.onnx_fake_quant.learned_ranges on ONNX graphs built the way tf2onnx
writes them, run in onnxruntime: the QuantizeLinear/DequantizeLinear pairs (with
transposes moved between them) give their tensors' ranges and leave the float graph
computing the same values; a Conv1D's bias that tf2onnx adds after a Squeeze goes back
into the Conv, whose output then has the range."""

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from keras_bn.export.onnx_fake_quant import learned_ranges
from keras_bn.quantization.fake_quant import activation_grid


def _run(model, x):
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _conv1d_graph():
    """x (N, 1, 1, 16) -> Q/DQ -> Conv (no bias) -> Squeeze -> Add (1, 4, 1) -> Relu ->
    Q -> Transpose -> DQ -> y: tf2onnx's shape of a quantized Conv1D with its bias."""
    rs = np.random.RandomState(0)
    scale, zero_point = activation_grid(-2.0, 2.0)
    relu_scale, relu_zero = activation_grid(0.0, 3.0)
    inits = [numpy_helper.from_array(rs.randn(4, 1, 1, 3).astype("float32"), "w"),
             numpy_helper.from_array(rs.randn(1, 4, 1).astype("float32"), "b"),
             numpy_helper.from_array(np.array([2], np.int64), "axes"),
             numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
             numpy_helper.from_array(np.array(relu_scale, np.float32), "rs"),
             numpy_helper.from_array(np.array(relu_zero, np.int8), "rz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[0, 1, 0, 1]),
             helper.make_node("Squeeze", ["c", "axes"], ["sq"]),
             helper.make_node("Add", ["sq", "b"], ["biased"]),
             helper.make_node("Relu", ["biased"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "rs", "rz"], ["rq"]),
             helper.make_node("Transpose", ["rq"], ["rt"], perm=[0, 2, 1]),
             helper.make_node("DequantizeLinear", ["rt", "rs", "rz"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        [None, 1, 1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pairs_give_ranges_and_the_bias_goes_into_the_conv():
    model = _conv1d_graph()
    x = np.random.RandomState(1).uniform(-2, 2, (3, 1, 1, 16)).astype("float32")
    # The float graph left: the same values as the quantized one without its rounding.
    scale, zero_point = activation_grid(-2.0, 2.0)
    rounded = (np.clip(np.round(x / scale) + zero_point, -128, 127) - zero_point) * scale
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    ranges = learned_ranges(stripped)
    onnx.checker.check_model(stripped)
    types = [n.op_type for n in stripped.graph.node]
    assert "QuantizeLinear" not in types and "Add" not in types, types
    conv = next(n for n in stripped.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3  # the bias, back in the Conv
    for tensor in ("x", "c", "sq", "r", "rt"):  # the Conv's output has a range now
        assert tensor in ranges, (tensor, ranges)
    got_scale, got_zero = activation_grid(*ranges["r"])
    assert got_zero == -128 and abs(got_scale - 3.0 / 255) < 1e-8  # float32 scale
    want = _run(_without_rounding(model), rounded)
    np.testing.assert_allclose(_run(stripped, rounded), want, rtol=1e-5, atol=1e-5)


def _without_rounding(model):
    """The graph with its pairs as Identity (what it computes in float)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            del node.input[1:]
            node.op_type = "Identity"
    return copy
