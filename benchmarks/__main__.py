"""`python -m benchmarks [--quick] [--out DIR]` (also `make bench`): every case in one process.

Each case interleaves its contenders (A B A B ..., warm-up first) and reports medians of
CPU time (`time.process_time`, all threads) and wall time, and their ratios. The CPU-time
ratio is the one judged against the targets: on a shared 2-core machine wall-clock ratios
of identical code swing by +-20 %, CPU-time ratios by a few %. Control rows measure a
contender against an identical copy of itself, so the table shows that noise floor.
"""

import argparse
import datetime
import os
import platform
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import (exporting, harness, inference, models, qat,  # noqa: E402
                        recalibration, training)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def meta():
    from importlib.metadata import version

    packages = ["tensorflow", "tf-keras", "keras", "onnxruntime", "tf2onnx", "onnx",
                "ai-edge-litert", "numpy"]
    return {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
            "cpu": _cpu_name(), "python": platform.python_version(),
            "versions": {p: version(p) for p in packages}}


def bench_training(quick, rows, log):
    shapes = training.QUICK_SHAPES if quick else training.SHAPES
    base = "tf-keras BN"
    for case, shape in shapes.items():
        log(f"training step {case}")
        timings = harness.interleave(training.contenders(shape), repeats=5 if quick else 15,
                                     warmup=3, inner=3)
        for subject, target in [("tf-keras BN, control", None), ("keras_bn BN", 1.05),
                                ("keras_bn BRN", 1.15), ("tf-keras renorm", None)]:
            rows.append(harness.Row(f"train step {case}", subject, base, timings[subject],
                                    timings[base], target))
        rows.append(harness.Row(f"train step {case}", "keras_bn BRN", "tf-keras renorm",
                                timings["keras_bn BRN"], timings["tf-keras renorm"]))


def bench_keras3_training(quick, rows, log):
    """The Keras 3 layers' training step against Keras 3's BatchNormalization on the
    active backend (`KERAS_BACKEND`): on TensorFlow ours run on the fused kernel, Keras
    3's on its generic ops; on JAX both on `keras.ops`, jitted."""
    import keras

    shapes = training.QUICK_SHAPES if quick else training.SHAPES
    base = "Keras 3 BN"
    backend = keras.backend.backend()
    for case, shape in shapes.items():
        case = f"{case} ({backend})"
        log(f"Keras 3 training step {case}")
        timings = harness.interleave(training.keras3_contenders(shape),
                                     repeats=5 if quick else 15, warmup=3, inner=3)
        for subject, target in [("Keras 3 BN, control", None), ("keras_bn.keras3 BN", 1.05),
                                ("keras_bn.keras3 BRN", 1.15), ("Keras 3 renorm", None)]:
            rows.append(harness.Row(f"Keras 3 train step {case}", subject, base,
                                    timings[subject], timings[base], target))
        rows.append(harness.Row(f"Keras 3 train step {case}", "keras_bn.keras3 BRN",
                                "Keras 3 renorm", timings["keras_bn.keras3 BRN"],
                                timings["Keras 3 renorm"]))


def bench_qat(quick, rows, log):
    """A quantization-aware training step (`quantize_aware`, calibrated; the BN
    statistics of the batch, and frozen) against the float model's step: tf-keras and
    Keras 3 here, Keras 3's JAX and torch backends in child processes. Goal: 1.5x the
    float step's CPU time."""
    import keras

    measured = {"tf-keras": qat.timings("tf_keras", quick),
                f"Keras 3 ({keras.backend.backend()})": qat.timings("keras3", quick)}
    for backend in qat.BACKENDS:
        log(f"QAT step, Keras 3 on {backend} (child process)")
        measured[f"Keras 3 ({backend})"] = qat.in_child(backend, quick)
    for case, timing in measured.items():
        rows.append(harness.Row(f"QAT train step, {case}", "QAT", "float", timing["QAT"],
                                timing["float"], 1.5))
        rows.append(harness.Row(f"QAT train step, statistics frozen, {case}", "QAT",
                                "float", timing[qat.FROZEN], timing["float"], 1.5))


def bench_inference(quick, rows, log, workdir):
    names = ["MobileNetV2"] if quick else ["ResNet50", "MobileNetV2"]
    batches = [1] if quick else [1, 32]
    for name in names:
        variants = inference.variants(models.application(name, quick))
        for runtime in inference.RUNTIMES:
            for batch in batches:
                log(f"inference {name} {runtime} batch {batch}")
                made = inference.contenders(variants, runtime, batch, workdir)
                repeats = (7 if quick else 21) if batch == 1 else 7
                timings = harness.interleave(made, repeats=repeats, warmup=2,
                                             inner=20 if batch == 1 else 1)
                case = f"{name} inference, {runtime}, batch {batch}"
                twin = timings[f"{runtime} twin"]
                rows.append(harness.Row(case, "twin, control", "BN-free twin",
                                        timings[f"{runtime} twin, control"], twin))
                rows.append(harness.Row(case, "folded", "BN-free twin",
                                        timings[f"{runtime} folded"], twin, 1.02))
                rows.append(harness.Row(case, "unfolded", "BN-free twin",
                                        timings[f"{runtime} unfolded"], twin))


def bench_export(quick, rows, log, workdir, extra):
    name = "MobileNetV2" if quick else "ResNet50"
    model = models.application(name, quick)
    log(f"export and fold time, {name}")
    repeats, warmup = (1 if quick else 3), 1
    timings = harness.interleave(exporting.contenders(model, workdir, repeats + warmup),
                                 repeats=repeats, warmup=warmup)
    ours, theirs = "keras_bn to_onnx (fold + convert)", "tf2onnx from_keras (unfolded)"
    rows.append(harness.Row(f"{name} export to ONNX", ours, theirs, timings[ours],
                            timings[theirs], 0.8))
    rows.append(harness.Row(f"{name} fold", "keras_bn fold", theirs,
                            timings["keras_bn fold"], timings[theirs], 0.1))
    extra["verification_seconds"] = exporting.verification_seconds(model, workdir)
    extra["fold_peak_memory_mib"] = exporting.fold_peak_memory_mib(model)
    extra["fold_model"] = name


QUICK_NOTE = ("--quick: small shapes and models, 1-7 repeats. It checks that every case "
              "runs; its ratios are noise-level and are not judged against the targets "
              "(`make bench` is the measurement).")


def bench_recalibration(quick, rows, log, extra):
    """`keras_bn.recalibrate` / `model.predict` on the same images: one pass (the target),
    and passes until converged (the default); then passes and time against depth."""
    import numpy as np
    import tf_keras

    import keras_bn

    name = "MobileNetV2" if quick else "ResNet50"
    shape = (64, 64, 3) if quick else (224, 224, 3)
    thin = {"alpha": 0.35} if quick else {}
    model = models.realistic_bn(getattr(tf_keras.applications, name)(
        weights=None, input_shape=shape, classifier_activation=None, **thin))  # trained-like
    images = 32 if quick else 256
    # Inputs from the distribution the statistics were set on (random weights amplify
    # any other: uniform [0, 1) images overflowed float32 in ResNet50's 4th stage).
    x = np.random.RandomState(2).randn(images, *shape).astype("float32")
    log(f"recalibrate vs predict, {name}, {images} images")
    start = [v.numpy() for v in model.non_trainable_variables]

    def recalibrate(passes):
        def run():  # each call starts from the same statistics
            for variable, value in zip(model.non_trainable_variables, start):
                variable.assign(value)
            keras_bn.recalibrate(model, x, batch_size=32, passes=passes, verbose=0)
        return run

    contenders = {
        "model.predict": lambda: model.predict(x, batch_size=32, verbose=0),
        "recalibrate, 1 pass": recalibrate(1),
        "recalibrate, until converged": recalibrate(None),
    }
    timings = harness.interleave(contenders, repeats=2, warmup=1)
    case = f"{name} recalibration, {images} images"
    rows.append(harness.Row(case, "recalibrate, 1 pass", "model.predict",
                            timings["recalibrate, 1 pass"], timings["model.predict"], 1.5))
    rows.append(harness.Row(case, "recalibrate, until converged", "model.predict",
                            timings["recalibrate, until converged"], timings["model.predict"]))
    log("recalibrate: passes and time against depth")
    extra["recalibration_depth"] = recalibration.depth_rows(quick, 400 if quick else 1000)


def write_markdown(rows, info, extra, path):
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    text = ([QUICK_NOTE, ""] if info.get("quick") else []) + [
            f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python "
            f"{info['python']}; {versions}.", "",
            "Ratios are subject / baseline medians of interleaved runs; targets are judged on "
            "CPU time (all threads of the process).", "", harness.markdown_table(rows), ""]
    if "recalibration_depth" in extra:
        text += ["", "Recalibration against depth (`benchmarks/recalibration.py`):", "",
                 recalibration.markdown(extra["recalibration_depth"]), ""]
    if "fold_model" in extra:
        text.append(
            f"{extra['fold_model']}: verification after export "
            f"{extra['verification_seconds']:.2f} s (timed apart from the export); fold peak "
            f"memory {extra['fold_peak_memory_mib']:.1f} MiB (tracemalloc).")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(text) + "\n")
    os.replace(tmp, path)


GROUPS = ["training", "keras3", "qat", "inference", "export", "recalibration"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="check that every case runs: small shapes and models, few "
                        "repeats, ratios not judged (about a minute)")
    parser.add_argument("--out", default="benchmarks/results",
                        help="folder for results.json and results.md")
    parser.add_argument("--only", choices=GROUPS, action="append",
                        help="run only these case groups")
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    log = lambda text: print(f"... {text}", file=sys.stderr, flush=True)
    groups = args.only or GROUPS
    rows, extra = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        if "training" in groups:
            bench_training(args.quick, rows, log)
        if "keras3" in groups:
            bench_keras3_training(args.quick, rows, log)
        if "qat" in groups:
            bench_qat(args.quick, rows, log)
        if "inference" in groups:
            bench_inference(args.quick, rows, log, workdir)
        if "export" in groups:
            bench_export(args.quick, rows, log, workdir, extra)
        if "recalibration" in groups:
            bench_recalibration(args.quick, rows, log, extra)
    info = meta()
    info.update(extra, quick=args.quick)
    if args.quick:
        for row in rows:
            row.judged = False
        print(QUICK_NOTE)
    print(harness.text_table(rows))
    if "recalibration_depth" in extra:
        print("\n" + recalibration.markdown(extra["recalibration_depth"]))
    if "fold_model" in extra:
        print(f"\nverification after export: {extra['verification_seconds']:.2f} s; fold peak "
              f"memory: {extra['fold_peak_memory_mib']:.1f} MiB ({extra['fold_model']})")
    os.makedirs(args.out, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    harness.write_results(rows, os.path.join(args.out, f"results{suffix}.json"), info)
    write_markdown(rows, info, extra, os.path.join(args.out, f"results{suffix}.md"))
    print(f"\nwritten: {args.out}/results{suffix}.json and .md")


if __name__ == "__main__":
    main()
