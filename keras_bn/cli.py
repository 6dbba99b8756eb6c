"""The `keras-bn` command line: a thin shell over keras_bn's public functions."""

import argparse
import os
import sys

from keras_bn.progress import Steps

EXAMPLES = """\
examples:
  keras-bn inspect model.keras
  keras-bn fold model.keras folded.keras
  keras-bn export model.keras --onnx model.onnx --tflite model.tflite
  keras-bn export model.keras --tflite model_int8.tflite --int8 calibration.npy
  keras-bn demo --out demo_results
"""

COMMANDS = {
    "fold": ("merge every BatchNormalization into its Conv/Dense neighbour",
             "  keras-bn fold model.keras folded.keras\n"
             "  keras-bn fold model.h5 folded.keras --no-verify"),
    "export": ("fold, then export to ONNX and/or TFLite and verify each file",
               "  keras-bn export model.keras --onnx model.onnx\n"
               "  keras-bn export model.keras --onnx m.onnx --tflite m.tflite\n"
               "  keras-bn export model.keras --tflite m8.tflite --int8 calibration.npy"),
    "inspect": ("table of the BN layers: shape, momentum, epsilon, statistics, foldability",
                "  keras-bn inspect model.keras"),
    "demo": ("train a small CNN with both layers on scikit-learn's digits, fold, export, "
             "verify, and print one table", "  keras-bn demo\n  keras-bn demo --epochs 3"),
}


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


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
        if name != "demo":
            made[name].add_argument("model", metavar="MODEL",
                                    help="a .keras, .h5 or SavedModel file")
            made[name].add_argument("--unsafe", action="store_true",
                                    help="allow Lambda layers (runs code stored in the file)")
    made["fold"].add_argument("out", metavar="OUT", help="where to write the folded model "
                              "(.keras or .h5)")
    made["fold"].add_argument("--no-verify", action="store_true",
                              help="skip the numerical check of the folded model")
    made["export"].add_argument("--onnx", metavar="PATH", help="write an ONNX file")
    made["export"].add_argument("--tflite", metavar="PATH", help="write a TFLite file")
    made["export"].add_argument("--int8", metavar="DATA.npy",
                                help="quantize the TFLite file to int8, calibrated on this array")
    made["export"].add_argument("--float16", action="store_true",
                                help="store the TFLite weights as float16")
    made["export"].add_argument("--no-fold", action="store_true", help="export without folding")
    made["export"].add_argument("--opset", type=int, help="ONNX opset (default: tf2onnx's)")
    made["demo"].add_argument("--epochs", type=int, default=12, help="training epochs")
    made["demo"].add_argument("--out", default="demo_results",
                              help="folder for the exported files and the plot")
    return parser


def _load(args, steps):
    from keras_bn.loading import load_model

    return steps.run(f"load {args.model}", load_model, args.model, unsafe=args.unsafe)


def _fold(args):
    import keras_bn
    from keras_bn.export.verify import atomic_path

    if os.path.splitext(args.out)[1] not in (".keras", ".h5"):
        raise UserError(f"{args.out}: OUT must end in .keras or .h5")
    steps = Steps(3)
    model = _load(args, steps)
    folded, plan = steps.run("fold" + ("" if args.no_verify else " and verify"),
                             keras_bn.fold, model, verify=not args.no_verify,
                             return_plan=True)

    def save():
        with atomic_path(args.out) as tmp:
            folded.save(tmp)

    steps.run(f"save {args.out}", save)
    print(plan.table())
    print(f"{len(model.layers)} layers -> {len(folded.layers)} layers; written to {args.out}")


def _export(args):
    import numpy as np

    from keras_bn import export

    if not (args.onnx or args.tflite):
        raise UserError("nothing to export: give --onnx PATH and/or --tflite PATH")
    if args.int8 and not args.tflite:
        raise UserError("--int8 quantizes the TFLite file: give --tflite PATH too")
    if args.int8 and args.float16:
        raise UserError("choose one of --int8 and --float16")
    data = None
    if args.int8:
        try:
            data = np.load(args.int8, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UserError(f"{args.int8}: cannot read a numpy array: {error}") from error
    steps = Steps(1 + bool(args.onnx) + bool(args.tflite))
    model = _load(args, steps)
    if data is not None and tuple(data.shape[1:]) != tuple(model.inputs[0].shape[1:]):
        raise UserError(f"{args.int8}: rows of shape {tuple(data.shape[1:])}, but the model "
                        f"takes {tuple(model.inputs[0].shape[1:])}")
    results = []
    fold = not args.no_fold
    if args.onnx:
        results.append(steps.run(f"fold, convert, verify {args.onnx}", export.to_onnx, model,
                                 args.onnx, fold=fold, opset=args.opset))
    if args.tflite:
        quantize = "int8" if args.int8 else "float16" if args.float16 else None
        results.append(steps.run(f"fold, convert, verify {args.tflite}", export.to_tflite,
                                 model, args.tflite, fold=fold, quantize=quantize,
                                 representative_data=data))
    print(results_table(results))


def results_table(results):
    """One line per export: format, size, max error, latency, ops."""
    rows = [("format", "file", "size", "max abs error", "latency / batch", "ops")]
    for r in results:
        ops = sum(r.op_counts.values())
        rows.append((r.format, r.path, f"{r.size_bytes / 1024:.1f} KiB",
                     "-" if r.max_error is None else f"{r.max_error:.2e}",
                     "-" if r.latency_ms is None else
                     f"{r.latency_ms:.2f} ms (batch {r.latency_batch})", str(ops)))
    from keras_bn._table import aligned

    return aligned(rows)


def _inspect(args):
    import keras_bn

    model = _load(args, Steps(1))
    rows = keras_bn.summary(model)
    if not rows:
        print(f"'{model.name}' has no BatchNormalization layers.")


def _demo(args):
    from keras_bn import demo

    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    demo.main(epochs=args.epochs, out=args.out)


def main(argv=None):
    """Runs `keras-bn`; returns the exit status (0 ok, 1 failed check, 2 bad input)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # TensorFlow's Python warnings would bury the results
    handlers = {"fold": _fold, "export": _export, "inspect": _inspect, "demo": _demo}
    from keras_bn.folding import VerificationError

    try:
        handlers[args.command](args)
    except VerificationError as error:  # the check did its job: a result, not bad input
        print(f"keras-bn {args.command}: verification failed: {error}", file=sys.stderr)
        return 1
    except (UserError, ValueError, OSError) as error:  # bad input: one line, no traceback
        print(f"keras-bn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
