"""The int8 study: what each TFLite mode and each post-training technique keeps of a
trained float model's answers, on held-out data.

    python -m benchmarks.int8_study [--seeds 3] [--only MODEL ...] [--replot]

Models, all trained here from seeded data that ships or is synthesized
(`benchmarks.study_data`), with keras_bn's BatchNormalization:

- `digits_mlp`: scikit-learn's digits (8x8), Dense + BN + ReLU;
- `mini_xception`: synthesized 32x32 shapes (7 classes), the mini-Xception of Arriaga
  et al. (SeparableConv2D + BN, residual Adds);
- `mobilenet`: the same shapes, a MobileNet-style net of depthwise-separable blocks
  (DepthwiseConv2D + BN + ReLU, 1x1 Conv2D + BN + ReLU);
- `audio_cnn`: synthesized one-second signals (6 classes: tones, chords, chirps,
  amplitude-modulated tones, noise bursts), Conv1D + BN + ReLU + pooling;
- `audio_regressor`: the same CNN predicting a tone's frequency (a regression output:
  judged by SQNR and error, no top-1).

Each model is trained per seed and exported in each configuration of `CONFIGS` by
`keras_bn.export.to_tflite` (calibration: 300 training rows; evaluation: held-out rows
neither trained nor calibrated on). Per configuration: top-1 agreement with the Keras
model, accuracy, SQNR, max error, size, LiteRT latency (batch 1, median of 10), mean
and standard deviation over the seeds. Writes benchmarks/results/int8_study.{md,json}
and int8_study.png.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import study_data, study_files

#: Configuration name -> QuantizationOptions fields.
CONFIGS = {
    "float32": {"mode": None},
    "float16": {"mode": "float16"},
    "dynamic": {"mode": "dynamic"},
    "int8": {"mode": "int8", "bias_correction": False},  # the converter's own
    "int8 +equalization": {"mode": "int8", "equalization": True, "bias_correction": False},
    "int8 +bias correction": {"mode": "int8", "bias_correction": True},  # the default
    "int8 +both": {"mode": "int8", "equalization": True, "bias_correction": True},
    "int8 +bias correction +percentile ranges": {"mode": "int8", "ranges": "percentile"},
    "int8 +bias correction +mse ranges": {"mode": "int8", "ranges": "mse"},
}
MODELS = ("digits_mlp", "mini_xception", "mobilenet", "audio_cnn", "audio_regressor")
_CALIBRATION_ROWS = 300


def run_model(name, seed, folder):
    """The rows of one trained model (one seed), one per configuration."""
    model, (x_cal, x_test, y_test) = study_data.trained(name, seed)
    rows = []
    for config, options in CONFIGS.items():
        path = os.path.join(folder, f"{name}_{seed}.tflite")
        calibration = x_cal if options["mode"] in ("int8", "int8-io") else None
        start = time.perf_counter()
        from keras_bn.export import QuantizationOptions, to_tflite

        quantize = QuantizationOptions(**options, calibration=calibration, evaluation=x_test)
        result = to_tflite(model, path, quantize=quantize, samples=x_test[:64],
                           labels=None if y_test.dtype.kind == "f" else y_test[:64])
        score = result.evaluation[0]
        accuracy = (None if y_test.dtype.kind == "f"
                    else _accuracy(result, model, x_test, y_test, path))
        rows.append({"model": name, "seed": seed, "config": config,
                     "agreement": score.agreement, "sqnr_db": score.sqnr_db,
                     "max_error": score.max_error, "mean_error": score.mean_error,
                     "accuracy": accuracy, "size_kib": result.size_bytes / 1024,
                     "latency_ms": result.latency_ms,
                     "techniques": [t.summary() for t in result.post_training],
                     "export_s": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _accuracy(result, model, x, y, path):
    """Held-out accuracy of the written file (LiteRT), on all of `x`."""
    from keras_bn.export.isolated import IsolatedRuntime
    from keras_bn.export.tflite import _fed, _read

    with IsolatedRuntime("tflite", path) as runtime:
        (name, dtype), = runtime.inputs
        output = runtime.outputs[0]
        predictions = []
        for start in range(0, len(x), 64):
            got = runtime({name: _fed(x[start:start + 64], dtype,
                                      runtime.quantization.get(name))})
            predictions.append(_read(got[output], runtime.quantization.get(output)))
    return float(np.mean(np.argmax(np.concatenate(predictions), -1) == y))


def summarize(rows):
    """`{(model, config): {metric: (mean, std)}}` over seeds."""
    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["config"]), []).append(row)
    out = {}
    for key, group in groups.items():
        out[key] = {}
        for metric in ("agreement", "accuracy", "sqnr_db", "max_error", "size_kib",
                       "latency_ms"):
            values = [r[metric] for r in group if r[metric] is not None]
            out[key][metric] = ((float(np.mean(values)), float(np.std(values)))
                                if values else None)
        out[key]["seeds"] = len(group)
    return out


def _cell(value, fmt, scale=1.0):
    if value is None:
        return "-"
    mean, std = value
    return f"{mean * scale:{fmt}} ± {std * scale:{fmt}}"


def table(rows) -> str:
    summary = summarize(rows)
    lines = ["| model | configuration | top-1 agreement % | accuracy % | SQNR dB | "
             "max error | size KiB | latency ms |", "|---|---|---|---|---|---|---|---|"]
    for (model, config), s in summary.items():
        lines.append(f"| {model} | {config} | {_cell(s['agreement'], '.2f', 100)} | "
                     f"{_cell(s['accuracy'], '.2f', 100)} | {_cell(s['sqnr_db'], '.1f')} | "
                     f"{_cell(s['max_error'], '.3g')} | {_cell(s['size_kib'], '.1f')} | "
                     f"{_cell(s['latency_ms'], '.3f')} |")
    seeds = max(s["seeds"] for s in summary.values())
    return "\n".join(lines) + f"\n\nMean ± std over {seeds} seeds.\n"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    models = list(dict.fromkeys(m for m, _ in summary))
    configs = [c for c in CONFIGS if c != "float32"]
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(configs)
    for i, config in enumerate(configs):
        for ax, metric in zip(axes, ("agreement", "sqnr_db")):
            values = [summary.get((m, config), {}).get(metric) for m in models]
            means = [v[0] * (100 if metric == "agreement" else 1) if v else np.nan
                     for v in values]
            stds = [v[1] * (100 if metric == "agreement" else 1) if v else 0 for v in values]
            ax.bar(np.arange(len(models)) + i * width, means, width, yerr=stds,
                   label=config)
    for ax, label in zip(axes, ("top-1 agreement with the float model (%)",
                                "SQNR against the float model (dB)")):
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
        ax.set_xticklabels(models, rotation=15)
        ax.set_ylabel(label)
    axes[0].set_ylim(96, 100.2)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(MODELS))
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite the table and plot from OUT/int8_study.json")
    args = parser.parse_args(argv)

    def run():
        with tempfile.TemporaryDirectory() as folder:
            return [row for name in args.only for seed in range(args.seeds)
                    for row in run_model(name, seed, folder)]

    rows = study_files.study_rows(args.out, "int8_study", run, args.replot)
    print(study_files.publish(args.out, "int8_study", rows, table, plot))


if __name__ == "__main__":
    main()
