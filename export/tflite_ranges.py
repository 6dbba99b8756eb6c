"""The activation ranges of a TFLite file, re-estimated (`keras_bn.quantization.ranges`).

TensorFlow's converter calibrates each activation tensor to its min and max (it offers no
other estimator). Here the converter is asked to calibrate only
(`_experimental_calibrate_only`: a float file holding each tensor's min and max), the
calibrated file is run in LiteRT (in a child process) on the same rows to histogram every
calibrated tensor over its [min, max], each range is re-estimated from its histogram, and
the converter's own quantizer (`mlir_quantize`, what `convert()` calls next) quantizes
the file with the new ranges. With "minmax" this route computes exactly what the
converter's file computes.
"""

import os
import tempfile

import numpy as np

from keras_bn.quantization import ranges as estimators
from keras_bn.quantization.ranges import BINS


def recorded_ranges(content: bytes) -> dict:
    """`{tensor index: (name, min, max)}` of the calibrated tensors inside a TFLite
    file's main subgraph (a file the converter calibrated only); its inputs and outputs
    keep their min/max: clipping them would clip the values the user feeds or reads."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    found = {}
    ends = set(model.subgraphs[0].inputs) | set(model.subgraphs[0].outputs)
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        if index in ends:  # the values the user feeds and reads are never clipped
            continue
        q = tensor.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            found[index] = (name, float(q.min[0]), float(q.max[0]))
    return found


#: A padding value this far out is a max pool's "minus infinity" (-inf, or the lowest
#: float), not data.
_UNBOUNDED = 1e38


def padding_ranges(content: bytes) -> dict:
    """`{tensor index: (min, max)}` for the outputs of the PADV2 ops of a calibrated file
    that pad with an unbounded value (keras-hub's ResNet pads before its max pool with
    the lowest float): their input's recorded range. Calibrated as they are, their range
    reaches -3.4e38, and since a pad keeps one scale for its input and output, the int8
    step of the tensor becomes 1e36 and every value before and after it rounds to zero
    (the whole file answers zeros). The int8 minimum stands for "minus infinity" to a
    max pool just as well."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]
    found = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.PADV2:
            continue
        constant = graph.tensors[op.inputs[2]]
        data = model.buffers[constant.buffer].data
        if data is None or constant.type != schema.TensorType.FLOAT32:
            continue
        values = np.frombuffer(bytes(bytearray(data)), np.float32)
        source = graph.tensors[op.inputs[0]].quantization
        if (values.size and np.all(np.abs(values) >= _UNBOUNDED) and source is not None
                and source.min is not None and len(source.min) == 1):
            found[int(op.outputs[0])] = (float(source.min[0]), float(source.max[0]))
    return found


def with_ranges(content: bytes, ranges: dict) -> bytes:
    """The TFLite file `content` with the calibrated `{tensor index: (min, max)}` set."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    for index, (low, high) in ranges.items():
        q = model.subgraphs[0].tensors[index].quantization
        q.min, q.max = [np.float32(low)], [np.float32(high)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def histograms(content: bytes, feeds, tensors: dict, bins: int = BINS) -> dict:
    """`{tensor index: counts}` of each calibrated tensor of `tensors`
    (`recorded_ranges`' form) over its [min, max], summed over `feeds` (dicts from input
    name to a batch), the file run in LiteRT in a child process."""
    from keras_bn.export.isolated import IsolatedRuntime, _text

    wanted = _text([[i, low, high, bins] for i, (_, low, high) in tensors.items()
                    if high > low])
    totals = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "calibrated.tflite")
        with open(path, "wb") as f:
            f.write(content)
        with IsolatedRuntime("tflite-tensors", path) as runtime:
            for feed in feeds:
                for key, counts in runtime({**feed, "__histograms__": wanted}).items():
                    index = int(key[1:])
                    totals[index] = totals.get(index, 0) + counts
    return totals


def estimate(content: bytes, feeds, estimator: str) -> tuple:
    """`(ranges, Technique)`: the new `{tensor index: (min, max)}` of a calibrated file's
    activations by `estimator` (`keras_bn.quantization.ranges`), and the record of what
    changed."""
    tensors = recorded_ranges(content)
    return estimators.estimate(tensors, histograms(content, feeds, tensors), estimator)
