"""Export to TFLite with TensorFlow's converter, run in LiteRT's Interpreter."""

import collections
import os

import numpy as np
import tensorflow as tf

from keras_bn.errors import InputError
from keras_bn.export import verify as _verify
from keras_bn.export._prepare import input_signature, prepare

QUANTIZE = (None, "float16", "int8")


def to_tflite(model, path, *, fold=True, quantize=None, representative_data=None,
              verify=True, samples=None, labels=None, rtol=None, atol=1e-5,
              representative_steps=200, latency_batch=1):
    """Exports `model` to a TFLite file and runs the file in LiteRT to check it.

    Folds the BatchNormalization layers first (`keras_bn.fold`, itself verified), converts
    with `tf.lite.TFLiteConverter` (dynamic batch dimension; inputs and outputs stay
    float32 in every mode), then runs the written file with `ai_edge_litert`'s Interpreter
    on a random batch and on `samples`. float32 files must match the Keras model within
    tolerance; float16 and int8 files cannot, so their error (and accuracy, with
    `labels`) is measured and reported instead. The file appears at `path` only once all
    of that passed (temporary file, then rename).

    Args:
      model: A built Sequential or functional tf-keras model; it is not changed.
      path: Where to write the `.tflite` file.
      fold: Fold BN layers first.
      quantize: None (float32), "float16" (float16 weights) or "int8" (full integer
        kernels, calibrated on `representative_data`).
      representative_data: Input array (or list, one per input) for int8 calibration;
        its first `representative_steps` rows are used one at a time.
      verify: Run the file in LiteRT and compare with Keras.
      samples: Optional input array (or list) to verify on as well.
      labels: Optional integer labels of `samples`: the result then reports accuracy.
      rtol: Tolerance relative to the output scale for float32 files (see `to_onnx`).
      atol: Absolute slack for outputs near zero.
      representative_steps: Calibration rows for int8.
      latency_batch: Batch size of the latency measurement (median of 10 runs in
        LiteRT); None skips it.

    Returns:
      An `ExportResult`.

    Raises:
      ValueError: an unknown `quantize`, or int8 without `representative_data`.
      keras_bn.VerificationError: a float32 file's outputs differ beyond tolerance; no file
        is left at `path`.
    """
    from ai_edge_litert.interpreter import Interpreter

    if quantize not in QUANTIZE:
        raise InputError(f"to_tflite got quantize={quantize!r}; use one of {QUANTIZE}.")
    if quantize == "int8" and representative_data is None:
        raise InputError(
            "to_tflite(quantize='int8') needs representative_data: an array of typical "
            "inputs (a few hundred rows of the training data) to calibrate the int8 ranges.")
    converted, plan = prepare(model, fold, verify)
    content = _convert(converted, model, quantize, representative_data, representative_steps)
    result = _verify.ExportResult(path=os.fspath(path), fold_plan=plan,
                                  format="tflite" + (f"-{quantize}" if quantize else ""))
    result.op_counts = op_counts(content)
    with _verify.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
        if verify or labels is not None or latency_batch:
            runner = Interpreter(model_path=tmp).get_signature_runner()
            names, outputs = model.input_names, model.output_names

            def run(inputs):
                got = runner(**{n: np.asarray(x, np.float32) for n, x in zip(names, inputs)})
                return [got[name] for name in outputs]

            _verify.measure(result, model, run, samples, labels, verify,
                            _verify.export_rtol(model, rtol), atol,
                            latency_batch, f"TFLite export of '{model.name}'",
                            check=quantize is None)
        result.size_bytes = os.path.getsize(tmp)
    return result


def _convert(converted, model, quantize, representative_data, steps):
    signature = input_signature(model)
    names = list(model.output_names)

    @tf.function(input_signature=signature)
    def serve(*inputs):
        outputs = converted(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(names, outputs))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], converted)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        data = (representative_data if isinstance(representative_data, (list, tuple))
                else [representative_data])
        data = [np.asarray(d, np.float32) for d in data]

        def representative():
            for i in range(min(steps, len(data[0]))):
                yield [d[i:i + 1] for d in data]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


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
