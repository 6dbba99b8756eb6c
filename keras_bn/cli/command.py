"""The `keras-bn` command line: a thin shell over keras_bn's public functions.

Importing this module imports neither TensorFlow nor the rest of keras_bn (see
keras_bn/__init__.py): `--help` and argument errors answer at once.
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import traceback

from keras_bn.cli.progress import Steps
from keras_bn.quantization.options import CALIBRATED, ESTIMATORS, FORMAT_MODES, MODES

EXIT_OK, EXIT_FAILED_CHECK, EXIT_BAD_INPUT, EXIT_BUG = 0, 1, 2, 3

#: `export --quantize` modes (`keras_bn.quantization.options.MODES`; the module imports
#: neither TensorFlow nor Keras).
QUANTIZE_MODES = tuple(mode for mode in MODES if mode is not None)

EXAMPLES = """\
examples:
  keras-bn inspect model.keras
  keras-bn fold model.keras folded.keras
  keras-bn export model.keras model.onnx
  keras-bn export model.keras --onnx model.onnx --tflite model.tflite
  keras-bn export model.keras --tflite model_int8.tflite --int8 calibration.npy
  keras-bn export model.keras --tflite edge.tflite --quantize int8-io --calibration x.npy
  keras-bn export model.keras --onnx q.onnx --tflite q.tflite --quantize int8 --calibration x.npy
  keras-bn qat model.keras qat.keras --data unlabelled.npy
  keras-bn demo --out demo_results

output files:
  written only once complete and verified (a temporary file, then renamed); never over
  the input model; the extension must match the format (.keras/.h5, .onnx, .tflite);
  permissions as for any new file under your umask (an overwritten file keeps its own);
  missing parent folders are created. With --onnx and --tflite both files are written or
  neither: when one step fails, the message names it and no output is left.

exit status:
  0 done, 1 a numerical verification failed, 2 bad input (one line on stderr),
  3 an internal error (a bug in keras-bn: one line; --debug or KERAS_BN_DEBUG=1 prints
  the traceback).
"""

COMMANDS = {
    "fold": ("merge every BatchNormalization into its Conv/Dense neighbour",
             "  keras-bn fold model.keras folded.keras\n"
             "  keras-bn fold model.h5 folded.keras --no-verify"),
    "export": ("fold, then export to ONNX and/or TFLite and verify each file",
               "  keras-bn export model.keras --onnx model.onnx\n"
               "  keras-bn export model.keras --onnx m.onnx --tflite m.tflite\n"
               "  keras-bn export model.keras --tflite m8.tflite --int8 calibration.npy\n"
               "  keras-bn export model.keras --tflite m8.tflite --int8 calibration.npy "
               "--ranges mse --equalize\n"
               "  keras-bn export model.keras --onnx q.onnx --tflite q.tflite --quantize "
               "int16x8 --calibration x.npz --eval held_out.npz"),
    "sensitivity": ("which layers lose the answers when quantized: each alone quantized, "
                    "and all but it, scored on held-out rows",
                    "  keras-bn sensitivity model.keras --calibration x.npy\n"
                    "  keras-bn sensitivity model.keras --calibration x.npy --eval held_out.npy "
                    "--format onnx --plot sensitivity.png"),
    "qat": ("quantization-aware training with the BNs folded: fine-tune toward the "
            "model's own answers on unlabelled DATA (or on --labels), best held-out epoch "
            "kept; then `export OUT.keras --quantize int8` writes its learned int8 files",
            "  keras-bn qat model.keras qat.keras --data unlabelled.npy\n"
            "  keras-bn qat model.keras qat.keras --data x.npy --labels y.npy --epochs 5\n"
            "  keras-bn export qat.keras --tflite q.tflite --onnx q.onnx --quantize int8"),
    "inspect": ("table of the BN layers: shape, momentum, epsilon, statistics, foldability",
                "  keras-bn inspect model.keras"),
    "demo": ("train a small CNN with both layers on scikit-learn's digits, fold, export, "
             "verify, and print one table", "  keras-bn demo\n  keras-bn demo --epochs 3"),
}


class UserError(Exception):
    """Bad input found by the command line itself: one line on stderr, exit status 2."""


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-bn", description="Fold, export and inspect BatchNormalization in tf-keras "
        "models.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    made = {}
    for name, (summary, examples) in COMMANDS.items():
        made[name] = sub.add_parser(
            name, help=summary, description=summary, epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        made[name].add_argument("--verbose", action="store_true",
                                help="show TensorFlow's and the converters' own log lines")
        made[name].add_argument("--debug", action="store_true",
                                help="print the traceback of an internal error")
        if name != "demo":
            made[name].add_argument("model", metavar="MODEL",
                                    help="a .keras, .h5 or SavedModel file")
            made[name].add_argument("--import", dest="imports", action="append", default=[],
                                    metavar="MODULE",
                                    help="import MODULE (a name, or a .py file) first: the "
                                    "custom layers it registers may load (repeatable)")
            made[name].add_argument("--unsafe", action="store_true",
                                    help="load whatever the file asks for (Lambda layers, "
                                    "modules it names, file ops): runs code stored in the "
                                    "file; only for files you trust")
    for name in ("fold", "export"):
        made[name].add_argument(
            "--samples", metavar="DATA", help="verify on DATA (typical inputs: a .npy "
            "array for a one-input model, or a .npz with one array per input, named as "
            "the input; rows are samples) instead of random inputs in the model's range")
    made["fold"].add_argument("out", metavar="OUT", help="where to write the folded model "
                              "(.keras or .h5, or a SavedModel folder for a model with "
                              "layers revived from a SavedModel; not MODEL; missing "
                              "folders are created)")
    made["fold"].add_argument("--no-verify", action="store_true",
                              help="skip the numerical check of the folded model")
    made["export"].add_argument("out", nargs="?", metavar="OUT",
                                help="the file to write, its format from its extension "
                                "(.onnx or .tflite); or give --onnx and/or --tflite")
    made["export"].add_argument("--onnx", metavar="PATH", help="write an ONNX file (.onnx; "
                                "missing folders are created)")
    made["export"].add_argument("--tflite", metavar="PATH", help="write a TFLite file "
                                "(.tflite; missing folders are created)")
    made["export"].add_argument(
        "--quantize", choices=QUANTIZE_MODES, metavar="MODE",
        help="quantize every file written, from one calibration: dynamic (int8 weights, "
        "float activations), float16 (float16 weights), int8 (full integer, float inputs "
        "and outputs; ONNX: QDQ), int8-io (TFLite only: int8 inputs and outputs too), "
        "int16x8 (integer only, int16 activations); int8, int8-io and int16x8 need "
        "--calibration, except int8 and int8-io of a quantization-aware model (its "
        "learned ranges)")
    made["export"].add_argument("--calibration", metavar="DATA",
                                help="int8 calibration inputs: a .npy array (one-input "
                                "models) or a .npz with one array per model input, named "
                                "as the input; rows are samples")
    made["export"].add_argument("--eval", metavar="DATA",
                                help="score each file against the model on DATA (as "
                                "--calibration; held-out rows of your data): top-1 "
                                "agreement, errors, SQNR; by default calibrated files are "
                                "scored on a held-out fifth of the calibration data")
    made["export"].add_argument("--reference", metavar="MODEL",
                                help="score the files against this model instead (loaded "
                                "as MODEL is): the float model a quantization-aware "
                                "MODEL was made from")
    made["export"].add_argument("--min-agreement", metavar="FRACTION", type=float,
                                help="exit 1 (no file written) when a file's top-1 "
                                "agreement with the model is below FRACTION (0.99)")
    made["export"].add_argument("--float-fallback", action="store_true",
                                help="with --min-agreement: keep the most harmful layers in "
                                "float, fewest first, until the file reaches it (int8; ONNX "
                                "int16x8 too), instead of exit 1; the layers are printed")
    made["export"].add_argument("--int8", metavar="DATA",
                                help="short for --quantize int8 --calibration DATA")
    made["export"].add_argument("--float16", action="store_true",
                                help="short for --quantize float16")
    made["export"].add_argument("--equalize", action="store_true",
                                help="calibrated modes: cross-layer equalization of "
                                "consecutive layers before conversion (exact in float; helps "
                                "some depthwise-separable nets, see docs/quantization.md)")
    made["export"].add_argument("--no-bias-correction", action="store_true",
                                help="calibrated modes: leave the biases as they are (by "
                                "default each is corrected for the mean shift of its int8 "
                                "weights)")
    made["export"].add_argument("--ranges", choices=ESTIMATORS,
                                default="minmax",
                                help="int8: how activation ranges are estimated from the "
                                "calibration data: minmax (the converter's, default), "
                                "percentile (0.01-99.99 %%), mse (least squared error; of the "
                                "softmax's output for a softmax's input)")
    made["export"].add_argument("--no-fold", action="store_true", help="export without folding")
    made["export"].add_argument("--opset", type=int, help="ONNX opset (default: tf2onnx's)")
    made["sensitivity"].add_argument("--calibration", metavar="DATA", required=True,
                                     help="calibration inputs (.npy, or .npz by input name)")
    made["sensitivity"].add_argument("--eval", metavar="DATA",
                                     help="rows to score on (default: a held-out fifth of "
                                     "the calibration rows)")
    made["sensitivity"].add_argument("--format", choices=("tflite", "onnx"),
                                     default="tflite", help="the file format (default tflite)")
    made["sensitivity"].add_argument("--quantize", choices=CALIBRATED,
                                     default="int8", metavar="MODE",
                                     help="int8 (default), int8-io (TFLite) or int16x8 (ONNX)")
    made["sensitivity"].add_argument("--ranges", choices=ESTIMATORS, default="minmax",
                                     help="activation range estimator (as export's)")
    made["sensitivity"].add_argument("--plot", metavar="FILE",
                                     help="write a bar chart (.png, .svg or .pdf)")
    made["qat"].add_argument("out", metavar="OUT", help="where to write the trained "
                             "quantization-aware model (.keras; not MODEL)")
    made["qat"].add_argument("--data", metavar="DATA", required=True,
                             help="training inputs (.npy, or .npz by input name; a few "
                             "hundred typical rows; the first --calibration-rows also set "
                             "the activation ranges)")
    made["qat"].add_argument("--labels", metavar="LABELS",
                             help="integer class labels of DATA (.npy): train the task "
                             "loss instead of distilling from the model")
    made["qat"].add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    made["qat"].add_argument("--learning-rate", type=float, default=3e-5,
                             help="Adam's learning rate (default 3e-5: fine-tuning)")
    made["qat"].add_argument("--temperature", type=float, default=2.0,
                             help="distillation temperature of a softmax output (default 2)")
    made["qat"].add_argument("--held-out", type=float, default=0.2, metavar="FRACTION",
                             help="rows that judge each epoch, not trained on (default 0.2)")
    made["qat"].add_argument("--significance", type=float, default=0.05, metavar="P",
                             help="how likely by chance an epoch's lead over the start "
                             "may be and still replace it (sign test on the held-out "
                             "rows; default 0.05; 1: any lead)")
    made["qat"].add_argument("--freeze-after", type=int, default=0, metavar="STEPS",
                             help="training steps with the batch's BN statistics before "
                             "they freeze (default 0: frozen from the start, the model's "
                             "own statistics kept)")
    made["qat"].add_argument("--calibration-rows", type=int, default=500, metavar="N",
                             help="rows of DATA that set the activation ranges (default 500)")
    made["qat"].add_argument("--ranges", choices=ESTIMATORS, default="minmax",
                             help="how those rows set each range: the converters' min/max "
                             "(default), or a range with less expected error (mse, "
                             "percentile)")
    made["qat"].add_argument("--bias-correction", action="store_true",
                             help="start each int8 layer from its folded bias less the "
                             "mean shift its int8 kernel adds on those rows (as "
                             "post-training quantization's bias correction)")
    made["demo"].add_argument("--epochs", type=int, default=12, help="training epochs")
    made["demo"].add_argument("--out", default="demo_results",
                              help="folder for the exported files and the plot")
    return parser


def _load(args, steps, path=None):
    """The model at `path` (default: MODEL), loaded with the command's --unsafe and
    --import, as a step."""
    from keras_bn.files import load_model

    path = path or args.model
    return steps.run(f"load {path}", load_model, path, unsafe=args.unsafe,
                     imports=args.imports)


def _fold(args):
    from keras_bn.files.output import atomic_folder, atomic_path, check_output
    from keras_bn.folding import fold

    from keras_bn.files import load_arrays
    from keras_bn.layers.find import revived_layers

    inputs = [args.model] + _given(args.samples)
    as_file = args.out.endswith((".keras", ".h5"))
    check_output(args.out, (), inputs)
    samples = load_arrays(args.samples) if args.samples else None
    steps = Steps(3)
    model = _load(args, steps)
    revived = revived_layers(model)
    if revived and as_file:
        names = ", ".join(f"{name} ({cls})" for name, cls in revived[:5])
        raise UserError(f"{args.out}: the model has layers revived from a SavedModel "
                        f"without their classes ({names}); a .keras or .h5 file of it "
                        "would need those classes to load. Give a folder path (no .keras "
                        "or .h5) to write a SavedModel.")
    if not revived and not as_file:
        check_output(args.out, (".keras", ".h5"), inputs)
    folded, plan = steps.run("fold" + ("" if args.no_verify else " and verify"),
                             fold, model, verify=not args.no_verify, samples=samples,
                             return_plan=True)

    def save():
        if revived:
            with atomic_folder(args.out, inputs=[args.model]) as tmp:
                folded.save(tmp, save_format="tf")
            return
        with atomic_path(args.out, (".keras", ".h5"), inputs=[args.model]) as tmp:
            folded.save(tmp)

    steps.run(f"save {args.out}", save)
    print(plan.table())
    print(f"{len(model.layers)} layers -> {len(folded.layers)} layers; written to {args.out}")


def _export(args):
    from keras_bn.files.output import all_or_nothing, check_output
    from keras_bn.files import load_arrays

    if args.out:
        _positional_output(args)
    if not (args.onnx or args.tflite):
        raise UserError("nothing to export: give --onnx PATH and/or --tflite PATH")
    quantize, calibration = _quantization(args)
    techniques = _techniques(args, quantize)
    inputs = ([args.model] + _given(calibration) + _given(args.samples) + _given(args.eval)
              + _given(args.reference))
    for path, suffix in ((args.onnx, ".onnx"), (args.tflite, ".tflite")):
        if path:
            check_output(path, (suffix,), inputs)
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min-agreement {args.min_agreement:g}: give a fraction between 0 "
                        "and 1 (0.99 for 99 %)")
    if args.float_fallback:
        _check_fallback(args, quantize)
    from keras_bn import export  # TensorFlow: after the checks that answer at once

    options = export.QuantizationOptions(
        quantize, calibration=load_arrays(calibration) if calibration else None,
        evaluation=load_arrays(args.eval) if args.eval else None,
        min_agreement=args.min_agreement, float_fallback=args.float_fallback, **techniques)
    samples = load_arrays(args.samples) if args.samples else None
    steps = Steps(1 + bool(args.reference) + bool(args.onnx) + bool(args.tflite))
    model = _load(args, steps)
    if args.reference:
        options = dataclasses.replace(options, reference=_load(args, steps, args.reference))
    if quantize in CALIBRATED and not calibration:
        from keras_bn.quantization.inference import state

        if not (quantize in ("int8", "int8-io") and state(model).learned):
            raise UserError(f"--quantize {quantize} is calibrated on typical inputs: give "
                            "--calibration DATA (a .npy or .npz of a few hundred rows); "
                            "only a quantization-aware model's int8 files take its learned "
                            "ranges instead")
    if samples is not None:
        from keras_bn.verification import model_inputs

        samples = model_inputs(model, samples, f"--samples {args.samples}")
    results = []
    fold = not args.no_fold
    outputs = [path for path in (args.onnx, args.tflite) if path]
    try:
        with all_or_nothing():  # one failed file: none is written
            if args.onnx:
                results.append(steps.run(f"fold, convert, verify {args.onnx}", export.to_onnx,
                                         model, args.onnx, quantize=options, fold=fold,
                                         opset=args.opset, samples=samples))
            if args.tflite:
                results.append(steps.run(f"fold, convert, verify {args.tflite}",
                                         export.to_tflite, model, args.tflite,
                                         quantize=options, fold=fold, samples=samples))
    except Exception as error:
        if len(outputs) > 1:
            setattr(error, "keras_bn_outcome", f"none of {', '.join(outputs)} was written")
        raise
    print(results_table(results))
    for r in results:
        for technique in r.post_training:
            print(f"{r.format} {technique.summary()}")
        if r.fallback is not None:
            print(f"{r.format} {r.fallback.summary(r.size_bytes, r.latency_ms)}")
        if r.steps_off is not None:
            print(f"{r.format} learned ranges: {r.steps_within:.2%} of the output values "
                  f"within a step (after a softmax: two, and a step of its logits) of the "
                  f"quantization-aware model's "
                  f"simulated forward on "
                  f"{r.steps_on} (the largest difference {r.steps_off:.1f} steps)")
    scored = [r for r in results if r.evaluation]
    if scored:
        print(scores_table(scored))
        if not args.reference and any(r.steps_off is not None for r in scored):
            print("scored against the quantization-aware model (its simulated int8 "
                  "forward, which the files match by construction), not the float model: "
                  "give --reference FLOAT_MODEL to score them against it")


def _positional_output(args):
    """`export MODEL OUT`: OUT's extension says the format (as `fold MODEL OUT`)."""
    fmt = {".onnx": "onnx", ".tflite": "tflite"}.get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise UserError(f"{args.out}: OUT must end in .onnx or .tflite (the format comes "
                        "from the extension); a folded Keras model is `keras-bn fold MODEL "
                        "OUT.keras`")
    if getattr(args, fmt):
        raise UserError(f"{args.out} and --{fmt} {getattr(args, fmt)} both ask for the "
                        f"{fmt} file: give one")
    setattr(args, fmt, args.out)


def _check_fallback(args, quantize):
    """--float-fallback's own checks, before anything is loaded."""
    from keras_bn.quantization.options import FALLBACK_MODES

    if args.min_agreement is None:
        raise UserError("--float-fallback keeps layers in float until the file reaches "
                        "--min-agreement: give --min-agreement FRACTION too")
    for flag, path, fmt in (("--onnx", args.onnx, "onnx"), ("--tflite", args.tflite, "tflite")):
        if path and quantize not in FALLBACK_MODES[fmt]:
            raise UserError(f"--float-fallback with {flag} is for --quantize "
                            f"{' or '.join(FALLBACK_MODES[fmt])}"
                            + (f", not {quantize}" if quantize else ""))


def _sensitivity(args):
    from keras_bn.files.output import check_output
    from keras_bn.files import load_arrays

    inputs = [args.model, args.calibration] + _given(args.eval)
    if args.plot:
        check_output(args.plot, (".png", ".svg", ".pdf"), inputs)
    from keras_bn.quantization.options import FALLBACK_MODES

    if args.quantize not in FALLBACK_MODES[args.format]:
        raise UserError(f"--quantize {args.quantize} cannot be measured layer by layer in "
                        f"{args.format}: use {' or '.join(FALLBACK_MODES[args.format])}")
    from keras_bn.quantization.sensitivity import sensitivity

    calibration = load_arrays(args.calibration)
    evaluation = load_arrays(args.eval) if args.eval else None
    steps = Steps(2 + bool(args.plot))
    model = _load(args, steps)
    report = steps.run(f"quantize {args.format} {args.quantize} layer by layer and score",
                       sensitivity, model, calibration, evaluation=evaluation,
                       mode=args.quantize, fmt=args.format, ranges=args.ranges)
    if args.plot:
        from keras_bn.files.output import atomic_path

        def plot():
            with atomic_path(args.plot, (".png", ".svg", ".pdf"), inputs=inputs) as tmp:
                report.plot(tmp)

        steps.run(f"plot {args.plot}", plot)
    print(report.table())


def _techniques(args, quantize):
    """The post-training options of --equalize, --no-bias-correction and --ranges."""
    asked = [f for f, on in (("--equalize", args.equalize),
                             ("--no-bias-correction", args.no_bias_correction),
                             (f"--ranges {args.ranges}", args.ranges != "minmax")) if on]
    allowed = ("int8", "int8-io") if args.ranges != "minmax" else CALIBRATED
    if asked and quantize not in allowed:
        raise UserError(f"{' and '.join(asked)} {'is' if len(asked) == 1 else 'are'} for "
                        f"--quantize {' or '.join(allowed)}"
                        + (f", not {quantize}" if quantize else ""))
    return {"equalization": args.equalize, "ranges": args.ranges,
            "bias_correction": False if args.no_bias_correction else None}


def _given(path):
    return [path] if path else []


def _quantization(args):
    """The mode and calibration file of `export`'s options (--int8 DATA and --float16
    being short for --quantize ...), checked against every format written."""
    given = [flag for flag, on in (("--quantize", args.quantize), ("--int8", args.int8),
                                   ("--float16", args.float16)) if on]
    if len(given) > 1:
        raise UserError(f"choose one of {' and '.join(given)}")
    quantize = args.quantize or ("int8" if args.int8 else "float16" if args.float16 else None)
    calibration = args.int8 or args.calibration
    for flag, path, fmt in (("--onnx", args.onnx, "onnx"), ("--tflite", args.tflite, "tflite")):
        if path and quantize not in FORMAT_MODES[fmt]:
            takes = [m for m in FORMAT_MODES[fmt] if m]
            raise UserError(f"{flag} {path}: {fmt.upper() if fmt == 'onnx' else 'TFLite'} "
                            f"has no {quantize} mode; --quantize applies to every file "
                            f"written, and {flag} takes {', '.join(takes)}")
    if args.calibration and quantize not in CALIBRATED:
        raise UserError(f"--calibration is for --quantize {' or '.join(CALIBRATED)}"
                        + (f", not {quantize}" if quantize else ""))
    return quantize, calibration


def results_table(results):
    """One line per export: format, size, max error, its tolerance, the model's own
    float32 noise on the same inputs, latency, ops."""
    figure = lambda value: "-" if value is None else f"{value:.2e}"
    rows = [("format", "file", "size", "max abs error", "tolerance", "float32 noise",
             "latency / batch", "ops")]
    for r in results:
        ops = sum(r.op_counts.values())
        rows.append((r.format, r.path, f"{r.size_bytes / 1024:.1f} KiB", figure(r.max_error),
                     figure(r.tolerance), figure(r.noise),
                     "-" if r.latency_ms is None else
                     f"{r.latency_ms:.2f} ms (batch {r.latency_batch})", str(ops)))
    from keras_bn.tools.table import aligned

    return aligned(rows)


def scores_table(results):
    """One line per output of each scored file: rows, top-1 agreement, errors, SQNR."""
    from keras_bn.tools.table import aligned

    rows = [("format", "output", "scored on", "top-1 agreement", "max abs error",
             "mean abs error", "SQNR")]
    for r in results:
        for s in r.evaluation:
            rows.append((r.format, s.name, r.evaluated_on,
                         "-" if s.agreement is None else f"{s.agreement:.2%}",
                         f"{s.max_error:.2e}", f"{s.mean_error:.2e}",
                         f"{s.sqnr_db:.1f} dB"))
    return aligned(rows)


def _qat(args):
    from keras_bn.files import load_arrays
    from keras_bn.files.output import atomic_path, check_output

    inputs = [args.model, args.data] + _given(args.labels)
    check_output(args.out, (".keras",), inputs)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--freeze-after",
                             args.freeze_after, 0), ("--calibration-rows",
                             args.calibration_rows, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: give at least {low}")
    data = load_arrays(args.data)
    labels = None
    if args.labels:
        labels = load_arrays(args.labels)
        if isinstance(labels, dict) or labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(f"--labels {args.labels}: give one integer class label per "
                            "row of DATA (a 1-D integer .npy)")
    steps = Steps(4)
    model = _load(args, steps)
    from keras_bn.quantization import distill, quantize_aware
    from keras_bn.verification import model_inputs

    rows = model_inputs(model, data, f"--data {args.data}")
    aware, plan = steps.run(
        "make the quantization-aware model", quantize_aware, model,
        [r[:args.calibration_rows] for r in rows], freeze_after=args.freeze_after,
        ranges=args.ranges, bias_correction=args.bias_correction, return_plan=True)
    record = steps.run("train" + (" on the labels" if labels is not None else
                                  " toward the model's answers"),
                       distill, aware, model, rows,
                       labels=labels, epochs=args.epochs, learning_rate=args.learning_rate,
                       temperature=args.temperature, held_out=args.held_out,
                       significance=args.significance)

    def save():
        with atomic_path(args.out, (".keras",), inputs=inputs) as tmp:
            aware.save(tmp)

    steps.run(f"save {args.out}", save)
    print(f"{len(plan.fused)} layer -> BN pair(s) trained folded and int8, "
          f"{len(plan.plain)} layer(s) without a BN with int8 weights, "
          f"{len(plan.quantized)} activation(s) quantized, BN statistics frozen "
          + (f"after {args.freeze_after} steps" if args.freeze_after else "from the start"))
    for bn, reason in plan.kept.items():
        print(f"kept BN '{bn}': {reason}")
    if args.bias_correction:
        print(f"bias correction: {len(plan.corrected)} layer(s) corrected"
              + "".join(f"; '{name}' not: {why}" for name, why in plan.uncorrected.items()))
    print(record.summary())
    print(f"written to {args.out}; its int8 files: keras-bn export {args.out} --tflite "
          "q.tflite --onnx q.onnx --quantize int8")


def _inspect(args):
    from keras_bn.tools.inspection import summary

    model = _load(args, Steps(1))
    rows = summary(model)
    if not rows:
        print(f"'{model.name}' has no BatchNormalization layers.")


def _demo(args):
    from keras_bn.cli import demo

    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    demo.main(epochs=args.epochs, out=args.out)


def main(argv=None):
    """Runs `keras-bn`; returns the exit status (0 done, 1 a verification failed, 2 bad
    input, 3 an internal error)."""
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("KERAS_BN_DEBUG", "") not in ("", "0")
    handlers = {"fold": _fold, "export": _export, "inspect": _inspect, "demo": _demo,
                "sensitivity": _sensitivity, "qat": _qat}
    with contextlib.ExitStack() as quiet:
        if not args.verbose:
            quiet.enter_context(_quiet_native_logs())
        quiet.enter_context(_escaping_output())
        return _run(handlers[args.command], args, debug)


@contextlib.contextmanager
def _escaping_output():
    """Everything the command prints passes through `terminal.EscapingStream`: a name
    or message a model file chose reaches the terminal as text, never as a control
    sequence."""
    from keras_bn.tools.terminal import EscapingStream

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(sys.stdout), EscapingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def _run(handler, args, debug):
    from keras_bn.errors import InputError, VerificationError
    from keras_bn.tools.terminal import escaped

    name = f"keras-bn {args.command}"
    try:
        handler(args)
    except VerificationError as error:  # the check did its job: a result, not bad input
        print(f"{name}: verification failed{_where(error)}: {escaped(error)}"
              f"{_outcome(error)}", file=sys.stderr)
        return EXIT_FAILED_CHECK
    except (UserError, InputError, OSError) as error:  # bad input: one line
        print(f"{name}: error{_where(error)}: {escaped(error)}{_outcome(error)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything else is keras-bn's fault, not the user's
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"{name}: internal error (a bug in keras-bn; please report it with the "
              f"command line): {type(error).__name__}: {escaped(error)}"
              + ("" if debug else " (run with --debug for the traceback)"), file=sys.stderr)
        return EXIT_BUG
    return EXIT_OK


def _where(error):
    """' in step "<label>"' for an error raised inside a `Steps` step."""
    step = getattr(error, "keras_bn_step", None)
    from keras_bn.tools.terminal import escaped

    return f' in step "{escaped(step)}"' if step else ""


def _outcome(error):
    """'; <what was and was not written>' where a command said it."""
    outcome = getattr(error, "keras_bn_outcome", None)
    return f"; {outcome}" if outcome else ""


@contextlib.contextmanager
def _quiet_native_logs():
    """Silences what TensorFlow, tf2onnx and the TFLite converter print on their own
    (C++ start-up lines, converter and XNNPACK chatter, Python warnings): the process's
    file descriptor 2 goes to /dev/null, while Python's `sys.stderr` (progress lines and
    errors) keeps writing to the real stderr through a duplicate of it."""
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in ("tensorflow", "tf2onnx", "absl", "h5py"):
                logging.getLogger(logger).setLevel(logging.ERROR)
            yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = saved_stream
