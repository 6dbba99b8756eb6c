"""Export to TFLite with TensorFlow's converter, run in LiteRT's Interpreter."""

import collections
import contextlib
import os
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert import deduplicate_readonly_buffers, mlir_quantize
from tensorflow.lite.python.convert_phase import ConverterError

from keras_bn import flavour
from keras_bn.errors import InputError, VerificationError
from keras_bn.export import (checks, selective, through_tensorflow, tflite_padding,
                             tflite_ranges)
from keras_bn.export._prepare import input_signature, output_names, quantization_input
from keras_bn.export.isolated import IsolatedRuntime, TimedRun
from keras_bn.files.output import atomic_path, check_output
from keras_bn.flavour import Inputs, Model
from keras_bn.quantization import affine
from keras_bn.quantization.options import QuantizationOptions, prepared


def to_tflite(model: Model, path: str | os.PathLike, *,
              quantize: str | QuantizationOptions | None = None, fold: bool = True,
              verify: bool = True, samples: Inputs | None = None, labels: Inputs | None = None,
              rtol: float | None = None, atol: float = 1e-5,
              latency_batch: int | None = 1) -> checks.ExportResult:
    """Exports `model` to a TFLite file and runs the file in LiteRT to check it.

    Folds the BatchNormalization layers first (`keras_bn.fold`, itself verified), converts
    with `tf.lite.TFLiteConverter` (dynamic batch dimension; inputs and outputs keep the
    model's dtypes, except in "int8-io"), then runs the written file with
    `ai_edge_litert`'s Interpreter (in a child process: a LiteRT crash is a
    VerificationError) on a random batch and on `samples`. float32 files must match the
    Keras model within tolerance; quantized files cannot, so their error (and accuracy,
    with `labels`) is measured and reported instead, and scored against the Keras model
    on data (`result.evaluation`: per output, top-1 agreement, max and mean abs error,
    SQNR). The file appears at `path` only once all of that passed (temporary file, then
    rename).

    Quantization (`quantize`: a mode name, or a `keras_bn.quantization.QuantizationOptions`
    with the calibration data, range estimator, techniques, evaluation rows and agreement
    gate; `to_onnx` takes the same object): None (float32); "dynamic" (int8 weights,
    float activations); "float16" (float16 weights); "int8" (full integer, float inputs
    and outputs); "int8-io" (full integer, int8 inputs and outputs: the file's input and
    output scale and zero point say how to quantize and dequantize them, and
    verification does so); "int16x8" (integer only, int8 weights and int16
    activations). The calibrated modes run the options' techniques on the folded model
    first (bias correction by default) and score the file on held-out calibration rows
    unless evaluation rows are given.

    Example:

    ```python
    from keras_bn.export import to_tflite
    from keras_bn.quantization import QuantizationOptions

    result = to_tflite(model, "model_int8.tflite",
                       quantize=QuantizationOptions("int8", calibration=x_train[:500]))
    print(result.evaluation[0].agreement)  # top-1 agreement on 100 held-out rows
    ```

    Args:
      model: A built Sequential or functional model, tf-keras or Keras 3 (on JAX it is
        converted by a TensorFlow process and the file verified against it here, see
        `through_tensorflow`); it is not changed.
      path: Where to write the `.tflite` file.
      quantize: None (float32), a mode name that needs no data ("dynamic", "float16"),
        or `QuantizationOptions`.
      fold: Fold BN layers first.
      verify: Run the file in LiteRT and compare with Keras.
      samples: Optional input array (or list) to verify on as well.
      labels: Optional integer labels of `samples`: the result then reports accuracy.
      rtol: Tolerance relative to the output scale for float32 files (see `to_onnx`).
      atol: Absolute slack for outputs near zero.
      latency_batch: Batch size of the latency measurement (median of 10 runs in
        LiteRT); None skips it.

    Returns:
      An `ExportResult` (`post_training`: what each technique changed and left alone;
      `evaluation`: the scores; `fallback`: with the options' `float_fallback`, the
      layers kept in float and their cost).

    Raises:
      keras_bn.errors.InputError: (a ValueError) `path` does not end in .tflite, a mode
        TFLite has not, options that do not go together, calibration or evaluation
        data that is missing, empty or does not fit the model's inputs, or a
        `min_agreement` that cannot be judged.
      keras_bn.VerificationError: a float32 file's outputs differ beyond tolerance, or an
        agreement below `min_agreement`; no file is left at `path`.
    """
    ready = prepared(quantize, model, "tflite", verify, samples)
    options = ready.options
    if ready.scored_on.startswith("held-out") and samples is None:
        samples = ready.scored
    check_output(path, (".tflite",))  # before minutes of conversion
    if flavour.of(model).backend() != "tensorflow":
        return through_tensorflow.export("tflite", model, path, ready, dict(
            fold=fold, verify=verify, samples=samples, labels=labels, rtol=rtol, atol=atol,
            latency_batch=latency_batch))
    converted, plan, records = quantization_input(model, fold, verify, samples, options,
                                                  ready.learned)
    fallback = None
    if options.float_fallback:
        with contextlib.closing(selective.TFLiteLayers(model, converted, ready)) as file:
            content, fallback = selective.with_fallback(file, latency_batch)
            records = records + file.records
    else:
        content, estimated = _convert(converted, model, options, learned=ready.learned)
        records = records + estimated
    if options.mode and options.mode != "float16" and not tensor_types(content) & {
            "INT8", "UINT8"}:
        small = (" (dynamic-range quantization leaves weights of under 1024 values in "
                 "float)" if options.mode == "dynamic" else "")
        raise VerificationError(f"TFLite {options.mode} export of '{model.name}': the "
                                f"converter wrote no int8 tensor{small}; the file would be "
                                "float.")
    result = checks.ExportResult(path=os.fspath(path), fold_plan=plan,
                                 format="tflite" + (f"-{options.mode}" if options.mode else ""),
                                 post_training=records, fallback=fallback)
    result.op_counts = op_counts(content)
    with atomic_path(path, (".tflite",)) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
        verify_file(result, model, tmp, samples, labels, verify, rtol, atol, latency_batch,
                    check=options.mode is None, ready=ready)
    return result


def verify_file(result, model, file, samples, labels, verify, rtol, atol, latency_batch,
                check=True, ready=None):
    """Runs the TFLite `file` in LiteRT (a child process: a LiteRT abort is a result)
    against `model` in inference mode, into `result` (error, accuracy, latency, size,
    and the scores on the rows `ready`, a `keras_bn.quantization.options.Prepared`,
    says); raises VerificationError beyond tolerance (with `check`: a float32 file) and
    below the options' minimum agreement."""
    if verify or labels is not None or latency_batch or (ready and ready.scored is not None):
        with IsolatedRuntime("tflite", file) as runtime:
            outputs = output_names(model)
            run = file_runner(runtime, flavour.of(model).input_names(model), outputs)
            checks.measure(result, model, run, samples, labels, verify,
                            checks.export_rtol(model, rtol), atol,
                            latency_batch, f"TFLite export of '{model.name}'",
                            check=check)
            checks.score(result, model, run, ready, outputs)
            if ready is not None and ready.learned and verify:
                checks.check_simulated(result, model, run, ready, samples,
                                       f"TFLite export of '{model.name}'")
    result.size_bytes = os.path.getsize(file)
    checks.check_agreement(result, model, ready)


def file_runner(runtime, names, outputs):
    """`run(inputs) -> [outputs]` of a TFLite file open in `runtime` (an
    `IsolatedRuntime`): each input fed in the file's own dtype (float64, int32...),
    quantized where the file takes integers (int8-io), each output read as real values;
    `run.seconds()` is the runtime's own time of the last call."""
    dtypes = dict(runtime.inputs)

    def run(inputs):
        got = runtime({n: _fed(x, dtypes[n], runtime.quantization.get(n))
                       for n, x in zip(names, inputs)})
        return [_read(got[name], runtime.quantization.get(name)) for name in outputs]

    return TimedRun(runtime, run)


def _fed(x, dtype, quantization):
    """An input batch as the file takes it: quantized where the file's input is an
    integer tensor standing for real values (int8-io), else cast to its dtype."""
    if quantization and np.issubdtype(np.asarray(x).dtype, np.floating):
        scale, zero_point = quantization
        return affine.quantize(x, scale, zero_point, dtype)
    return np.asarray(x, dtype)


def _read(y, quantization):
    """An output as real values: dequantized where the file quantized it (int8-io)."""
    return affine.dequantize(y, *quantization) if quantization else y


def _converter_options(options, model, learned=False):
    """The TFLite converter settings of a quantization mode, as attributes; `learned`:
    the model's fake-quant ops give the int8 ranges (no representative data)."""
    mode = options.mode
    if mode is None:
        return {}
    if learned:
        settings: dict[str, object] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
        if mode == "int8-io":
            settings.update(inference_input_type=tf.int8, inference_output_type=tf.int8)
        return settings
    if mode == "dynamic":  # no representative data: weights only
        return {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if mode == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": {"supported_types": [tf.float16]}}
    names = flavour.of(model).input_names(model)
    data = options.calibration

    def representative():
        for i in range(min(options.calibration_rows, len(data[0]))):
            yield {n: d[i:i + 1] for n, d in zip(names, data)}

    ops = (tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
           if mode == "int16x8" else tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
    settings = {"optimizations": [tf.lite.Optimize.DEFAULT],
                "representative_dataset": representative,
                "target_spec": {"supported_ops": [ops]}}
    if mode == "int8-io":  # float inputs and outputs become int8 (integer ids stay)
        settings.update(inference_input_type=tf.int8, inference_output_type=tf.int8)
    return settings


def _convert(converted, model, options, calibrate_only=None, learned=False):
    """`(file content, [Technique])`: the converter's file of `converted` in the options'
    mode; in the int8 modes (or with `calibrate_only`), the calibrated file of
    `calibrated` (its ranges checked, and re-estimated by another estimator than
    "minmax") quantized by `quantized`, the converter's own quantizer, with the record
    of the new ranges, unless `learned` (the ranges of the model's fake-quant ops, as
    the converter reads them from a quantization-aware model); in every quantized mode,
    pads given integer padding values (`tflite_padding.integer_pad_values`)."""
    if calibrate_only is None:  # the int8 modes: their ranges are checked first
        calibrate_only = options.mode in ("int8", "int8-io") and not learned
    if calibrate_only:
        content, records = calibrated(converted, model, options)
        return quantized(content, options), records
    content = _run_converter(converted, model, options, False, learned)
    return (tflite_padding.integer_pad_values(content) if options.mode else content), []


def calibrated(converted: Model, model: Model, options: QuantizationOptions) -> tuple:
    """`(calibrated file, [Technique])`: the converter's float file of `converted` holding
    each activation's calibrated range (`_experimental_calibrate_only`), a max pool's
    unbounded padding given its input's range (`tflite_padding.padding_ranges`), the
    ranges re-estimated by the options' estimator where it is not "minmax"
    (`keras_bn.export.tflite_ranges`)."""
    content = _run_converter(converted, model, options, True)
    unbounded = tflite_padding.padding_ranges(content)
    if unbounded:
        content = tflite_ranges.with_ranges(content, unbounded)
    if options.ranges == "minmax":
        return content, []
    names = flavour.of(model).input_names(model)
    data = options.calibration
    rows = min(options.calibration_rows, len(data[0]))
    feeds = [{n: d[start:min(start + 32, rows)] for n, d in zip(names, data)}
             for start in range(0, rows, 32)]
    new, record = tflite_ranges.estimate(content, feeds, options.ranges)
    return tflite_ranges.with_ranges(content, new), [record]


def quantized(content: bytes, options: QuantizationOptions,
              float_nodes: Iterable[str] = ()) -> bytes:
    """The calibrated file `content` quantized by the converter's own quantizer
    (`mlir_quantize`, what `convert()` calls after calibrating), the ops whose output
    tensors are named in `float_nodes` left in float (as the QuantizationDebugger's
    selective quantization leaves them)."""
    io = tf.int8 if options.mode == "int8-io" else tf.float32
    content = mlir_quantize(content, False, input_data_type=io, output_data_type=io,
                            denylisted_nodes=list(float_nodes) or None)
    return deduplicate_readonly_buffers(tflite_padding.integer_pad_values(content))


def _run_converter(converted, model, options, calibrate_only, learned=False):
    """The converter's file of `converted` (calibrated only, or converted)."""
    settings = _converter_options(options, model, learned)

    def configure(converter):
        for name, value in settings.items():
            if name == "target_spec":
                for key, item in value.items():
                    setattr(converter.target_spec, key, item)
            else:
                setattr(converter, name, value)
        converter._experimental_calibrate_only = calibrate_only

    try:
        return flavour.of(converted).tflite_content(
            converted, input_signature(model), output_names(model), configure)
    except ConverterError as error:  # an op or dtype TFLite has no kernel for
        lines = [line.split("error: ", 1)[1].strip() for line in str(error).splitlines()
                 if "error: " in line]
        raise InputError(f"TensorFlow's TFLite converter cannot convert '{model.name}': "
                         f"{(lines or [str(error)])[0]}") from error
    except RuntimeError as error:  # the int16x8 quantizer lacks a kernel the model needs
        if "not yet supported for op" not in str(error):
            raise
        first = str(error).strip().splitlines()[0].rstrip(".")  # repeated per op
        raise InputError(f"TFLite {options.mode} export of '{model.name}': {first}; "
                         f"quantize it to int8, or export ONNX {options.mode} (its "
                         "unsupported ops stay in float)") from error


def tensor_types(content):
    """The tensor type names ("FLOAT32", "INT8", ...) used in a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    return {names.get(model.Subgraphs(s).Tensors(t).Type())
            for s in range(model.SubgraphsLength())
            for t in range(model.Subgraphs(s).TensorsLength())}


def op_counts(content):
    """Operator name -> count over every subgraph of a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    counts: collections.Counter[str] = collections.Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            counts[names.get(builtin, f"OP_{builtin}")] += 1
    return dict(counts)
