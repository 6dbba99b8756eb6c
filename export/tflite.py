"""Export to TFLite with TensorFlow's converter, run in LiteRT's Interpreter."""

import collections
import os

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert import deduplicate_readonly_buffers, mlir_quantize
from tensorflow.lite.python.convert_phase import ConverterError

from keras_bn import flavour
from keras_bn.errors import InputError, VerificationError
from keras_bn.files.output import atomic_path, check_output
from keras_bn.export import checks, evaluation, post_training, through_tensorflow
from keras_bn.export.ranges import ESTIMATORS, estimate as estimated_ranges, with_ranges
from keras_bn.export.quantization import CALIBRATED, MODES, dequantize, quantize as quantized
from keras_bn.export._prepare import input_signature, output_names, prepare
from keras_bn.export.isolated import IsolatedRuntime
from keras_bn.folding import model_inputs, predict

QUANTIZE = tuple(MODES)


def to_tflite(model, path: str | os.PathLike, *, fold: bool = True,
              quantize: str | None = None, representative_data=None, verify: bool = True,
              samples=None, labels=None, rtol: float | None = None, atol: float = 1e-5,
              representative_steps: int = 200, evaluation_data=None,
              min_agreement: float | None = None, equalization: bool = False,
              bias_correction: bool | None = None, ranges: str = "minmax",
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
    SQNR): on `evaluation_data`, or by default on a held-out fifth of the calibration
    data (rows calibration never sees; int8 modes), or on `samples`. The file appears at
    `path` only once all of that passed (temporary file, then rename).

    Modes (`quantize`; `keras_bn.export.quantization.MODES` says what each is for):
    None (float32); "dynamic" (int8 weights, float activations; no calibration data);
    "float16" (float16 weights); "int8" (full integer, float inputs and outputs);
    "int8-io" (full integer, int8 inputs and outputs: the file's input and output
    scale and zero point say how to quantize and dequantize them, and verification
    does so).

    Args:
      model: A built Sequential or functional model, tf-keras or Keras 3 (on JAX it is
        converted by a TensorFlow process and the file verified against it here, see
        `through_tensorflow`); it is not changed.
      path: Where to write the `.tflite` file.
      fold: Fold BN layers first.
      quantize: None (float32), "dynamic", "float16", "int8" or "int8-io" (the last two
        calibrated on `representative_data`).
      representative_data: int8/int8-io calibration inputs: an array (one input), a list with
        one array per input, or a dict by input name; rows are samples, and the first
        `representative_steps` are used one at a time. Any size fits a dynamic dimension.
      verify: Run the file in LiteRT and compare with Keras.
      samples: Optional input array (or list) to verify on as well.
      labels: Optional integer labels of `samples`: the result then reports accuracy.
      rtol: Tolerance relative to the output scale for float32 files (see `to_onnx`).
      atol: Absolute slack for outputs near zero.
      representative_steps: Calibration rows for int8.
      evaluation_data: Inputs (as `representative_data`) to score the file on against the
        Keras model. Without it, int8 and int8-io files are scored on 20 % of the
        calibration rows (given 50 or more), held out at random (seed 0) and not
        calibrated on (with `verify`; the file is also verified on them unless `samples`
        are given), and other files on `samples` when given.
      min_agreement: Fail (VerificationError, no file written) when an output's top-1
        agreement with the Keras model on the evaluation rows is below this fraction
        (0.99: 99 %); needs an output with a class axis and evaluation rows.
      equalization: int8 modes: equalize the channels of consecutive layers on the
        calibration data's activation ranges before conversion
        (`keras_bn.export.equalization`; exact in float). Off by default: in the int8
        study (README) it helped some nets (the mini-Xception most, with bias
        correction) and cost SQNR on a dense one.
      bias_correction: int8 modes: remove from each bias the mean shift its int8
        weights cause on the calibration data (`keras_bn.export.bias_correction`).
        None (default): on in the int8 modes (it raised SQNR on every model of the
        study), off otherwise. `result.post_training` says what each technique changed
        and left alone.
      ranges: int8 modes: how each activation's int8 range is estimated from the
        calibration data (`keras_bn.export.ranges`): "minmax" (the converter's own),
        "percentile" (0.01 to 99.99 %) or "mse" (least expected squared error),
        recorded in `result.post_training` as "ranges (...)".
      latency_batch: Batch size of the latency measurement (median of 10 runs in
        LiteRT); None skips it.

    Returns:
      An `ExportResult`.

    Raises:
      keras_bn.errors.InputError: (a ValueError) `path` does not end in .tflite, an
        unknown `quantize`, int8 calibration or evaluation data that is missing, empty or
        does not fit the model's inputs, or a `min_agreement` that cannot be judged.
      keras_bn.VerificationError: a float32 file's outputs differ beyond tolerance, or an
        agreement below `min_agreement`; no file is left at `path`.
    """
    if quantize not in QUANTIZE:
        raise InputError(f"to_tflite got quantize={quantize!r}; use one of {QUANTIZE}.")
    if quantize in CALIBRATED:
        representative_data = calibration_data(model, representative_data, quantize)
    if bias_correction is None:
        bias_correction = quantize in CALIBRATED
    applied = post_training.techniques(equalization, bias_correction)
    if ranges not in ESTIMATORS:
        raise InputError(f"to_tflite got ranges={ranges!r}; use one of {ESTIMATORS}.")
    if ranges != "minmax" and quantize not in CALIBRATED:
        raise InputError(f"to_tflite(quantize={quantize!r}) of '{model.name}': ranges="
                         f"{ranges!r} estimates int8 activation ranges; use quantize="
                         "'int8' or 'int8-io'.")
    if applied and quantize not in CALIBRATED:
        raise InputError(f"to_tflite(quantize={quantize!r}) of '{model.name}': "
                         f"{' and '.join(applied)} work on int8 calibration data; use "
                         f"quantize='int8' or 'int8-io', or leave them off.")
    scored, scored_on = _evaluation_rows(model, quantize, representative_data,
                                         evaluation_data, samples, verify)
    if scored_on.startswith("held-out"):
        representative_data, scored = scored
        samples = scored if samples is None else samples
    _check_min_agreement(model, min_agreement, scored)
    check_output(path, (".tflite",))  # before minutes of conversion
    if flavour.of(model).backend() != "tensorflow":
        return through_tensorflow.export("tflite", model, path, dict(
            fold=fold, quantize=quantize, representative_data=representative_data,
            verify=verify, samples=samples, labels=labels, rtol=rtol, atol=atol,
            representative_steps=representative_steps, latency_batch=latency_batch,
            equalization=equalization, bias_correction=bias_correction, ranges=ranges,
            scoring=(scored, scored_on, min_agreement)))
    converted, plan = prepare(model, fold, verify, samples)
    converted, records = post_training.apply(converted, representative_data, applied)
    content, estimated = _convert(converted, model, quantize, representative_data,
                                  representative_steps, ranges)
    records += estimated
    if quantize in ("dynamic", *CALIBRATED) and not tensor_types(content) & {"INT8", "UINT8"}:
        small = (" (dynamic-range quantization leaves weights of under 1024 values in "
                 "float)" if quantize == "dynamic" else "")
        raise VerificationError(f"TFLite {quantize} export of '{model.name}': the converter "
                                f"wrote no int8 tensor{small}; the file would be float.")
    result = checks.ExportResult(path=os.fspath(path), fold_plan=plan,
                                  format="tflite" + (f"-{quantize}" if quantize else ""),
                                  post_training=records)
    result.op_counts = op_counts(content)
    with atomic_path(path, (".tflite",)) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
        verify_file(result, model, tmp, samples, labels, verify, rtol, atol, latency_batch,
                    check=quantize is None, scoring=(scored, scored_on, min_agreement))
    return result


def _evaluation_rows(model, quantize, representative_data, evaluation_data, samples,
                     verify):
    """`(rows, description)` the file is scored on: `evaluation_data`, else (int8 modes,
    with `verify`) `((calibration rows, held-out rows), "held-out ...")`, else
    `samples`, else `(None, "")`."""
    if evaluation_data is not None:
        rows = model_inputs(model, evaluation_data, "evaluation data")
        return rows, f"evaluation data ({len(rows[0])} rows)"
    if quantize in CALIBRATED and verify:
        calibration, held_out = evaluation.held_out_split(representative_data)
        if held_out is not None:
            return (calibration, held_out), (f"held-out calibration rows ({len(held_out[0])}"
                                             f" of {len(representative_data[0])}, not "
                                             "calibrated on)")
    if samples is not None:
        rows = model_inputs(model, samples, "samples")
        return rows, f"samples ({len(rows[0])} rows)"
    return None, ""


def _check_min_agreement(model, min_agreement, rows):
    if min_agreement is None:
        return
    if not 0 <= min_agreement <= 1:
        raise InputError(f"min_agreement={min_agreement!r} for '{model.name}': give a "
                         "fraction between 0 and 1 (0.99 for 99 %).")
    shapes = [tuple(o.shape) for o in model.outputs]
    if not any(len(s) >= 2 and (s[-1] or 0) >= 2 for s in shapes):
        raise InputError(f"min_agreement for '{model.name}': no output has a class axis "
                         f"(output shapes {shapes}); top-1 agreement cannot be judged.")
    if rows is None:
        raise InputError(f"min_agreement for '{model.name}': no rows to judge it on; give "
                         "evaluation_data (or samples, or int8 calibration data).")


def verify_file(result, model, file, samples, labels, verify, rtol, atol, latency_batch,
                check=True, scoring=(None, "", None)):
    """Runs the TFLite `file` in LiteRT (a child process: a LiteRT abort is a result)
    against `model` in inference mode, into `result` (error, accuracy, latency, size,
    and the scores on the rows of `scoring`, `(rows, their description, min_agreement)`);
    raises VerificationError beyond tolerance (with `check`: a float32 file) and below
    the minimum agreement."""
    rows, described, min_agreement = scoring
    if verify or labels is not None or latency_batch or rows is not None:
        with IsolatedRuntime("tflite", file) as runtime:
            names = flavour.of(model).input_names(model)
            outputs = output_names(model)
            dtypes = dict(runtime.inputs)

            def run(inputs):  # each input in the file's own dtype (float64, int32...)
                got = runtime({n: _fed(x, dtypes[n], runtime.quantization.get(n))
                               for n, x in zip(names, inputs)})
                return [_read(got[name], runtime.quantization.get(name)) for name in outputs]

            run.seconds = lambda: runtime.seconds
            checks.measure(result, model, run, samples, labels, verify,
                            checks.export_rtol(model, rtol), atol,
                            latency_batch, f"TFLite export of '{model.name}'",
                            check=check)
            if rows is not None:
                result.evaluation = evaluation.evaluate(lambda b: predict(model, b), run,
                                                        rows, outputs)
                result.evaluated_on = described
    result.size_bytes = os.path.getsize(file)
    lowest = evaluation.lowest_agreement(result.evaluation or [])
    if min_agreement is not None and lowest is not None and lowest < min_agreement:
        raise VerificationError(
            f"TFLite {result.format} export of '{model.name}': top-1 agreement with the "
            f"Keras model {lowest:.2%} on {described}, below min_agreement "
            f"{min_agreement:.2%}. Try another mode (quantize='dynamic' keeps float "
            "activations), more or more typical calibration data, or a lower minimum.")


def _fed(x, dtype, quantization):
    """An input batch as the file takes it: quantized where the file's input is an
    integer tensor standing for real values (int8-io), else cast to its dtype."""
    if quantization and np.issubdtype(np.asarray(x).dtype, np.floating):
        return quantized(x, *quantization, dtype)
    return np.asarray(x, dtype)


def _read(y, quantization):
    """An output as real values: dequantized where the file quantized it (int8-io)."""
    return dequantize(y, *quantization) if quantization else y


def _converter_options(quantize, model, data, steps):
    """The TFLite converter settings of a quantization mode, as attributes."""
    if quantize is None:
        return {}
    if quantize == "dynamic":  # no representative data: weights only
        return {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": {"supported_types": [tf.float16]}}
    names = flavour.of(model).input_names(model)

    def representative():
        for i in range(min(steps, len(data[0]))):
            yield {n: d[i:i + 1] for n, d in zip(names, data)}

    options = {"optimizations": [tf.lite.Optimize.DEFAULT],
               "representative_dataset": representative,
               "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}}
    if quantize == "int8-io":  # float inputs and outputs become int8 (integer ids stay)
        options.update(inference_input_type=tf.int8, inference_output_type=tf.int8)
    return options


def _convert(converted, model, quantize, representative_data, steps, ranges="minmax"):
    """`(file content, [Technique])`: the converter's file of `converted` in mode
    `quantize`; with another `ranges` estimator than "minmax", calibrated only, its
    activation ranges re-estimated (`keras_bn.export.ranges`), then quantized by the
    converter's own quantizer, with the record of the new ranges."""
    options = _converter_options(quantize, model, representative_data, steps)
    calibrate_only = quantize in CALIBRATED and ranges != "minmax"

    def configure(converter):
        for name, value in options.items():
            if name == "target_spec":
                for key, item in value.items():
                    setattr(converter.target_spec, key, item)
            else:
                setattr(converter, name, value)
        converter._experimental_calibrate_only = calibrate_only

    try:
        content = flavour.of(converted).tflite_content(
            converted, input_signature(model), output_names(model), configure)
        if not calibrate_only:
            return content, []
        names = flavour.of(model).input_names(model)
        rows = min(steps, len(representative_data[0]))
        feeds = [{n: d[start:min(start + 32, rows)] for n, d in zip(names, representative_data)}
                 for start in range(0, rows, 32)]
        new, record = estimated_ranges(content, feeds, ranges)
        io = tf.int8 if quantize == "int8-io" else tf.float32
        content = mlir_quantize(with_ranges(content, new), False, input_data_type=io,
                                output_data_type=io)
        return deduplicate_readonly_buffers(content), [record]
    except ConverterError as error:  # an op or dtype TFLite has no kernel for
        lines = [line.split("error: ", 1)[1].strip() for line in str(error).splitlines()
                 if "error: " in line]
        raise InputError(f"TensorFlow's TFLite converter cannot convert '{model.name}': "
                         f"{(lines or [str(error)])[0]}") from error


def calibration_data(model, data, quantize: str = "int8"):
    """int8 calibration inputs as a list in the model's input order, each in its input's
    dtype, checked against the model's input shapes (`keras_bn.folding.model_inputs`).

    `data` is one array (a single-input model), a list with one array per input, or a
    dict from input name to array.

    Raises:
      InputError: no data, no rows, a missing or unknown input, a shape that does not
        fit, or inputs with different numbers of rows.
    """
    if data is None:
        raise InputError(
            f"to_tflite(quantize={quantize!r}) needs representative_data: typical inputs "
            "(a few hundred rows of the training data) to calibrate the int8 ranges.")
    return model_inputs(model, data, "int8 calibration data")


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
    counts = collections.Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            counts[names.get(builtin, f"OP_{builtin}")] += 1
    return dict(counts)
