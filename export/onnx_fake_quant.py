"""A quantization-aware model's learned int8 ranges, from its TensorFlow graph to the ONNX
quantizer.

The model the exporters convert holds each learned range as TensorFlow's
`FakeQuantWithMinMaxArgs` (`keras_bn.quantization.inference_model`). tf2onnx turns it,
through `fake_quant` here, into a QuantizeLinear -> DequantizeLinear pair on exactly that
int8 grid (its own handler writes uint8 and rounds a zero point half to even, which moves
symmetric ranges half a step). `learned_ranges` then takes the pairs out of the float file
and returns each tensor's range, which onnxruntime's quantizer writes as it writes a
calibrated range (`onnx_quantization`): the file's weights, biases and fused activations
come out as in a post-training int8 file, its activation grids are the trained ones.
"""

from typing import Any

import numpy as np

from keras_bn.quantization import fake_quant as simulated


def fake_quant(ctx, node, name, args):
    """tf2onnx handler of `FakeQuantWithMinMaxArgs`: QuantizeLinear -> DequantizeLinear,
    int8, with the scale and zero point of `keras_bn.quantization.fake_quant.
    activation_grid` over the op's [min, max]."""
    del name, args
    low, high = node.get_attr("min").f, node.get_attr("max").f
    bits = node.get_attr("num_bits").i
    if bits != 8 or node.get_attr("narrow_range").i:
        raise ValueError(f"FakeQuantWithMinMaxArgs '{node.name}': num_bits={bits}, "
                         "narrow_range; keras_bn writes 8-bit, full-range activations only")
    scale, zero_point = simulated.activation_grid(low, high)
    shape, dtype = ctx.get_shape(node.input[0]), ctx.get_dtype(node.input[0])
    s = ctx.make_const(f"{node.name}_scale", np.array(scale, np.float32))
    z = ctx.make_const(f"{node.name}_zero_point", np.array(zero_point, np.int8))
    from onnx import TensorProto

    q = ctx.make_node("QuantizeLinear", [node.input[0], s.output[0], z.output[0]],
                      op_name_scope=node.name, shapes=[shape], dtypes=[TensorProto.INT8])
    dq = ctx.make_node("DequantizeLinear", [q.output[0], s.output[0], z.output[0]],
                       op_name_scope=node.name, shapes=[shape], dtypes=[dtype])
    ctx.replace_all_inputs(node.output[0], dq.output[0])
    ctx.remove_node(node.name)


def learned_ranges(proto: Any) -> dict:
    """`{tensor name: (low, high)}`: the range of every QuantizeLinear -> DequantizeLinear
    pair `fake_quant` wrote into the ONNX `proto` (tf2onnx may have moved transposes and
    squeezes in between), each pair taken out in place: its readers read the float
    tensor again, a graph output it made is an Identity. The range is the grid's own
    bounds (`(-128 - zero_point) * scale`, `(127 - zero_point) * scale`), which gives
    the quantizer back the same grid; the tensors around same-grid ops and a Relu's
    input get it too (`_propagate`)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    readers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node)

    def only_reader(tensor):
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 else None

    ranges: dict[str, tuple] = {}
    dropped: set[int] = set()  # ids of the nodes to drop
    renamed: dict[str, str] = {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        chain, reader = [], only_reader(q.output[0])
        while reader is not None and reader.op_type in MOVED:
            chain.append(reader)
            reader = only_reader(reader.output[0])
        if (reader is None or reader.op_type != "DequantizeLinear"
                or list(reader.input[1:]) != list(q.input[1:])):
            continue
        scale = float(constants[q.input[1]])
        zero_point = int(constants[q.input[2]])
        ranges[q.input[0]] = ((-128 - zero_point) * scale, (127 - zero_point) * scale)
        dropped.update((id(q), id(reader)))
        renamed[q.output[0]] = q.input[0]
        renamed[reader.output[0]] = chain[-1].output[0] if chain else q.input[0]
    kept = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        for i, value in enumerate(node.input):
            node.input[i] = _resolve(renamed, value)
        kept.append(node)
    for output in graph.output:  # the file's outputs keep their names
        if output.name in renamed:
            kept.append(helper.make_node("Identity", [_resolve(renamed, output.name)],
                                         [output.name], name=f"{output.name}_learned"))
    del graph.node[:]
    graph.node.extend(kept)
    _bias_into_conv(graph)
    _propagate(graph, ranges)
    return ranges


def _bias_into_conv(graph):
    """Moves a bias that tf2onnx adds after a Conv and a Squeeze (its form of a Conv1D: a
    2-D Conv between an Unsqueeze and a Squeeze, then an Add of a `(1, C, 1)` constant)
    into the Conv, as TensorFlow and TFLite hold it. The Conv's output then is the
    tensor the learned range covers (through the Squeeze, which keeps the grid), instead
    of a pre-bias float tensor with no range that would leave the Conv in float."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    readers: dict[str, list] = {}
    makers: dict[str, Any] = {}
    for node in graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node)
        for value in node.output:
            makers[value] = node
    outputs = {o.name for o in graph.output}
    dropped = set()
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2 or add.input[1] not in constants:
            continue
        bias = constants[add.input[1]]
        squeeze = makers.get(add.input[0])
        conv = makers.get(squeeze.input[0]) if squeeze is not None else None
        if (squeeze is None or squeeze.op_type != "Squeeze" or conv is None
                or conv.op_type != "Conv" or len(conv.input) != 2
                or bias.ndim < 2 or bias.shape[1] != bias.size  # per channel (axis 1)
                or len(readers.get(conv.output[0], [])) != 1
                or len(readers.get(squeeze.output[0], [])) != 1
                or add.output[0] in outputs):
            continue
        name = f"{add.input[1]}_conv_bias"
        graph.initializer.append(numpy_helper.from_array(bias.reshape(-1), name))
        conv.input.append(name)
        for reader in readers.get(add.output[0], []):
            for i, value in enumerate(reader.input):
                if value == add.output[0]:
                    reader.input[i] = squeeze.output[0]
        dropped.add(id(add))
    if dropped:
        kept = [node for node in graph.node if id(node) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)


def _resolve(renamed, value):
    while value in renamed:
        value = renamed[value]
    return value


#: Ops tf2onnx's optimizer moves between a QuantizeLinear and its DequantizeLinear.
MOVED = frozenset(("Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten"))


#: ONNX ops whose output an int8 file holds on their input's grid (onnxruntime's QDQ
#: quantizer gives both one scale and zero point), and Relu/Clip, which a conv or an add
#: before them absorbs (onnxruntime takes their output's range for their input).
SAME_GRID = frozenset("Transpose Reshape Flatten Squeeze Unsqueeze MaxPool Identity Pad "
                      "Slice Split Gather Expand Tile DepthToSpace SpaceToDepth Resize"
                      .split())
ABSORBED = frozenset(("Relu", "Clip"))


def _propagate(graph, ranges):
    """Gives the tensors around same-grid ops the range of the tensor beside them, and
    the input of a Relu/Clip its output's (the tensors tf2onnx adds, such as the
    transposes of channels-last layouts, and a conv's output before its fused ReLU,
    which the TensorFlow graph had no fake-quant op on), until nothing changes."""
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if not node.input or not node.output:
                continue
            source, target = node.input[0], node.output[0]
            if node.op_type in ABSORBED and target in ranges and source not in ranges:
                ranges[source] = ranges[target]
                changed = True
            elif node.op_type in SAME_GRID:
                if source in ranges and target not in ranges:
                    ranges[target] = ranges[source]
                    changed = True
                elif target in ranges and source not in ranges:
                    ranges[source] = ranges[target]
                    changed = True
