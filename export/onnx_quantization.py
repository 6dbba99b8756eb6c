"""Quantization of a float ONNX file with onnxruntime's own tools, in a child process.

* "int8" and "int16x8": QDQ format (QuantizeLinear/DequantizeLinear around every
  quantized op, what onnxruntime, TensorRT, OpenVINO and QNN read), int8 weights
  symmetric per output channel (narrow range [-127, 127], as TFLite writes them, so that
  the bias correction done on the Keras model holds for both formats), activations int8
  asymmetric or int16 symmetric (TFLite's 16x8 scheme). The activation ranges are
  onnxruntime's MinMax calibration of the float file on the calibration rows (the rows
  TFLite's converter calibrates on), re-estimated from histograms over those ranges by
  `keras_bn.quantization.ranges` for another estimator, and handed to `quantize_static`
  as its calibration cache: the quantizer writes what was estimated, no second pass.
* "dynamic": `quantize_dynamic` (int8 weights, activations quantized at run time).
* "float16": onnxconverter-common's `convert_float_to_float16`, float32 inputs and
  outputs kept (`keep_io_types`).

It runs in a child process (this file as a script; numpy, onnx and onnxruntime only, no
TensorFlow) because calibration runs the model in onnxruntime: a runtime that crashes
on a file must not take the caller's process down (see `isolated`).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from keras_bn.quantization.options import QuantizationOptions

#: Rows per calibration batch run in onnxruntime.
_BATCH = 32


class Quantizer:
    """onnxruntime's quantization of one float ONNX file, as many times as asked, each
    leaving other layers in float (`nodes_to_exclude`): the first call pre-processes and
    calibrates, the later ones reuse that calibration (its cache) and only quantize.

    Args:
      content: the float ONNX file.
      options: checked `keras_bn.quantization.QuantizationOptions`; its calibration rows
        (one array per name of `input_names`, in that order) calibrate.
      input_names: the file's input names.
      what: names the export in error messages.
      learned: `{tensor name: (low, high)}`: the ranges of a quantization-aware model
        (`onnx_fake_quant.learned_ranges`), written instead of calibrated ones.
    """

    def __init__(self, content: bytes, options: QuantizationOptions, input_names: Sequence[str],
                 what: str, learned: dict | None = None) -> None:
        import numpy as np

        self.what = what
        self.work = tempfile.mkdtemp(prefix="keras_bn_onnx_quantize_")
        self.request: dict[str, Any] = {"mode": options.mode, "ranges": options.ranges,
                        "model": os.path.join(self.work, "float.onnx"),
                        "pre_processed": os.path.join(self.work, "pre_processed.onnx"),
                        "cache": os.path.join(self.work, "ranges.json"),
                        "records": os.path.join(self.work, "records.json"),
                        "out": os.path.join(self.work, "quantized.onnx"),
                        "rows": os.path.join(self.work, "rows.npz"),
                        "reply": os.path.join(self.work, "reply.json"),
                        "inputs": list(input_names),
                        "learned": None if learned is None else
                        {n: [float(low), float(high)] for n, (low, high) in learned.items()}}
        with open(self.request["model"], "wb") as f:
            f.write(content)
        rows = options.calibration or []
        count = min(options.calibration_rows, len(rows[0])) if rows else 0
        np.savez(self.request["rows"], *[r[:count] for r in rows])

    def __call__(self, exclude: Iterable[str] = ()) -> tuple:
        """`(file content, [Technique])`, the nodes named in `exclude` left in float; the
        records say how the ranges were estimated."""
        from keras_bn.errors import InputError, VerificationError
        from keras_bn.quantization.technique import Technique

        request = dict(self.request, exclude=list(exclude))
        for stale in (request["reply"], request["out"]):
            if os.path.exists(stale):
                os.remove(stale)
        path = os.path.join(self.work, "request.json")
        with open(path, "w") as f:
            json.dump(request, f)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), path],
                               capture_output=True, text=True)
        if not os.path.exists(request["reply"]):
            last = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise VerificationError(f"{self.what}: onnxruntime's quantization process ended "
                                    f"with status {child.returncode} without a file: {last}")
        with open(request["reply"]) as f:
            reply = json.load(f)
        if "error" in reply:
            raise InputError(f"{self.what}: onnxruntime could not quantize the file: "
                             f"{reply['error']}")
        with open(request["out"], "rb") as f:
            content = f.read()
        return content, [Technique(**record) for record in reply["records"]]

    def nodes(self) -> list[str]:
        """The names of the nodes of the float file as quantized (pre-processed), in
        graph order; after a first call."""
        import onnx

        model = onnx.load(self.request["pre_processed"], load_external_data=False)
        return [node.name for node in model.graph.node]

    def close(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def quantize(content: bytes, options: QuantizationOptions, input_names: Sequence[str],
             what: str, learned: dict | None = None) -> tuple:
    """`(file content, [Technique])`: the float ONNX `content` quantized as `options` (a
    checked `keras_bn.quantization.QuantizationOptions`) say, or with the `learned`
    ranges (see `Quantizer`)."""
    with Quantizer(content, options, input_names, what, learned) as quantizer:
        return quantizer()


def _reader(arrays, names):
    """An onnxruntime `CalibrationDataReader` over the rows, `_BATCH` at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(arrays[0]):
                return None
            feed = {n: a[self.start:self.start + _BATCH] for n, a in zip(names, arrays)}
            self.start += _BATCH
            return feed

        def rewind(self):
            self.start = 0

    return Rows()


def _ends(path):
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return {v.name for v in graph.input} | {v.name for v in graph.output}


def _softmax_inputs(path):
    """`{name: [tensors with its values]}` of the tensors only Softmax nodes read, each
    over its input's last axis (opset 13's default, -1; before 13 the axis flattens the
    dimensions after it, the same for a 2-D input), with the tensors they are
    rearranged from (`_same_values`)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
             if v.type.tensor_type.HasField("shape")}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    readers: dict[str, set] = {}
    for node in model.graph.node:
        last = node.op_type == "Softmax"
        if last:
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            rank = ranks.get(node.input[0])
            axis = (-1 if opset >= 13 else 1) if axis is None else axis
            last = rank is not None and axis in (-1, rank - 1)
        for name in node.input:
            readers.setdefault(name, set()).add(last)
    return {name: _same_values(model.graph, name)
            for name, kinds in readers.items() if kinds == {True}}


#: Nodes whose output holds their input's values rearranged: onnxruntime's QDQ gives
#: the output the input's scale and zero point.
_REARRANGE = frozenset("Squeeze Unsqueeze Reshape Flatten Transpose Identity".split())


def _same_values(graph, name):
    """The tensors up the graph from `name` that hold its values (through Squeeze,
    Reshape and the like, each read by that node only, besides Shape): their grid is
    `name`'s."""
    makers = {out: node for node in graph.node for out in node.output}
    found = []
    node = makers.get(name)
    while node is not None and node.op_type in _REARRANGE and node.input:
        source = node.input[0]
        if sum(source in n.input for n in graph.node if n.op_type != "Shape") != 1:
            break
        found.append(source)
        node = makers.get(source)
    return found


def _histograms(path, tensors, arrays, names, bins, whole=()):
    """`({tensor name: counts}, {tensor name: values})`: the counts of each
    `{name: (low, high)}` tensor over its range, and the values of the tensors `whole`
    names as softmax rows (`keras_bn.quantization.ranges.softmax_rows`), the float model
    run in onnxruntime with those tensors as extra outputs."""
    import numpy as np
    import onnx
    import onnxruntime

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    known = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    present = {o.name for o in model.graph.output}
    wanted = [n for n, (low, high) in tensors.items() if high > low]
    for name in wanted:
        if name not in present:
            model.graph.output.append(known.get(name) or onnx.helper.ValueInfoProto(name=name))
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    counts: dict[str, np.ndarray] = {}
    kept: dict[str, list] = {name: [] for name in whole if name in wanted}
    for start in range(0, len(arrays[0]), _BATCH):
        feed = {n: a[start:start + _BATCH] for n, a in zip(names, arrays)}
        for name, value in zip(wanted, session.run(wanted, feed)):
            low, high = tensors[name]
            if name in kept:
                kept[name].append(np.asarray(value, np.float32))
            values = np.clip(np.asarray(value, np.float64).ravel(), low, high)
            counts[name] = counts.get(name, 0) + np.histogram(values, bins, (low, high))[0]
    from keras_bn.quantization.ranges import softmax_rows

    return counts, {name: softmax_rows(np.concatenate(v)) for name, v in kept.items() if v}


def _calibrated(request, arrays, op_types, symmetric):
    """`(TensorsData, [record])`: onnxruntime's MinMax ranges of the float model on the
    rows, re-estimated by `request["ranges"]` (keras_bn.quantization.ranges)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import (CalibrationMethod, TensorData,
                                                    TensorsData, create_calibrator)

    from keras_bn.quantization import ranges as estimators

    with tempfile.TemporaryDirectory() as work:
        calibrator = create_calibrator(
            request["model"], op_types,
            augmented_model_path=os.path.join(work, "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"symmetric": symmetric})
        calibrator.collect_data(_reader(arrays, request["inputs"]))
        data = calibrator.compute_data()
        del calibrator
    _bound_pads(request["model"], data)
    if request["ranges"] == "minmax":
        return data, []
    ends = _ends(request["model"])
    recorded = {n: (n, float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
                for n, t in data.data.items() if n not in ends}
    logits = _softmax_inputs(request["model"]) if request["ranges"] == "mse" else {}
    counts, vectors = _histograms(request["model"], {n: v[1:] for n, v in recorded.items()},
                                  arrays, request["inputs"], estimators.BINS, logits)
    new, record = estimators.estimate(recorded, counts, request["ranges"], vectors=vectors)
    for name, sources in logits.items():  # the same values on the same grid
        for source in sources:
            if name in new and source in recorded:
                new[source] = new[name]
    for name, (low, high) in new.items():
        data.data[name] = TensorData(lowest=np.array(low, np.float32),
                                     highest=np.array(high, np.float32))
    return TensorsData(CalibrationMethod.MinMax, data.data), [record]


def _learned(ranges):
    """The `TensorsData` of a quantization-aware model's learned `{tensor: [low, high]}`."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
        for name, (low, high) in ranges.items()})


def _bound_pads(path, data):
    """Gives the output of each Pad that pads with an unbounded value (a max pool's
    "minus infinity": -inf or the lowest float) its input's calibrated range, in place
    of one reaching -3.4e38, whose int8 step would round every value to zero (see
    `keras_bn.export.tflite_padding.padding_ranges`, the same fix for TFLite)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path, load_external_data=False).graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "Pad" or len(node.input) < 3 or node.input[2] not in constants:
            continue
        value = np.asarray(constants[node.input[2]], np.float64)
        source, target = node.input[0], node.output[0]
        if (value.size and np.all(np.abs(value) >= 1e38) and source in data.data
                and target in data.data):
            data.data[target] = data.data[source]


def _static(request, arrays):
    """int8 / int16x8 QDQ: calibrate and re-estimate (once: later requests reuse the
    cache), quantize with those ranges."""
    from dataclasses import asdict

    from onnxruntime.quantization import (QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.calibrate import CalibrationMethod, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    int16 = request["mode"] == "int16x8"
    op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    cache = request["cache"]
    if os.path.exists(cache):
        with open(request["records"]) as f:
            records = json.load(f)
    elif request.get("learned") is not None:
        save_tensors_data(_learned(request["learned"]), cache)
        records = []
    else:
        data, found = _calibrated(request, arrays, op_types, symmetric=int16)
        records = [asdict(r) for r in found]
        save_tensors_data(data, cache)
        with open(request["records"], "w") as f:
            json.dump(records, f)
    exclude, overrides = list(request.get("exclude") or []), {}
    if request.get("learned") is not None:
        overrides, unranged = _learned_grids(request, op_types)
        exclude += unranged
    quantize_static(
        request["model"], request["out"], None, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types, per_channel=True,
        activation_type=QuantType.QInt16 if int16 else QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=cache,
        nodes_to_exclude=exclude or None,
        extra_options={"ActivationSymmetric": int16, "WeightSymmetric": True,
                       # a MatMul left unfused: a scale per output column, as
                       # TFLite's FullyConnected kernels have
                       "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                       "TensorQuantOverrides": overrides})
    return records


def _learned_grids(request, op_types):
    """`(overrides, nodes)`: onnxruntime's per-tensor overrides that give each learned
    tensor exactly its grid (`keras_bn.quantization.fake_quant.activation_grid`; without
    them onnxruntime, for one, puts a softmax's output on [0, 1] instead of the int8
    kernels' [0, 255/256]), and the nodes to leave in float: those that read or write a
    tensor without a learned range (as the TFLite converter leaves them)."""
    import numpy as np
    import onnx

    from keras_bn.quantization.fake_quant import activation_grid

    learned = request["learned"]
    overrides = {}
    for name, (low, high) in learned.items():
        scale, zero_point = activation_grid(low, high)
        overrides[name] = [{"scale": np.array(scale, np.float32),
                            "zero_point": np.array(zero_point, np.int8)}]
    model = onnx.load(request["model"], load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    unranged = [node.name for node in model.graph.node if node.op_type in op_types and any(
        value and value not in constants and value not in learned
        for value in list(node.input) + list(node.output))]
    return overrides, unranged


def _pre_processed(request):
    """onnxruntime's `quant_pre_process` of the float model (shape inference and its
    basic graph optimizations), so that a Dense layer's MatMul and bias Add become one
    Gemm whose bias is quantized as a bias (int32 at the input scale times the weight
    scale), as TFLite's FullyConnected holds it, rather than as an int8 activation.
    Symbolic shape inference (for transformers' dynamic shapes) is skipped: onnx's own
    shape inference knows every shape of a Keras CNN's graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = request["pre_processed"]
    if not os.path.exists(path):  # once per Quantizer
        quant_pre_process(request["model"], path, skip_symbolic_shape=True)
    return dict(request, model=path)


def _serve(request_path):
    with open(request_path) as f:
        request = json.load(f)
    try:
        import numpy as np

        with np.load(request["rows"], allow_pickle=False) as loaded:
            arrays = [loaded[f"arr_{i}"] for i in range(len(loaded.files))]
        if request["mode"] != "float16":
            request = _pre_processed(request)
        if request["mode"] in ("int8", "int16x8"):
            records = _static(request, arrays)
        elif request["mode"] == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(request["model"], request["out"], per_channel=True,
                             weight_type=QuantType.QInt8)
            records = []
        else:  # float16
            import onnx
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(onnx.load(request["model"]),
                                                     keep_io_types=True)
            onnx.save(model, request["out"])
            records = []
        reply = {"records": records}
    except Exception as error:  # noqa: BLE001 - reported to the parent as one line
        reply = {"error": f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"}
    with open(request["reply"], "w") as f:
        json.dump(reply, f)


if __name__ == "__main__":
    # Run as a script: this folder (holding onnx.py) must not shadow the onnx package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    _serve(sys.argv[1])
