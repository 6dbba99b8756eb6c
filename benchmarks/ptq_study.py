"""The post-training quantization study: every mode, both formats, one calibration.

Each model of `MODELS` is trained here (`benchmarks.study_data`: digits; shapes at 32x32
and at 64x64; sounds; overlapping sound events per frame) and exported by
`keras_bn.export.to_tflite` and `to_onnx` from the same `QuantizationOptions`
(calibration: 300 training rows; evaluation: held-out rows neither trained nor
calibrated on) in each configuration of `CONFIGS`: float32, dynamic, int8, int16x8, and
int8 with float fallback to `TARGET` agreement. Per file: top-1 agreement with the Keras
model (per frame for the event detector), SQNR, size, latency in its runtime (batch 1,
median of 10, LiteRT with XNNPACK / onnxruntime CPU), the layers fallback kept in float,
and the export's wall time. Writes benchmarks/results/ptq_study.{md,json,png}.

TensorFlow's oneDNN kernels are turned off for this study: with them (TF 2.21, this
machine's CPU) training the 64x64 mini-Xception aborted the process with a heap
corruption ("corrupted size vs. prev_size") in the first epoch; with TensorFlow's own
kernels it trains.
"""

import os

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # before TensorFlow is imported (see above)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import study_data, study_files  # noqa: E402

MODELS = ("digits_mlp", "mini_xception", "mobilenet", "audio_cnn", "mini_xception64",
          "audio_frames")
#: The float fallback's agreement target.
TARGET = 0.99
#: Configuration name -> QuantizationOptions fields (calibration and evaluation added).
CONFIGS = {
    "float32": {"mode": None},
    "dynamic": {"mode": "dynamic"},
    "int8": {"mode": "int8"},
    "int16x8": {"mode": "int16x8"},
    f"int8 + fallback to {TARGET:.0%}": {"mode": "int8", "min_agreement": TARGET,
                                         "float_fallback": True},
}
FORMATS = ("tflite", "onnx")


def run_model(name, seed, folder):
    """The rows of one trained model, one per format and configuration."""
    from keras_bn.export import QuantizationOptions, to_onnx, to_tflite

    start = time.perf_counter()
    model, (x_cal, x_test, _) = study_data.trained(name, seed)
    trained_s = time.perf_counter() - start
    rows = []
    for fmt in FORMATS:
        export_to = to_tflite if fmt == "tflite" else to_onnx
        for config, fields in CONFIGS.items():
            calibrated = fields["mode"] in ("int8", "int16x8")
            options = QuantizationOptions(**fields, evaluation=x_test,
                                          calibration=x_cal if calibrated else None)
            path = os.path.join(folder, f"{name}_{seed}.{fmt}")
            start = time.perf_counter()
            result = export_to(model, path, quantize=options)
            score = result.evaluation[0]
            fallback = result.fallback
            rows.append({"model": name, "seed": seed, "format": fmt, "config": config,
                         "agreement": score.agreement, "sqnr_db": score.sqnr_db,
                         "size_kib": result.size_bytes / 1024,
                         "latency_ms": result.latency_ms,
                         "float_layers": None if fallback is None else fallback.layers,
                         "int8_agreement": None if fallback is None
                         else fallback.agreement_before,
                         "files_tried": None if fallback is None else fallback.files_tried,
                         "export_s": time.perf_counter() - start, "train_s": trained_s})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows) -> str:
    """The study as a markdown table, one line per model and configuration, the two
    formats side by side."""
    lines = ["| model | configuration | TFLite agreement % | ONNX agreement % | "
             "TFLite SQNR dB | ONNX SQNR dB | TFLite KiB | ONNX KiB | TFLite ms | ONNX ms | "
             "layers kept in float (TFLite / ONNX) |", "|---|---|---|---|---|---|---|---|---|"
             "---|---|"]
    cells = {(r["model"], r["config"], r["format"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for config in CONFIGS:
            t, o = cells.get((model, config, "tflite")), cells.get((model, config, "onnx"))
            if t is None or o is None:
                continue
            kept = ("-" if t["float_layers"] is None else
                    f"{len(t['float_layers'])} / {len(o['float_layers'])}")
            lines.append(
                f"| {model} | {config} | {100 * t['agreement']:.2f} | "
                f"{100 * o['agreement']:.2f} | {t['sqnr_db']:.1f} | {o['sqnr_db']:.1f} | "
                f"{t['size_kib']:.1f} | {o['size_kib']:.1f} | {t['latency_ms']:.3f} | "
                f"{o['latency_ms']:.3f} | {kept} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    configs = [c for c in CONFIGS if c != "float32"]
    figure, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    width = 0.8 / len(configs)
    for ax, fmt in zip(axes, FORMATS):
        for i, config in enumerate(configs):
            values = [next((100 * r["agreement"] for r in rows if r["model"] == m
                            and r["config"] == config and r["format"] == fmt), np.nan)
                      for m in models]
            ax.bar(np.arange(len(models)) + i * width, values, width, label=config)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
        ax.set_xticklabels(models, rotation=15)
        ax.set_title("TFLite (LiteRT)" if fmt == "tflite" else "ONNX (onnxruntime)")
        ax.axhline(100 * TARGET, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("top-1 agreement with the float model (%)")
    axes[0].set_ylim(94, 100.3)
    axes[1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=list(MODELS))
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite the table and plot from OUT/ptq_study.json")
    args = parser.parse_args(argv)

    def run():
        with tempfile.TemporaryDirectory() as folder:
            return [row for name in args.only for row in run_model(name, args.seed, folder)]

    rows = study_files.study_rows(args.out, "ptq_study", run, args.replot)
    print(study_files.publish(args.out, "ptq_study", rows, table, plot))


if __name__ == "__main__":
    main()
