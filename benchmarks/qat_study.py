"""The quantization-aware training study: how much of a trained float model's answers
its integer-only int8 files keep after post-training quantization (the best of keras-bn's
estimators), after QAT on labels, and after QAT distilled from the float model on a few
hundred unlabelled rows.

    python -m benchmarks.qat_study [--seeds 3] [--first-seed 0] [--only MODEL ...]
        [--formats tflite onnx] [--arms ARM ...] [--qat-ranges mse]
        [--qat-bias-correction] [--augment] [--scored-rows N] [--replot]

Models (`benchmarks.study_data`, trained here per seed with keras_bn's BN): the
mini-Xception at 32x32 and 64x64 and the MobileNet-style net on synthesized shapes, and
the audio CNN on synthesized sounds: the post-training study's models whose int8 files
lose the most. `--only mini_xception_noisy` adds the 32x32 mini-Xception trained on
shapes with twice the noise (43 to 55 % accurate: many answers near a tie), where the
best PTQ file lost 3 points or more on some seeds. Per model and seed, each arm writes a
TFLite and an ONNX int8 file, run in its runtime and scored against the float model
(`QuantizationOptions(reference=...)`) on held-out rows neither trained, calibrated nor
distilled on (before commit ad08deb the QAT files were scored against the QAT model's
simulated forward); `--scored-rows N` adds N rows of `study_data.fresh` to them (600
rows resolve 0.17 points a row, and two files one rounding apart differ by a point):

- `dynamic`: int8 weights, float activations (the reference the goal is judged by; the
  TFLite converter leaves kernels of under 1024 values in float, on the 32x32
  mini-Xception 13 of its 18: `benchmarks.qat_budget`);
- `PTQ best`: full-integer int8 with the min/max or the MSE range estimator (bias
  correction on), per format, whichever agrees more with the float model on the
  calibration rows (as a user can pick; up to commit 3505c04 it was picked on the
  scored rows themselves, an edge no QAT arm had);
- `QAT untrained`: `quantize_aware(model, 300 rows)` exported as it is (its weights on
  the int8 grid, its ranges the calibration's), the start of both fine-tunings, which
  train with the BN statistics frozen from the first step (`freeze_after=0`; up to
  commit a77d6c9 they were updated once, by the first batch of 32 rows);
- `QAT labels`: the same, then `distill(..., labels=...)` on the training rows with
  their labels (`LABELS`);
- `QAT distilled`: the same QAT model distilled from the float model on the 300
  calibration rows, no labels (`DISTILLED`);
- `QAT distilled, more rows`: distilled from the float model on the 2,400 training rows
  without their labels (`MORE_ROWS`), for a user with more unlabelled rows.

The 300 calibration rows (of PTQ, of `quantize_aware` and of distillation) are rows the
float model did not train on (`study_data.trained(unseen_calibration=True)`), as a
user's unlabelled rows are. The QAT files take their learned ranges (no calibration).
Each fine-tuning holds out a fifth of its rows and keeps the best epoch by agreement with
the float model, then held-out error, if it beats the start beyond chance (`distill`'s
sign test; up to commit 34c4d0e any lead). Writes OUT/qat_study.{md,json,png} (OUT:
benchmarks/results by default; the unseen-rows run is in
benchmarks/results/qat_study_unseen, the bias-corrected start's in
benchmarks/results/qat_study_bias_correction, the runs on 3,600 rows in
benchmarks/results/qat_study_3600_rows*).

TensorFlow's oneDNN kernels are off, as in the post-training study (the 64x64
mini-Xception's training aborted with them on).
"""

import os

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # before TensorFlow is imported (see above)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import study_data, study_files  # noqa: E402

MODELS = ("mini_xception", "mobilenet", "audio_cnn", "mini_xception64")
FORMATS = ("tflite", "onnx")
#: The fine-tuning settings of each QAT arm (`keras_bn.quantization.distill`).
LABELS = {"epochs": 4, "learning_rate": 3e-5}
DISTILLED = {"epochs": 6, "learning_rate": 1e-4}
#: The arm distilled on the 2,400 training rows (no labels): more rows, smaller steps.
MORE_ROWS = {"epochs": 8, "learning_rate": 3e-5}
ARMS = ("dynamic", "PTQ best", "QAT untrained", "QAT labels", "QAT distilled",
        "QAT distilled, more rows")


def _export(model, fmt, path, options, x_test, y_test, reference):
    """The scores of `model`'s `fmt` file (quantized by `options`) on the held-out rows
    against `reference`, the float model (`QuantizationOptions.reference`: by default
    an export scores against the model exported, which for a QAT model is its
    simulated int8 forward)."""
    from keras_bn.export import to_onnx, to_tflite

    from keras_bn.errors import VerificationError

    export_to = to_tflite if fmt == "tflite" else to_onnx
    try:
        result = export_to(model, path, quantize=dataclasses.replace(
            options, reference=reference), samples=x_test, labels=y_test,
            latency_batch=None)
    except VerificationError as error:  # a file that fails its check: recorded, no score
        return {"agreement": None, "accuracy": None, "sqnr_db": None, "steps_off": None,
                "steps_within": None, "error": str(error)}
    return {"agreement": result.evaluation[0].agreement, "accuracy": result.accuracy,
            "sqnr_db": float(result.evaluation[0].sqnr_db), "steps_off": result.steps_off,
            "steps_within": result.steps_within}


def flip_and_noise(rows, rng):
    """Distillation's augmentation (`--augment`): images (4-D rows) mirrored left to
    right at random, then every row with Gaussian noise of 5 % of the rows' standard
    deviation. Any change is allowed: the float model answers the changed rows."""
    x = np.array(rows[0], copy=True)
    if x.ndim == 4:
        flip = rng.random(len(x)) < 0.5
        x[flip] = x[flip][:, :, ::-1]
    return [x + rng.normal(0, 0.05 * float(np.std(x)), x.shape).astype(x.dtype)]


def run_model(name, seed, folder, formats=FORMATS, arms=ARMS, ranges="minmax",
              augment=False, bias_correction=False, scored_rows=0):
    """The rows of one trained model (one seed): one per arm (of `ARMS`) and format;
    `ranges`: the QAT models' range estimator; `augment`: distil on `flip_and_noise`
    rows; `bias_correction`: of the QAT models' start; `scored_rows`: fresh rows
    scored besides the held-out ones."""
    from keras_bn.export import QuantizationOptions
    from keras_bn.quantization import distill, quantize_aware

    model, (x_cal, x_test, y_test), (x_train, y_train) = study_data.trained(
        name, seed, training_rows=True, unseen_calibration=True)
    if scored_rows:
        x_more, y_more = study_data.fresh(name, seed, scored_rows)
        x_test, y_test = np.concatenate([x_test, x_more]), np.concatenate([y_test, y_more])
    rows = []

    def add(arm, fmt, scores, seconds, **extra):
        rows.append({"model": name, "seed": seed, "arm": arm, "format": fmt, **scores,
                     "seconds": seconds, "scored_rows": len(x_test), **extra})
        print(json.dumps(rows[-1], default=float), flush=True)

    for fmt in formats:
        path = os.path.join(folder, f"{name}_{seed}.{fmt}")
        start = time.perf_counter()
        if "dynamic" in arms:
            add("dynamic", fmt, _export(model, fmt, path, QuantizationOptions(
                "dynamic", evaluation=x_test), x_test, y_test, model),
                time.perf_counter() - start)
        if "PTQ best" not in arms:
            continue
        best = None
        start = time.perf_counter()
        for estimator in ("minmax", "mse"):  # not `ranges`: the QAT arms' estimator
            options = QuantizationOptions("int8", calibration=x_cal, ranges=estimator)
            # picked as a user can: on the calibration rows, not on the rows scored
            picking = _export(model, fmt, path, dataclasses.replace(
                options, evaluation=x_cal), x_cal, None, model)["agreement"] or 0
            if best is None or picking > best[0]:
                best = picking, estimator, _export(model, fmt, path, dataclasses.replace(
                    options, evaluation=x_test), x_test, y_test, model)
        add("PTQ best", fmt, best[2], time.perf_counter() - start, ranges=best[1],
            picked_on_calibration=best[0])
    for arm, settings in (("QAT untrained", None), ("QAT labels", LABELS),
                          ("QAT distilled", DISTILLED),
                          ("QAT distilled, more rows", MORE_ROWS)):
        if arm not in arms:
            continue
        start = time.perf_counter()
        aware = quantize_aware(model, x_cal, ranges=ranges,  # BN statistics frozen
                               bias_correction=bias_correction)
        record = None
        if arm == "QAT labels":
            record = distill(aware, model, x_train, labels=y_train, verbose=0, **settings)
        elif arm == "QAT distilled, more rows":
            record = distill(aware, model, x_train, verbose=0, **settings)
        elif arm == "QAT distilled":
            record = distill(aware, model, x_cal, verbose=0,
                             augment=flip_and_noise if augment else None, **settings)
        trained_s = time.perf_counter() - start
        extra = {"ranges": ranges, "bias_correction": bias_correction}
        if record is not None:
            extra.update(augment=augment, best_epoch=record.best_epoch,
                         held_out_before=record.before, held_out_after=record.after)
        for fmt in formats:
            path = os.path.join(folder, f"{name}_{seed}_qat.{fmt}")
            add(arm, fmt, _export(aware, fmt, path, QuantizationOptions(
                "int8", evaluation=x_test), x_test, y_test, model), trained_s, **extra)
    return rows


def summarize(rows):
    """`{(model, arm, format): {metric: (mean, std)}}` over seeds."""
    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["arm"], row["format"]), []).append(row)
    out = {}
    for key, group in groups.items():
        out[key] = {}
        for metric in ("agreement", "accuracy", "sqnr_db", "steps_within"):
            values = [r[metric] for r in group if r.get(metric) is not None]
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
    lines = ["| model | arm | format | top-1 agreement % | accuracy % | SQNR dB | "
             "outputs within a step of the QAT model % |", "|---|---|---|---|---|---|---|"]
    for (model, arm, fmt), s in summary.items():
        lines.append(f"| {model} | {arm} | {fmt} | {_cell(s['agreement'], '.2f', 100)} | "
                     f"{_cell(s['accuracy'], '.2f', 100)} | {_cell(s['sqnr_db'], '.1f')} | "
                     f"{_cell(s['steps_within'], '.2f', 100)} |")
    seeds = max(s["seeds"] for s in summary.values())
    scored = sorted({r.get("scored_rows", 600) for r in rows})  # 600 before --scored-rows
    return ("\n".join(lines) + f"\n\nMean ± std over {seeds} seeds; agreement and accuracy "
            f"on {' or '.join(map(str, scored))} held-out rows. Goal: every integer-only "
            "file within 1 point of the dynamic file's agreement.\n")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    models = list(dict.fromkeys(m for m, _, _ in summary))
    figure, axes = plt.subplots(1, len(FORMATS), figsize=(13, 4.5), sharey=True)
    width = 0.8 / len(ARMS)
    for ax, fmt in zip(axes, FORMATS):
        for i, arm in enumerate(ARMS):
            values = [summary.get((m, arm, fmt), {}).get("agreement") for m in models]
            ax.bar(np.arange(len(models)) + i * width,
                   [v[0] * 100 if v else np.nan for v in values], width,
                   yerr=[v[1] * 100 if v else 0 for v in values], label=arm)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
        ax.set_xticklabels(models, rotation=15)
        ax.set_title(f"{fmt} files")
        ax.set_ylim(94, 100.2)
    axes[0].set_ylabel("held-out top-1 agreement with the float model (%)")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=list(MODELS),
                        choices=list(MODELS) + ["mini_xception_noisy"])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--qat-ranges", default="minmax", choices=("minmax", "mse"),
                        help="the QAT models' range estimator (quantize_aware's ranges=)")
    parser.add_argument("--qat-bias-correction", action="store_true",
                        help="start the QAT models bias-corrected (quantize_aware's "
                        "bias_correction=True)")
    parser.add_argument("--augment", action="store_true",
                        help="distil on flipped, noisy rows (flip_and_noise)")
    parser.add_argument("--scored-rows", type=int, default=0,
                        help="fresh rows scored besides the 600 held-out ones "
                        "(study_data.fresh)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite the table and plot from OUT/qat_study.json")
    args = parser.parse_args(argv)

    def run():
        with tempfile.TemporaryDirectory() as folder:
            return [row for name in args.only
                    for seed in range(args.first_seed, args.first_seed + args.seeds)
                    for row in run_model(name, seed, folder, args.formats, args.arms,
                                         args.qat_ranges, args.augment,
                                         args.qat_bias_correction, args.scored_rows)]

    rows = study_files.study_rows(args.out, "qat_study", run, args.replot)
    print(study_files.publish(args.out, "qat_study", rows, table, plot))


if __name__ == "__main__":
    main()
