"""PADV2 ops that pad with "minus infinity" (keras-hub's pre-activation ResNet pads with
the lowest float before its max pool), made quantizable in TFLite files.

Two things go wrong in the converter's files of such a model:

- calibrated as it is, the pad's output range reaches -3.4e38; since a pad keeps one
  scale for its input and output, the int8 step becomes 1e36 and every value before and
  after the pad rounds to zero (the whole file answers zeros). `padding_ranges` gives the
  pad its input's range instead: the lowest integer stands for "minus infinity" to a max
  pool just as well.
- the int16x8 quantizer (the converter's older one) quantizes the pad's input and output
  to int16 but leaves the padding value a float32 constant, which LiteRT refuses to run
  ("PADV2 input INT16 != constant FLOAT32"). `integer_pad_values` stores the value in the
  input's integer type and scale.
"""

import numpy as np

from keras_bn.flavour import DType
from keras_bn.quantization import affine

#: A padding value this far out is a max pool's "minus infinity" (-inf, or the lowest
#: float), not data.
_UNBOUNDED = 1e38


def _pads(model):
    """The PADV2 operators of a flatbuffer object's main subgraph."""
    from tensorflow.lite.python import schema_py_generated as schema

    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.PADV2:
            yield op


def _values(model, tensor):
    """A constant float32 tensor's values, or None for any other tensor."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = model.buffers[tensor.buffer].data
    if data is None or tensor.type != schema.TensorType.FLOAT32:
        return None
    return np.frombuffer(bytes(bytearray(data)), np.float32)


def padding_ranges(content: bytes) -> dict:
    """`{tensor index: (min, max)}` for the outputs of the PADV2 ops of a calibrated file
    that pad with an unbounded value: their input's recorded range."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]
    found = {}
    for op in _pads(model):
        values = _values(model, graph.tensors[op.inputs[2]])
        source = graph.tensors[op.inputs[0]].quantization
        if (values is not None and values.size and np.all(np.abs(values) >= _UNBOUNDED)
                and source is not None and source.min is not None and len(source.min) == 1):
            found[int(op.outputs[0])] = (float(source.min[0]), float(source.max[0]))
    return found


def padding_value(value: float, scale: float, zero_point: int, dtype: DType) -> int:
    """The integer of `dtype` that stands for the padding `value` on the input's grid
    (`real = scale * (q - zero_point)`), saturated: an unbounded value becomes the
    lowest or highest integer (`keras_bn.quantization.affine.quantize`)."""
    return int(affine.quantize(value, scale, zero_point, dtype))


def integer_pad_values(content: bytes) -> bytes:
    """The quantized file `content` with each PADV2 whose input is an integer tensor but
    whose padding value is a float32 constant given that value as a constant of the
    input's type and quantization (`padding_value`); a file without one is returned as
    it is."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    dtypes = {schema.TensorType.INT8: np.int8, schema.TensorType.INT16: np.int16}
    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]
    changed = False
    for op in _pads(model):
        source = graph.tensors[op.inputs[0]]
        values = _values(model, graph.tensors[op.inputs[2]])
        q = source.quantization
        if (source.type not in dtypes or values is None or values.size != 1 or q is None
                or q.scale is None or len(q.scale) != 1):
            continue
        dtype = dtypes[source.type]
        number = padding_value(float(values[0]), float(q.scale[0]), int(q.zeroPoint[0]), dtype)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.array([number], dtype).tobytes(), np.uint8)
        model.buffers.append(buffer)
        constant = schema.TensorT()
        constant.shape, constant.type = np.array([], np.int32), source.type
        constant.buffer, constant.quantization = len(model.buffers) - 1, copy.deepcopy(q)
        constant.name = (graph.tensors[op.inputs[2]].name or b"") + b"/quantized"
        graph.tensors.append(constant)
        op.inputs = np.array(op.inputs, np.int32)  # a read-only view of the file
        op.inputs[2] = len(graph.tensors) - 1
        changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else content
