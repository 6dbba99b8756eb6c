"""A model's quantized file, layer by layer: any of its layers left in float.

`open_file(model, fmt, options)` prepares the model as the exporter does (fold,
post-training techniques, one calibration) and yields a `LayerwiseFile`: the Keras
layers the file holds (`layers`), the file with any of them kept in float (`content`),
and its scores against the Keras model on the evaluation rows (`score`), the file run in
its runtime in a child process. Sensitivity and float fallback
(`keras_bn.quantization.sensitivity`, `.fallback`) are written against that interface;
this module holds what each format does:

- TFLite: the converter calibrates once (a float file holding every activation's range,
  re-estimated as the options say), and its own quantizer (`mlir_quantize`) writes each
  file, the layers' ops named in `denylisted_nodes`: the QuantizationDebugger's
  selective quantization.
- ONNX: onnxruntime's `quantize_static` from one calibration cache, the layers' nodes in
  `nodes_to_exclude`.

An op belongs to the Keras layers whose names its name holds as a scope
("model/conv1/Conv2D"; TFLite fuses "model/re_lu/Relu;model/conv1/Conv2D" into one op of
both); an op writing a model output that TFLite renamed belongs to the layer the output
is named after.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.export._prepare import input_signature, output_names, quantization_input
from keras_bn.export.isolated import IsolatedRuntime
from keras_bn.flavour import Inputs, Model
from keras_bn.quantization import scoring
from keras_bn.quantization.options import FALLBACK_MODES, Prepared, QuantizationOptions, prepared
from keras_bn.verification import predict


def layer_of(name: str, layers: set[str], weighted: set[str], model: str) -> str | None:
    """The Keras layer (of `layers`, in the model named `model`) an op or node `name`
    belongs to: of the layer names it holds as scopes, one with weights (a fused
    "re_lu/Relu;conv1/Conv2D" op is the convolution's), else the first; None for none.

    A Keras 3 model traced again in one graph gets uniquified scopes: its own scope is
    "functional_1", its layers' "conv_1" (for "conv") and "conv_1_2" (for "conv_1").
    Where the op's first scope is the model's name with such a suffix, each layer scope
    is read without its last "_<n>"; otherwise as it is."""
    found = []
    for part in name.split(";"):
        scopes = part.split("/")
        renamed = _unsuffixed(scopes[0]) == model and scopes[0] != model
        for scope in scopes[1:]:
            candidates = ((_unsuffixed(scope), scope) if renamed else
                          (scope, _unsuffixed(scope)))
            layer = next((c for c in candidates if c in layers), None)
            if layer is not None:
                found.append(layer)
                break
    return next((f for f in found if f in weighted), found[0] if found else None)


def _unsuffixed(scope: str) -> str:
    """`scope` without a trailing "_<digits>" (TensorFlow's uniquifying suffix)."""
    stem, _, number = scope.rpartition("_")
    return stem if stem and number.isdigit() else scope


def _names(converted):
    """`(layer names, names of layers with weights, the model's name)` of the model
    converted."""
    return ({layer.name for layer in converted.layers},
            {layer.name for layer in converted.layers if layer.weights}, converted.name)


class LayerwiseFile:
    """The quantized file of one model, with any of its layers left in float.

    Attributes:
      layers: the Keras layers the file quantizes, in graph order.
      nodes: layer name -> the names of its ops (TFLite) or nodes (ONNX).
      ready: the `keras_bn.quantization.options.Prepared` decisions it was made from.
    """

    fmt = ""

    def __init__(self, model: Model, ready: Prepared, nodes: dict) -> None:
        self.model, self.ready, self.nodes = model, ready, nodes
        self.layers = list(nodes)
        self.names = flavour.of(model).input_names(model)
        self.outputs = output_names(model)
        rows = ready.scored
        if rows is None:
            raise InputError(
                f"'{model.name}': per-layer scores need rows to score on: give evaluation "
                f"rows (evaluation=, --eval) or at least {scoring.MIN_ROWS_TO_SPLIT} "
                "calibration rows (a fifth is then held out)")
        self.rows: list = rows
        self.reference = self._predicted(model)
        reference = ready.options.reference
        self.judged_by = self.reference if reference is None else self._predicted(reference)
        self._runs: dict[tuple, list] = {}  # the file's outputs, by the layers in float

    def content(self, float_layers: Iterable[str] = ()) -> bytes:  # pragma: no cover
        # each format's own
        """The file with the layers of `float_layers` left in float."""
        raise NotImplementedError

    def float_nodes(self, float_layers: Iterable[str]) -> list[str]:
        """The op or node names of the layers of `float_layers`."""
        return [n for layer in float_layers for n in self.nodes[layer]]

    def _predicted(self, model: Model) -> list:
        rows = self.rows
        return [np.concatenate(parts) for parts in zip(*(
            predict(model, [r[i:i + 64] for r in rows]) for i in range(0, len(rows[0]), 64)))]

    def score(self, float_layers: Iterable[str] = ()) -> list[scoring.OutputScore]:
        """Scores of `content(float_layers)` against the Keras model on the rows: what
        quantization changed (the ranking of sensitivity and fallback)."""
        return scoring.score(self.outputs, self.reference, self._outputs_of(float_layers))

    def judge(self, float_layers: Iterable[str] = ()) -> list[scoring.OutputScore]:
        """Scores of `content(float_layers)` against the options' `reference` (else
        the Keras model), as the written file is scored: what `min_agreement` judges.
        The file runs once for both."""
        return scoring.score(self.outputs, self.judged_by, self._outputs_of(float_layers))

    def _outputs_of(self, float_layers: Iterable[str]) -> list:
        """The outputs of `content(float_layers)` on the rows, in its runtime (once)."""
        key = tuple(sorted(float_layers))
        if key not in self._runs:
            self._runs[key] = self._run(key)
        return self._runs[key]

    def _run(self, float_layers: tuple) -> list:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "candidate." + self.fmt)
            with open(path, "wb") as f:
                f.write(self.content(float_layers))
            with IsolatedRuntime(self.fmt, path) as runtime:
                run = self._runner(runtime)
                got = [run([r[i:i + 64] for r in self.rows])
                       for i in range(0, len(self.rows[0]), 64)]
        return [np.concatenate([g[k] for g in got]) for k in range(len(self.outputs))]

    def _runner(self, runtime):
        """The format's own `file_runner` (as its exporter verifies with) of `runtime`."""
        from keras_bn.export import onnx, tflite

        module = onnx if self.fmt == "onnx" else tflite
        return module.file_runner(runtime, self.names, self.outputs)

    def latency_ms(self, float_layers: Iterable[str], batch: int) -> float:
        """Median milliseconds of a batch of `batch` random inputs through
        `content(float_layers)` in its runtime, as `checks.latency_ms` times files."""
        from keras_bn.export import checks
        from keras_bn.verification import random_inputs

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "candidate." + self.fmt)
            with open(path, "wb") as f:
                f.write(self.content(float_layers))
            with IsolatedRuntime(self.fmt, path) as runtime:
                return checks.latency_ms(self._runner(runtime),
                                         random_inputs(self.model, batch=batch, seed=1))

    def close(self):
        pass


class TFLiteLayers(LayerwiseFile):
    """TFLite: one calibrated file (`tflite.calibrated`), quantized by the converter's
    quantizer with the float layers' ops denylisted (`tflite.quantized`)."""

    fmt = "tflite"

    def __init__(self, model, converted, ready):
        from keras_bn.export import tflite

        self.calibrated, self.records = tflite.calibrated(converted, model, ready.options)
        super().__init__(model, ready, _tflite_nodes(self.calibrated, converted))

    def content(self, float_layers: Iterable[str] = ()) -> bytes:
        from keras_bn.export import tflite

        return tflite.quantized(self.calibrated, self.ready.options,
                                self.float_nodes(float_layers))


def _tflite_nodes(content, converted):
    """layer -> the output tensor names of its ops in the calibrated TFLite file."""
    from tensorflow.lite.tools import flatbuffer_utils

    names, weighted, top = _names(converted)
    tflite_model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = tflite_model.subgraphs[0]
    renamed = {}  # a model output's tensor -> the layer its output is named after
    for signature in tflite_model.signatureDefs or []:
        for output in signature.outputs:
            key = output.name.decode() if isinstance(output.name, bytes) else output.name
            if key in names:
                renamed[output.tensorIndex] = key
    nodes: dict[str, list[str]] = {}
    for op in graph.operators:
        tensor = graph.tensors[op.outputs[0]]
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        layer = layer_of(name, names, weighted, top) or renamed.get(op.outputs[0])
        if layer is not None:
            nodes.setdefault(layer, []).append(name)
    return nodes


class OnnxLayers(LayerwiseFile):
    """ONNX: the float file (`proto`, or converted here) quantized by onnxruntime from
    one calibration cache, the float layers' nodes excluded
    (`onnx_quantization.Quantizer`)."""

    fmt = "onnx"

    def __init__(self, model, converted, ready, proto=None):
        from keras_bn.export import onnx as onnx_export
        from keras_bn.export import onnx_quantization

        if proto is None:
            proto = onnx_export._convert(converted, input_signature(model),
                                         output_names(model), None)
            onnx_export._check(proto, model.name)
        self.quantizer = onnx_quantization.Quantizer(
            proto.SerializeToString(), ready.options, flavour.of(model).input_names(model),
            f"ONNX {ready.options.mode} export of '{model.name}'")
        self.first, self.records = self.quantizer()
        names, weighted, top = _names(converted)
        nodes: dict[str, list] = {}
        for node in self.quantizer.nodes():
            layer = layer_of(node, names, weighted, top)
            if layer is not None:
                nodes.setdefault(layer, []).append(node)
        super().__init__(model, ready, nodes)

    def content(self, float_layers: Iterable[str] = ()) -> bytes:
        if not float_layers:
            return self.first
        return self.quantizer(self.float_nodes(float_layers))[0]

    def close(self):
        self.quantizer.close()


@contextlib.contextmanager
def open_file(model: Model, fmt: str, options: QuantizationOptions, *, fold: bool = True,
              verify: bool = True, samples: Inputs | None = None) -> Iterator[LayerwiseFile]:
    """Yields the `LayerwiseFile` of `model` in format `fmt` ("tflite" or "onnx") as
    `options` (a `QuantizationOptions`) quantize it; see the module docstring."""
    ready = prepared(options, model, fmt, verify, samples)
    if ready.options.mode not in FALLBACK_MODES[fmt]:
        raise InputError(f"Per-layer quantization of '{model.name}' in {fmt}: use mode "
                         f"{' or '.join(map(repr, FALLBACK_MODES[fmt]))}, not "
                         f"{ready.options.mode!r}.")
    if ready.scored is None:
        raise InputError(f"Per-layer quantization of '{model.name}': no rows to score the "
                         "files on; give evaluation data, or 50 calibration rows or more "
                         "(a fifth is held out).")
    if flavour.of(model).backend() != "tensorflow":
        raise InputError(f"Per-layer quantization of '{model.name}' runs on the TensorFlow "
                         f"backend, not {flavour.of(model).backend()}: save the model and "
                         "load it with KERAS_BACKEND=tensorflow.")
    converted, _, _ = quantization_input(model, fold, verify, ready.scored if samples is None
                                         else samples, ready.options)
    kind = TFLiteLayers if fmt == "tflite" else OnnxLayers
    file = kind(model, converted, ready)
    try:
        yield file
    finally:
        file.close()


#: The metadata key under which a fallback file names the layers it keeps in float
#: (TFLite: a metadata buffer; ONNX: a model property), comma-separated.
FLOAT_LAYERS_KEY = "keras_bn.float_layers"


def named_float_layers(fmt: str, content: bytes, layers: Iterable[str]) -> bytes:
    """`content` with the names of `layers` stored under `FLOAT_LAYERS_KEY`, so that the
    file itself says which of its layers compute in float."""
    text = ",".join(layers).encode()
    if fmt == "onnx":
        import onnx

        model = onnx.load_from_string(content)
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            FLOAT_LAYERS_KEY: text.decode()})
        return model.SerializeToString()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    buffer = schema.BufferT()
    buffer.data = list(text)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = FLOAT_LAYERS_KEY, len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_layers_named(fmt: str, content: bytes) -> list[str] | None:
    """The layers a file names under `FLOAT_LAYERS_KEY`, or None where it names none."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load_from_string(content).metadata_props}
        text = props.get(FLOAT_LAYERS_KEY)
    else:
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(content)
        found = [m for m in model.metadata or []
                 if (m.name.decode() if isinstance(m.name, bytes) else m.name)
                 == FLOAT_LAYERS_KEY]
        text = bytes(model.buffers[found[0].buffer].data).decode() if found else None
    return None if text is None else [n for n in text.split(",") if n]


def with_fallback(file: LayerwiseFile, latency_batch: int | None) -> tuple:
    """`(file content, Fallback)`: the fewest layers of `file` kept in float for its
    options' `min_agreement` (`keras_bn.quantization.fallback.choose`), the file naming
    them (`named_float_layers`), and the integer file's size and latency for the
    record."""
    from keras_bn.quantization import fallback

    what = (f"{file.fmt.upper() if file.fmt == 'onnx' else 'TFLite'} "
            f"{file.ready.options.mode} export of '{file.model.name}'")
    target = file.ready.options.min_agreement
    assert target is not None  # float_fallback requires it (QuantizationOptions)
    record = fallback.choose(file.layers, file.score, target, what, judge=file.judge)
    record.size_bytes_integer = len(file.content())
    if latency_batch and record.layers:
        record.latency_ms_integer = file.latency_ms((), latency_batch)
    return named_float_layers(file.fmt, file.content(record.layers), record.layers), record
