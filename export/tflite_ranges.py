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


def histograms(content: bytes, feeds: Iterable[dict[str, np.ndarray]], tensors: dict,
               bins: int = BINS) -> dict:
    """`{tensor index: counts}` of each calibrated tensor of `tensors`
    (`recorded_ranges`' form) over its [min, max], summed over `feeds` (dicts from input
    name to a batch), the file run in LiteRT in a child process."""
    from keras_bn.export.isolated import IsolatedRuntime, _text

    wanted = _text([[i, low, high, bins] for i, (_, low, high) in tensors.items()
                    if high > low])
    totals: dict[int, np.ndarray] = {}
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


def estimate(content: bytes, feeds: Iterable[dict[str, np.ndarray]], estimator: str) -> tuple:
    """`(ranges, Technique)`: the new `{tensor index: (min, max)}` of a calibrated file's
    activations by `estimator` (`keras_bn.quantization.ranges`), and the record of what
    changed."""
    tensors = recorded_ranges(content)
    return estimators.estimate(tensors, histograms(content, feeds, tensors), estimator)
