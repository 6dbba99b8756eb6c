"""Export to ONNX with tf2onnx, checked with onnx.checker and run in onnxruntime."""

import collections
import contextlib
import os
from collections.abc import Callable

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.export import (checks, onnx_fake_quant, onnx_quantization, selective,
                             through_tensorflow)
from keras_bn.export._prepare import input_signature, output_names, quantization_input
from keras_bn.export.frozen_graph import frozen_graph
from keras_bn.export.isolated import IsolatedRuntime, TimedRun
from keras_bn.files.output import atomic_path, check_output
from keras_bn.flavour import Inputs, Model
from keras_bn.quantization.options import QuantizationOptions, prepared


def to_onnx(model: Model, path: str | os.PathLike, *,
            quantize: str | QuantizationOptions | None = None, fold: bool = True,
            opset: int | None = None, verify: bool = True, samples: Inputs | None = None,
            labels: Inputs | None = None, rtol: float | None = None, atol: float = 1e-5,
            latency_batch: int | None = 1) -> checks.ExportResult:
    """Exports `model` to an ONNX file and proves the file computes what the model does.

    Folds the BatchNormalization layers first (`keras_bn.fold`, itself verified), converts
    with tf2onnx (dynamic batch dimension), checks the graph with `onnx.checker`, runs the
    written file in onnxruntime on a random batch (and on `samples`) and compares with the
    Keras model in inference mode. The file appears at `path` only once all of that
    passed: it is written to a temporary file and renamed.

    Quantization (`quantize`: a mode name, or the `keras_bn.quantization.QuantizationOptions`
    that `to_tflite` takes too): "int8" (QDQ: int8 weights per output channel, int8
    activations), "int16x8" (QDQ with int16 activations), "dynamic" (int8 weights,
    activations quantized at run time) and "float16" (float16 weights and compute,
    float32 inputs and outputs), written by onnxruntime's quantization tools from the
    float file (`keras_bn.export.onnx_quantization`). The calibrated modes run the
    options' techniques (bias correction by default) on the folded Keras model first and
    calibrate on the same rows with the same range estimator as `to_tflite`, so both
    files come from one calibration. Quantized files are measured, not held to the float
    tolerance, and scored against the Keras model as `to_tflite` scores its files
    (`result.evaluation`).

    Args:
      model: A built Sequential or functional model, tf-keras or Keras 3 (on JAX it is
        converted by a TensorFlow process and the file verified against it here, see
        `through_tensorflow`); it is not changed.
      path: Where to write the `.onnx` file.
      quantize: None (float32), a mode name that needs no data ("dynamic", "float16"),
        or `QuantizationOptions`.
      fold: Fold BN layers first (the exported graph then has no BN and no per-channel
        Mul/Add left from one).
      opset: ONNX opset; None lets tf2onnx choose its default.
      verify: Run the file in onnxruntime and compare with Keras.
      samples: Optional input array (or list, one per model input) to verify on as well.
      labels: Optional integer labels of `samples`: the result then reports accuracy.
      rtol: Tolerance relative to the output scale. None: 1e-4 for a float32 model
        (onnxruntime's kernels sum in another order than TensorFlow's; over a deep float32
        network that reaches ~1e-5), 10 units in the last place of the compute dtype under
        mixed precision (float16: 9.8e-3).
      atol: Absolute slack for outputs near zero.
      latency_batch: Batch size of the latency measurement (median of 10 runs in
        onnxruntime); None skips it.

    Returns:
      An `ExportResult` (`post_training`: what each technique changed and left alone;
      `evaluation`: the scores; `fallback`: with the options' `float_fallback`, the
      layers kept in float and their cost).

    Raises:
      keras_bn.errors.InputError: (a ValueError) `path` does not end in .onnx, the
        model cannot be folded or converted (the message says why), a mode ONNX has not
        ("int8-io"), or options and data as `to_tflite` refuses them.
      keras_bn.VerificationError: a float32 file's outputs differ beyond tolerance, or an
        agreement below the options' `min_agreement`; no file is left at `path`.
    """
    import onnx

    ready = prepared(quantize, model, "onnx", verify, samples)
    options = ready.options
    if ready.scored_on.startswith("held-out") and samples is None:
        samples = ready.scored
    check_output(path, (".onnx",))  # before minutes of conversion
    if flavour.of(model).backend() != "tensorflow":
        return through_tensorflow.export("onnx", model, path, ready, dict(
            fold=fold, opset=opset, verify=verify, samples=samples, labels=labels,
            rtol=rtol, atol=atol, latency_batch=latency_batch))
    converted, plan, records = quantization_input(model, fold, verify, samples, options,
                                                  ready.learned)
    proto = _convert(converted, input_signature(model), output_names(model), opset)
    _check(proto, model.name)
    fallback = None
    if options.float_fallback:
        with contextlib.closing(selective.OnnxLayers(model, converted, ready, proto)) as file:
            content, fallback = selective.with_fallback(file, latency_batch)
            proto, records = onnx.load_from_string(content), records + file.records
    elif options.mode is not None:
        learned = onnx_fake_quant.learned_ranges(proto) if ready.learned else None
        content, estimated = onnx_quantization.quantize(
            proto.SerializeToString(), options, flavour.of(model).input_names(model),
            f"ONNX {options.mode} export of '{model.name}'", learned)
        proto, records = onnx.load_from_string(content), records + estimated
    result = checks.ExportResult(path=os.fspath(path), fold_plan=plan, post_training=records,
                                 format="onnx" + (f"-{options.mode}" if options.mode else ""),
                                 fallback=fallback)
    result.op_counts = dict(collections.Counter(node.op_type for node in proto.graph.node))
    with atomic_path(path, (".onnx",)) as tmp:
        onnx.save(proto, tmp)
        verify_file(result, model, tmp, samples, labels, verify, rtol, atol, latency_batch,
                    check=options.mode is None, ready=ready)
    return result


def verify_file(result, model, file, samples, labels, verify, rtol, atol, latency_batch,
                check=True, ready=None):
    """Runs the ONNX `file` in onnxruntime (a child process: a crash is a result, not
    ours) against `model` in inference mode, into `result` (error, accuracy, latency,
    size, and the scores on the rows `ready` names); raises VerificationError beyond
    tolerance (with `check`: a float32 file) and below the options' minimum agreement."""
    if verify or labels is not None or latency_batch or (ready and ready.scored is not None):
        with IsolatedRuntime("onnx", file) as runtime:
            outputs = output_names(model)
            run = file_runner(runtime, flavour.of(model).input_names(model), outputs)
            checks.measure(result, model, run, samples, labels, verify,
                           checks.export_rtol(model, rtol), atol,
                           latency_batch, f"ONNX export of '{model.name}'", check=check)
            checks.score(result, model, run, ready, outputs)
            if ready is not None and ready.learned and verify:
                checks.check_simulated(result, model, run, ready, samples,
                                       f"ONNX export of '{model.name}'")
    result.size_bytes = os.path.getsize(file)
    checks.check_agreement(result, model, ready)


def file_runner(runtime, names, outputs):
    """`run(inputs) -> [outputs]` of an ONNX file open in `runtime` (an
    `IsolatedRuntime`); `run.seconds()` is the runtime's own time of the last call."""
    def run(inputs):
        got = runtime({n: np.asarray(x) for n, x in zip(names, inputs)})
        return [got[name] for name in outputs]

    return TimedRun(runtime, run)


def _check(proto, name):
    """`onnx.checker`, with the TensorFlow ops tf2onnx left unconverted named first."""
    import onnx

    unconverted = sorted({f"{node.op_type} ({node.name})" for node in proto.graph.node
                          if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unconverted:
        raise InputError(
            f"tf2onnx could not convert these TensorFlow ops of '{name}': "
            f"{', '.join(unconverted)}: tf2onnx {_tf2onnx_version()} has no ONNX "
            "conversion for them. Export that model to TFLite, or build the layer from "
            "other ops.")
    onnx.checker.check_model(proto)


@contextlib.contextmanager
def _environment(name, value):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _convert(model, signature, names, opset):
    """tf2onnx's conversion of the model's frozen serving function (calls inlined, see
    `frozen_graph`; inputs and outputs named as the model's, `names`), without its
    per-optimizer safety copies when it can.

    By default tf2onnx deep-copies the whole graph, weights included, before each of its
    graph optimizers so it can skip one that fails; on ResNet50 that is half the
    conversion time (9.5 s -> 6.4 s here). Setting TF2ONNX_CATCH_ERRORS turns the copies
    off (tf2onnx 1.17 tests only that the variable is set); should an optimizer then fail,
    the conversion is simply run again in tf2onnx's safe default mode.
    """
    function = flavour.of(model).serving_function(model, signature, names)
    graph_def, inputs, outputs = frozen_graph(function)
    # The function returns a dict, whose outputs TensorFlow orders by sorted key.
    renames = dict(zip(inputs, [spec.name for spec in signature]))
    renames.update(zip(outputs, sorted(names)))
    arguments = dict(input_names=inputs, output_names=outputs, opset=opset,
                     tensors_to_rename=renames, custom_op_handlers=CUSTOM_OPS)
    try:
        with _environment("TF2ONNX_CATCH_ERRORS", "false"):
            return _tf2onnx(graph_def, arguments)
    except Exception:  # noqa: BLE001 - any optimizer failure: retry the safe way
        with _environment("TF2ONNX_CATCH_ERRORS", None):
            return _tf2onnx(graph_def, arguments)


def _tf2onnx_version():
    import tf2onnx

    return tf2onnx.__version__


def _tf2onnx(graph_def, arguments):
    import tf2onnx

    return tf2onnx.convert.from_graph_def(graph_def, **arguments)[0]


def _erfc(ctx, node, name, args):
    """TensorFlow's Erfc (the exact GELU's, in ConvNeXt) as ONNX `1 - Erf(x)`: ONNX has
    Erf (opset 9) but no Erfc, and tf2onnx 1.17 no handler for it. In float32,
    1 - erf(x) is exact to the rounding of 1 (6e-8) in absolute terms, not relative to
    erfc's tail; GELU, x/2 * erfc(-x/sqrt 2), keeps that absolute bound times |x|/2."""
    del name, args
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(node.name + "_one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


#: tf2onnx handlers for TensorFlow ops it does not convert itself.
CUSTOM_OPS: dict[str, tuple[Callable, list]] = {"Erfc": (_erfc, []),
              "FakeQuantWithMinMaxArgs": (onnx_fake_quant.fake_quant, [])}
