"""The tf-keras applications zoo: every constructor of `tf_keras.applications`, folded and
checked; one model per family exported to ONNX and TFLite and run.

`python -m benchmarks.zoo` (`make zoo`) writes `benchmarks/results/zoo.md` and
`zoo.json`; `tests/test_zoo.py` runs the same checks in `make test`.

Parity is checked in float64 for the fold: these networks have random weights
(`weights=None`, nothing can be downloaded), and an untrained 200-BN network is so
ill-conditioned in float32 that rounding alone (the fold reorders one product per BN)
moves some outputs by percent (EfficientNetV2B3: 47 % of the output scale), which would
test float32, not the fold. In float64 the same fold agrees to 1e-11 or better, so
1e-5 of the output scale is a test of the fold's exactness. The float32 error is
reported beside it. Exports run in float32 (onnxruntime and LiteRT have no float64
convolution), with BN statistics measured on data as a trained network has them.
"""

import argparse
import json
import os
import re
import time

import numpy as np
import tf_keras

from benchmarks.models import randomize_bn, realistic_bn

#: Inputs: the smallest size every constructor accepts at once (Inception* need 75).
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75}
DEFAULT_SIZE = 32


def constructors():
    """Every model constructor of `tf_keras.applications` (71 in tf-keras 2.21)."""
    apps = tf_keras.applications
    return sorted(name for name in dir(apps)
                  if name[:1].isupper() and callable(getattr(apps, name)))


def family(name):
    """`ResNet50V2` -> `ResNetV2`, `EfficientNetB3` -> `EfficientNet`, `RegNetX032` ->
    `RegNetX`: the name without its size."""
    for pattern, repl in ((r"^(EfficientNetV2|EfficientNet)(B\d|[SML])$", r"\1"),
                          (r"^(ResNet)(\d+)(V2)$", r"\1\3"), (r"^(RegNet[XY])\d+$", r"\1"),
                          (r"^(ConvNeXt)\w+$", r"\1"), (r"^(NASNet)\w+$", r"\1"),
                          (r"^(MobileNetV3)\w+$", r"\1"), (r"^(\D+?)\d+$", r"\1")):
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return name


def representatives():
    """The smallest model of each family (the first in tf-keras's own size order)."""
    order = {"ConvNeXt": "ConvNeXtTiny", "EfficientNetV2": "EfficientNetV2B0",
             "MobileNetV3": "MobileNetV3Small", "NASNet": "NASNetMobile"}
    chosen = {}
    for name in constructors():
        chosen.setdefault(family(name), order.get(family(name), name))
    return sorted(set(chosen.values()))


def build(name, dtype="float32"):
    """The application with `weights=None`, `classes=10`, logits out, small inputs."""
    tf_keras.backend.clear_session()
    tf_keras.backend.set_floatx(dtype)
    try:
        size = SIZES.get(name, DEFAULT_SIZE)
        return getattr(tf_keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10,
            classifier_activation=None)
    finally:
        tf_keras.backend.set_floatx("float32")


def foldable_left(model):
    """BN layers of `model` (nested included) that sit right after a linear Conv/Dense
    whose output feeds only them: counted from Keras's own runtime graph (the layers'
    inbound and outbound nodes), independently of keras_bn's plan."""
    from keras_bn.walk import is_batch_norm, is_model

    linear = (tf_keras.layers.Conv1D, tf_keras.layers.Conv2D, tf_keras.layers.Conv3D,
              tf_keras.layers.Dense, tf_keras.layers.DepthwiseConv2D,
              tf_keras.layers.SeparableConv2D)
    count = 0
    for layer in model.layers:
        if is_model(layer):
            count += foldable_left(layer)
            continue
        if not is_batch_norm(layer) or len(layer.inbound_nodes) != 1:
            continue
        producers = layer.inbound_nodes[0].inbound_layers
        producer = producers[0] if isinstance(producers, list) else producers
        if (isinstance(producer, linear) and len(producer.outbound_nodes) == 1
                and producer.activation is tf_keras.activations.linear):
            count += 1
    return count


def bn_count(model):
    from keras_bn.walk import batch_norm_layers
    return len(list(batch_norm_layers(model)))


def fold_case(name):
    """Folds `name` in float64 (exactness) and float32 (for information)."""
    import keras_bn

    model = randomize_bn(build(name, "float64"))
    before = [w.copy() for w in model.get_weights()]
    start = time.perf_counter()
    folded, plan = keras_bn.fold(model, return_plan=True)
    seconds = time.perf_counter() - start
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    scale = (plan.tolerance - 1e-6) / 1e-5
    row = {"model": name, "family": family(name), "bn": bn_count(model),
           "folded": len(plan.folded), "kept": len(plan.kept),
           "kept_reasons": _categories(plan), "fold_s": round(seconds, 2),
           "fold_error_f64": plan.max_error / scale if scale else 0.0,
           "foldable_left": foldable_left(folded), "original_unchanged": unchanged}
    model32 = realistic_bn(build(name, "float32"))
    _, plan32 = keras_bn.fold(model32, return_plan=True, rtol=1.0)
    scale32 = plan32.tolerance - 1e-6
    row["fold_error_f32"] = plan32.max_error / scale32 if scale32 else 0.0
    return row


def _categories(plan):
    counts = {}
    for decision in plan.kept:
        counts[decision.category] = counts.get(decision.category, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def export_case(name, folder):
    """ONNX and TFLite float32 export of `name` (folded, verified by the exporters)."""
    from keras_bn import export

    model = realistic_bn(build(name))
    row = {"model": name}
    for fmt, fn in (("onnx", export.to_onnx), ("tflite", export.to_tflite)):
        start = time.perf_counter()
        result = fn(model, os.path.join(folder, f"{name}.{fmt}"), latency_batch=0)
        row[f"{fmt}_s"] = round(time.perf_counter() - start, 1)
        row[f"{fmt}_error"] = result.max_error / (result.tolerance - 1e-5) * 1e-4
        row[f"{fmt}_bn_ops"] = sum(count for op, count in result.op_counts.items()
                                   if "batchnorm" in op.lower().replace("_", ""))
    return row


def table(fold_rows, export_rows):
    exports = {r["model"]: r for r in export_rows}
    lines = ["| model | BN | folded | kept (reason) | fold s | fold error f64 | f32 | "
             "ONNX error | TFLite error | BN ops left (ONNX/TFLite) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in fold_rows:
        e = exports.get(r["model"])
        export_cells = (f"{e['onnx_error']:.1e} | {e['tflite_error']:.1e} | "
                        f"{e['onnx_bn_ops']}/{e['tflite_bn_ops']}" if e else "| |")
        lines.append(f"| {r['model']} | {r['bn']} | {r['folded']} | {r['kept']} "
                     f"({r['kept_reasons']}) | {r['fold_s']:.2f} | {r['fold_error_f64']:.1e} "
                     f"| {r['fold_error_f32']:.1e} | {export_cells} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    import tempfile

    names = args.only or constructors()
    start = time.perf_counter()
    fold_rows, export_rows = [], []
    for name in names:
        fold_rows.append(fold_case(name))
        print(json.dumps(fold_rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in [n for n in representatives() if n in names]:
            export_rows.append(export_case(name, folder))
            print(json.dumps(export_rows[-1]), flush=True)
    wall = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "zoo.json"), "w") as f:
        json.dump({"wall_s": wall, "fold": fold_rows, "export": export_rows}, f, indent=1)
    text = table(fold_rows, export_rows) + f"\n\nWall time: {wall:.0f} s\n"
    with open(os.path.join(args.out, "zoo.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
