"""Where a trained net's int8 agreement goes: the quantization-aware model's simulated
int8 forward (`keras_bn.quantization.quantize_aware`, untrained, calibrated on 300 rows
the float model did not train on), scored against the float model on the QAT study's
600 held-out rows with parts of its rounding switched off.

    python -m benchmarks.qat_budget [--only MODEL ...] [--seeds 2] [--first-seed 0]

Per model and seed: top-1 agreement with everything rounded; with int8 weights and
float activations (every kernel on the int8 grid); with int8 activations and float
weights; and with float weights and each activation tensor alone rounded. Beside them,
how many kernels the TFLite dynamic-range file (the QAT study's `dynamic` arm) holds in
int8: its converter leaves kernels of under 1024 values in float, so that file is not
"int8 weights everywhere". Writes OUT/qat_budget.{md,json} (OUT: benchmarks/results).
"""

import os

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # as the QAT study (its models, its setting)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import qat_study, study_data, study_files  # noqa: E402


def _agreement(model, rows, reference):
    from keras_bn.verification import predict

    got = predict(model, [rows])[0]
    return float(np.mean(np.argmax(got, -1) == np.argmax(reference, -1)))


def _int8_kernels(model, rows):
    """`(int8 weight tensors in the dynamic-range TFLite file, kernels in the model)`."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_bn.export import QuantizationOptions, to_tflite

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "dynamic.tflite")
        to_tflite(model, path, quantize=QuantizationOptions("dynamic", evaluation=rows),
                  latency_batch=None)
        details = Interpreter(path).get_tensor_details()
    # in a dynamic-range file the activations are float: its int8 tensors are kernels
    int8 = sum(1 for d in details if d["dtype"] == np.int8 and len(d["shape"]) >= 2)
    kernels = sum(1 for w in model.weights if "kernel" in w.name)
    return int8, kernels


def budget(name, seed):
    """One model's row: the agreements (fractions) and the dynamic file's kernels."""
    from keras_bn.layers.activation_quantizer import ActivationQuantizer
    from keras_bn.quantization import quantize_aware
    from keras_bn.verification import predict

    model, (x_cal, x_test, _), _ = study_data.trained(name, seed, training_rows=True,
                                                      unseen_calibration=True)
    reference = predict(model, [x_test])[0]
    row = {"model": name, "seed": seed}
    for bits, key in ((8, "int8 weights"), (None, "float weights")):
        aware = quantize_aware(model, x_cal, weight_bits=bits)
        quantizers = [q for q in aware.layers if isinstance(q, ActivationQuantizer)]
        ranges = [(q.low.numpy(), q.high.numpy()) for q in quantizers]
        row[f"{key}, int8 activations"] = _agreement(aware, x_test, reference)
        for q in quantizers:  # an empty range passes its tensor through
            q.low.assign(0.0), q.high.assign(0.0)
        row[f"{key}, float activations"] = _agreement(aware, x_test, reference)
        if bits is None:
            alone = {}
            for q, (low, high) in zip(quantizers, ranges):
                q.low.assign(low), q.high.assign(high)
                alone[q.name] = _agreement(aware, x_test, reference)
                q.low.assign(0.0), q.high.assign(0.0)
            row["one tensor rounded"] = alone
    row["dynamic file int8 kernels"], row["kernels"] = _int8_kernels(model, x_test)
    print(json.dumps(row), flush=True)
    return row


def table(rows) -> str:
    lines = ["| model | seed | all int8 | int8 weights only | int8 activations only | "
             "worst tensor alone | median tensor alone | dynamic file's int8 kernels |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alone = r["one tensor rounded"]
        worst = min(alone, key=alone.get)
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['int8 weights, int8 activations']:.2%} | "
            f"{r['int8 weights, float activations']:.2%} | "
            f"{r['float weights, int8 activations']:.2%} | {alone[worst]:.2%} ({worst}) | "
            f"{np.median(list(alone.values())):.2%} of {len(alone)} | "
            f"{r['dynamic file int8 kernels']} of {r['kernels']} |")
    return ("\n".join(lines) + "\n\nTop-1 agreement of the QAT model's simulated forward "
            "(untrained, min/max ranges) with the float model on 600 held-out rows; a "
            "tensor alone: float weights, only that activation rounded.\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=["mini_xception_noisy"],
                        choices=list(qat_study.MODELS) + ["mini_xception_noisy"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    rows = study_files.study_rows(args.out, "qat_budget", lambda: [
        budget(name, seed) for name in args.only
        for seed in range(args.first_seed, args.first_seed + args.seeds)])
    print(study_files.publish(args.out, "qat_budget", rows, table))


if __name__ == "__main__":
    main()
