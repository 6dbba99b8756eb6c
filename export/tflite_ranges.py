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
from collections.abc import Iterable

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


def with_ranges(content: bytes, ranges: dict) -> bytes:
    """The TFLite file `content` with the calibrated `{tensor index: (min, max)}` set."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    for index, (low, high) in ranges.items():
        q = model.subgraphs[0].tensors[index].quantization
        q.min, q.max = [np.float32(low)], [np.float32(high)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


#: Operators whose output holds their input's values rearranged: the quantizer gives
#: both one grid.
_REARRANGE = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


def softmax_inputs(content: bytes) -> dict:
    """`{index: [indices of the tensors it is rearranged from]}` of the tensors that only
    SOFTMAX operators read in a TFLite file's main subgraph (TFLite's softmax is over
    the last axis), and up the graph through RESHAPE, SQUEEZE and EXPAND_DIMS (each
    tensor read by that operator only, besides SHAPE) the tensors holding the same
    values."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    operators = model.subgraphs[0].operators
    softmax, rearrange = _builtin("SOFTMAX"), {_builtin(n) for n in _REARRANGE}
    shape = _builtin("SHAPE")
    readers: dict[int, list] = {}
    makers = {}
    for op in operators:
        code = codes[op.opcodeIndex]
        if code != shape:  # SHAPE reads a tensor's shape, not its values
            for index in op.inputs if op.inputs is not None else ():
                readers.setdefault(int(index), []).append(code)
        for index in op.outputs if op.outputs is not None else ():
            makers[int(index)] = op
    found = {}
    for index, ops in readers.items():
        if set(ops) != {softmax}:
            continue
        chain, op = [], makers.get(index)
        while op is not None and codes[op.opcodeIndex] in rearrange:
            source = int(op.inputs[0])
            if len(readers.get(source, ())) != 1:
                break
            chain.append(source)
            op = makers.get(source)
        found[index] = chain
    return found


def _builtin(name: str) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    return int(getattr(schema.BuiltinOperator, name))


def histograms(content: bytes, feeds: Iterable[dict[str, np.ndarray]], tensors: dict,
               bins: int = BINS, whole: Iterable[int] = ()) -> tuple:
    """`({tensor index: counts}, {tensor index: values})`: the counts of each calibrated
    tensor of `tensors` (`recorded_ranges`' form) over its [min, max], summed over
    `feeds` (dicts from input name to a batch), and the values of the tensors `whole`
    names as softmax rows (`keras_bn.quantization.ranges.softmax_rows`), the file run in
    LiteRT in a child process."""
    from keras_bn.export.isolated import IsolatedRuntime, _text

    wanted = _text([[i, low, high, bins] for i, (_, low, high) in tensors.items()
                    if high > low])
    whole = [int(i) for i in whole]
    totals: dict[int, np.ndarray] = {}
    values: dict[int, list] = {i: [] for i in whole}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "calibrated.tflite")
        with open(path, "wb") as f:
            f.write(content)
        with IsolatedRuntime("tflite-tensors", path) as runtime:
            for feed in feeds:
                for key, array in runtime({**feed, "__histograms__": wanted,
                                           "__values__": _text(whole)}).items():
                    index = int(key[1:])
                    if key[0] == "v":
                        values[index].append(array)
                    else:
                        totals[index] = totals.get(index, 0) + array
    return totals, {i: estimators.softmax_rows(np.concatenate(v)) for i, v in values.items()
                    if v}


def estimate(content: bytes, feeds: Iterable[dict[str, np.ndarray]], estimator: str) -> tuple:
    """`(ranges, Technique)`: the new `{tensor index: (min, max)}` of a calibrated file's
    activations by `estimator` (`keras_bn.quantization.ranges`; with "mse", the tensors
    a softmax reads by the error of the softmax), and the record of what changed."""
    tensors = recorded_ranges(content)
    logits = ({i: chain for i, chain in softmax_inputs(content).items() if i in tensors}
              if estimator == "mse" else {})
    counts, vectors = histograms(content, feeds, tensors, whole=sorted(logits))
    ranges, record = estimators.estimate(tensors, counts, estimator, vectors=vectors)
    for index, chain in logits.items():  # the same values, one grid
        ranges.update({source: ranges[index] for source in chain
                       if index in ranges and source in tensors})
    return ranges, record
