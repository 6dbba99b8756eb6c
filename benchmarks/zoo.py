"""The applications zoo: every constructor of `tf_keras.applications` (and, with
`--flavour keras3`, of Keras 3's `keras.applications`), folded and checked; one model per
family exported to ONNX and TFLite and run.

`python -m benchmarks.zoo` (`make zoo`) writes `benchmarks/results/zoo.md` and
`zoo.json` (`zoo_keras3.*` for Keras 3); `tests/test_zoo.py` runs the same checks in
`make test` (for Keras 3, one model per family).

Parity is checked in float64 for the fold: these networks have random weights
(`weights=None`, nothing can be downloaded), and an untrained 200-BN network is so
ill-conditioned in float32 that rounding alone (the fold reorders one product per BN)
moves some outputs by percent (EfficientNetV2B3: 47 % of the output scale), which would
test float32, not the fold. BN statistics are measured on data and then perturbed
(`realistic_bn`): fully independent random statistics make EfficientNetB7 chaotic even
in float64 (7e-5 relative error from float64 rounding). With both, the fold agrees to
about 1e-10 or better, so 1e-5 of the output scale tests the fold's exactness. The
float32 error is reported beside it by `make zoo`. Exports run in float32 (onnxruntime and LiteRT have no float64
convolution), with BN statistics measured on data as a trained network has them.
"""

import argparse
import gc
import json
import os
import re
import time

import numpy as np
import tf_keras

from benchmarks import hub_models
from benchmarks.models import realistic_bn
from benchmarks.worker import Worker

#: Inputs: 32x32, or the smallest size the constructor accepts (Inception* 75, Xception 71).
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 75}
#: Models whose parity is checked in float32 only, and why.
FLOAT32_ONLY = {"channels_first CNN (hand-built)":
                "TensorFlow's CPU Conv2D runs channels_first (NCHW) in float32 only"}
DEFAULT_SIZE = 32


#: `keras_hub`: keras-hub's vision models (Keras 3) built from their constructors
#: (`benchmarks/hub_models.py`), one per family.
FLAVOURS = ("tf_keras", "keras3", "keras_hub")


def keras_module(flavour="tf_keras"):
    """`tf_keras`, or Keras 3's `keras` (keras-hub's models are Keras 3 models)."""
    if flavour in ("keras3", "keras_hub"):
        import keras

        return keras
    return tf_keras


def constructors(flavour="tf_keras"):
    """Every model constructor of the flavour's `applications` (71 in tf-keras 2.21, 40
    in Keras 3.15), or keras-hub's models of `hub_models`."""
    if flavour == "keras_hub":
        return sorted(hub_models.ALL)
    apps = keras_module(flavour).applications
    return sorted(name for name in dir(apps)
                  if name[:1].isupper() and callable(getattr(apps, name)))


def family(name):
    """`ResNet50V2` -> `ResNetV2`, `EfficientNetB3` -> `EfficientNet`, `RegNetX032` ->
    `RegNetX`: the name without its size."""
    for pattern, repl in ((r"^(EfficientNetV2|EfficientNet)(B\d|[SML])$", r"\1"),
                          (r"^(ResNet)(\d+)(V2)$", r"\1\3"), (r"^(RegNet[XY])\d+$", r"\1"),
                          (r"^(ConvNeXt)\w+$", r"\1"), (r"^(NASNet)\w+$", r"\1"),
                          (r"^(MobileNetV3)\w+$", r"\1"), (r"^(\D*[^V\d])\d+$", r"\1")):
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return name


def representatives(flavour="tf_keras"):
    """The smallest model of each family: the first in name order, except where names
    do not sort by size (ResNet101 < ResNet50 as text)."""
    smallest = {"ResNet": "ResNet50", "ResNetV2": "ResNet50V2", "ResNetRS": "ResNetRS50",
                "ConvNeXt": "ConvNeXtTiny", "EfficientNetV2": "EfficientNetV2B0",
                "MobileNetV3": "MobileNetV3Small", "NASNet": "NASNetMobile"}
    if flavour == "keras_hub":  # one per family already
        return constructors(flavour)
    chosen = {}
    for name in constructors(flavour):
        chosen.setdefault(family(name), smallest.get(family(name), name))
    return sorted(chosen.values())




def build(name, dtype="float32", size=None, flavour="tf_keras", seed=None):
    """The application with `weights=None`, `classes=10`, logits out, small inputs (or
    a hand-built tf-keras model of `HAND_BUILT`). With `seed`, its random weights are that
    seed's draw (Python, NumPy and TensorFlow seeded first); without, they follow whatever
    the process drew before."""
    keras = keras_module(flavour)
    keras.backend.clear_session()
    gc.collect()  # the previous model's arrays go before the next one is built
    if seed is not None:
        keras.utils.set_random_seed(seed)
    keras.backend.set_floatx(dtype)
    try:
        if name in HAND_BUILT:
            return HAND_BUILT[name]()
        if flavour == "keras_hub":  # their own small configurations, 64x64 images
            return hub_models.ALL[name]()
        size = size or SIZES.get(name, DEFAULT_SIZE)
        return getattr(keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10,
            classifier_activation=None)
    finally:
        keras.backend.set_floatx("float32")


def _conv_bn(x, filters, kernel, data_format="channels_last", dims=2, **kwargs):
    conv = getattr(tf_keras.layers, f"Conv{dims}D")
    axis = 1 if data_format == "channels_first" else -1
    x = conv(filters, kernel, padding="same", use_bias=False, data_format=data_format,
             **kwargs)(x)
    return tf_keras.layers.BatchNormalization(axis=axis)(x)


def residual_net():
    """A ResNet-style block stack written by hand: conv-BN-ReLU, identity and projection
    shortcuts added with `+` (a TensorFlow op on Keras tensors)."""
    L = tf_keras.layers
    inputs = tf_keras.Input((32, 32, 3))
    x = L.ReLU()(_conv_bn(inputs, 16, 3))
    for filters, stride in ((16, 1), (32, 2)):
        shortcut = x if stride == 1 else _conv_bn(x, filters, 1, strides=stride)
        y = L.ReLU()(_conv_bn(x, filters, 3, strides=stride))
        x = tf_keras.activations.relu(_conv_bn(y, filters, 3) + shortcut)
    x = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return tf_keras.Model(inputs, x, name="residual")


def unet():
    """A small U-Net: Conv2DTranspose + BN up-sampling, skip connections concatenated."""
    L = tf_keras.layers
    inputs = tf_keras.Input((32, 32, 3))
    d1 = L.ReLU()(_conv_bn(inputs, 8, 3))
    d2 = L.ReLU()(_conv_bn(L.MaxPooling2D()(d1), 16, 3))
    b = L.ReLU()(_conv_bn(L.MaxPooling2D()(d2), 32, 3))
    u2 = L.BatchNormalization()(L.Conv2DTranspose(16, 2, strides=2, use_bias=False)(b))
    u2 = L.ReLU()(_conv_bn(L.Concatenate()([L.ReLU()(u2), d2]), 16, 3))
    u1 = L.BatchNormalization()(L.Conv2DTranspose(8, 2, strides=2)(u2))
    u1 = L.ReLU()(_conv_bn(L.Concatenate()([L.ReLU()(u1), d1]), 8, 3))
    return tf_keras.Model(inputs, L.Conv2D(2, 1)(u1), name="unet")


def audio_cnn():
    """A 1-D CNN over a waveform-like signal: Conv1D + BN, strided, pooled."""
    L = tf_keras.layers
    inputs = tf_keras.Input((1024, 1))
    x = inputs
    for filters in (16, 32, 64):
        x = L.MaxPooling1D(2)(L.ReLU()(_conv_bn(x, filters, 9, dims=1, strides=2)))
    x = L.BatchNormalization()(L.GlobalAveragePooling1D()(x))
    return tf_keras.Model(inputs, L.Dense(10)(x), name="audio_cnn")


def channels_first_net():
    """A channels_first CNN (NCHW) with BN on axis 1, as models ported from PyTorch are."""
    L = tf_keras.layers
    inputs = tf_keras.Input((3, 16, 16))
    x = L.ReLU()(_conv_bn(inputs, 8, 3, data_format="channels_first"))
    x = L.ReLU()(_conv_bn(x, 16, 3, data_format="channels_first", strides=2))
    x = L.GlobalAveragePooling2D(data_format="channels_first")(x)
    return tf_keras.Model(inputs, L.Dense(10)(x), name="channels_first")


#: Models users write by hand, folded and exported beside the applications.
HAND_BUILT = {"residual (hand-built)": residual_net, "U-Net (hand-built)": unet,
              "1-D audio CNN (hand-built)": audio_cnn,
              "channels_first CNN (hand-built)": channels_first_net}


def foldable_left(model):
    """BN layers of `model` (nested included) that sit right after a linear Conv/Dense
    whose output feeds only them: counted from Keras's own runtime graph (the layers'
    inbound and outbound nodes), independently of keras_bn's plan."""
    from keras_bn.flavour import is_keras3
    from keras_bn.layers.find import is_batch_norm, is_model

    keras = keras_module("keras3" if is_keras3(model) else "tf_keras")
    linear = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
              keras.layers.Dense, keras.layers.DepthwiseConv2D,
              keras.layers.SeparableConv2D)
    count = 0
    for layer in model.layers:
        if is_model(layer):
            count += foldable_left(layer)
            continue
        inbound, producer, outbound = _neighbours(layer)
        if not is_batch_norm(layer) or inbound != 1:
            continue
        if (isinstance(producer, linear) and _neighbours(producer)[2] == 1
                and producer.activation is keras.activations.linear):
            count += 1
    return count


def _neighbours(layer):
    """`(calls, first producer, consumers)` from Keras's runtime nodes: tf-keras's
    public `inbound_nodes`, Keras 3's node objects (`_inbound_nodes`, `parent_nodes`)."""
    from keras_bn.flavour import is_keras3

    if not is_keras3(layer):
        nodes = layer.inbound_nodes
        producers = nodes[0].inbound_layers if nodes else None
        producer = producers[0] if isinstance(producers, list) and producers else producers
        return len(nodes), producer, len(layer.outbound_nodes)
    nodes = layer._inbound_nodes
    parents = nodes[0].parent_nodes if nodes else []
    return len(nodes), parents[0].operation if parents else None, len(layer._outbound_nodes)


def bn_count(model):
    from keras_bn.layers.find import batch_norm_layers
    return len(list(batch_norm_layers(model)))


def fold_case(name, float32=False, flavour="tf_keras"):
    """Folds `name` in float64 (exactness) and, with `float32`, in float32 too (for
    information: the error float32 rounding gives on this random-weight network)."""
    import keras_bn

    # One build (building is a third of a case's time): float64, except where TensorFlow
    # cannot compute in it. (A BN-free model, ConvNeXt or VGG, is rebuilt bit for bit.)
    model = build(name, "float32" if name in FLOAT32_ONLY else "float64", flavour=flavour)
    model = realistic_bn(model)
    before = _digests(model)  # digests, not copies: RegNetY320 in float64 is 1.2 GB
    start = time.perf_counter()
    try:
        folded, plan = keras_bn.fold(model, return_plan=True)
    except keras_bn.VerificationError as error:  # a row that says so, not a lost run
        return {"model": name, "family": family(name) if name not in HAND_BUILT else name,
                "flavour": flavour, "parity_dtype": str(model.dtype), "bn": bn_count(model),
                "verified": False, "failure": str(error)[:300],
                "original_unchanged": before == _digests(model)}
    seconds = time.perf_counter() - start
    unchanged = before == _digests(model)
    scale = plan.verdict.scale
    row = {"model": name, "family": family(name) if name not in HAND_BUILT else name,
           "flavour": flavour, "parity_dtype": str(model.dtype), "bn": bn_count(model),
           "folded": len(plan.folded), "kept": len(plan.kept),
           "kept_reasons": _categories(plan), "fold_s": round(seconds, 2),
           "fold_error": plan.max_error / scale if scale else 0.0,
           "fold_noise": (plan.noise / scale if scale and plan.noise is not None
                          else None),  # measured only beyond the floor
           "foldable_left": foldable_left(folded), "original_unchanged": unchanged}
    if float32:
        row.update(float32_case(name, flavour))
    return row


def fold_row(name, flavour="tf_keras"):
    """The zoo's fold row of `name`: `fold_case` with the float32 columns, and for
    keras-hub's models (BNs in custom layers) the recalibration error."""
    row = fold_case(name, float32=True, flavour=flavour)
    if flavour == "keras_hub":
        row["recalibrate_error"] = recalibrate_case(name)["recalibrate_error"]
    return row


def float32_case(name, flavour="tf_keras", seed=None):
    """The default `keras_bn.fold` of `name` in float32, as a user runs it: its error and
    the model's own float32 noise on the same inputs, relative to the output scale, and
    whether the default check passed (it raises when not; the row then says why). `seed`:
    as for `build`."""
    import keras_bn

    model = realistic_bn(build(name, "float32", flavour=flavour, seed=seed))
    try:
        _, plan = keras_bn.fold(model, return_plan=True)
    except keras_bn.VerificationError as error:
        return {"f32_verified": False, "f32_failure": str(error)[:300]}
    from keras_bn.verification import float32_noise, verification_batches

    v = plan.verdict
    noise = v.noise  # measured by the fold only beyond the floor: here always, for the table
    if noise is None:
        noise, _ = float32_noise(model, verification_batches(model, None)[0])
    relative = lambda x: float("nan") if x is None else (x / v.scale if v.scale else 0.0)
    return {"f32_verified": True, "fold_error_f32": relative(v.max_error),
            "noise_f32": relative(noise), "tolerance_f32": relative(v.tolerance)}


def _digests(model):
    import hashlib
    return [hashlib.sha256(np.ascontiguousarray(np.asarray(v.numpy())).tobytes()).hexdigest()
            for v in model.variables]


def _output_scale(model):
    """max |output| on the inputs `fold` verifies with (as its tolerance uses)."""
    from keras_bn.verification import predict, random_inputs
    return max(float(np.max(np.abs(o))) for o in predict(model, random_inputs(model)))


def _categories(plan):
    counts = {}
    for decision in plan.kept:
        counts[decision.category] = counts.get(decision.category, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


#: Export inputs: 96x96, so the deepest layers still see 3x3 positions when the BN
#: statistics are measured (see `export_case`).
EXPORT_SIZE = 96
def export_case(name, folder, flavour="tf_keras"):
    """ONNX and TFLite float32 export of `name` as a user runs it: the exporters' default
    fold, conversion and checks (the fold and each file held to the default tolerance:
    the floor plus 8x the model's own float32 noise, which on these random-weight
    networks can exceed the floor by far, ResNetRS420's 2.8e-2 of its scale). Errors and
    the noise are relative to the output scale."""
    from keras_bn import export

    model = realistic_bn(build(name, size=EXPORT_SIZE, flavour=flavour))
    scale = _output_scale(model)
    row = {"model": name, "flavour": flavour}
    for fmt, fn in (("onnx", export.to_onnx), ("tflite", export.to_tflite)):
        start = time.perf_counter()
        result = fn(model, os.path.join(folder, f"{name}.{fmt}"), latency_batch=0)
        row[f"{fmt}_s"] = round(time.perf_counter() - start, 1)
        row[f"{fmt}_error"] = result.max_error / scale
        row[f"{fmt}_bn_ops"] = sum(count for op, count in result.op_counts.items()
                                   if "batchnorm" in op.lower().replace("_", ""))
        row["noise"] = result.noise / scale if result.noise is not None else float("nan")
        row["kept"] = len(result.fold_plan.kept)
    return row


#: keras-hub models whose int8 files once failed in LiteRT (ResNet v2's pad to minus
#: infinity; MobileNetV3's and CSPNet's XNNPACK prepare step on some draws): exported to
#: int8 in both formats over several weight draws by the keras_hub zoo.
INTEGER_MODELS = ("ResNetV2", "MobileNetV3", "CSPNet")
INTEGER_SEEDS = (0, 1, 2, 3, 4)


def integer_case(name, folder, seed, flavour="keras_hub"):
    """int8 TFLite and ONNX files of `name` (its weights the draw of `seed`, BN
    statistics measured), calibrated on 64 images of uniform noise, each run by its
    runtime as users run it (LiteRT with XNNPACK, onnxruntime's CPU provider) and scored
    on 13 held-out rows: SQNR (dB) and top-1 agreement with the Keras model."""
    from keras_bn import export
    from keras_bn.quantization import QuantizationOptions

    model = realistic_bn(build(name, flavour=flavour, seed=seed), seed=seed)
    shape = model.inputs[0].shape[1:]
    rows = np.random.RandomState(seed).rand(64, *shape).astype("float32")
    row = {"model": name, "seed": seed}
    for fmt, fn in (("onnx", export.to_onnx), ("tflite", export.to_tflite)):
        result = fn(model, os.path.join(folder, f"{name}-{seed}-int8.{fmt}"),
                    quantize=QuantizationOptions("int8", calibration=rows),
                    latency_batch=None)
        (score, *_) = result.evaluation
        row[f"{fmt}_sqnr_db"] = round(float(score.sqnr_db), 2)
        row[f"{fmt}_agreement"] = round(float(score.agreement), 4)
    return row


def integer_table(rows):
    lines = ["| model | seed | ONNX int8 SQNR (dB) | ONNX top-1 agreement | TFLite int8 "
             "SQNR (dB) | TFLite top-1 agreement |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['seed']} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['seed']} | {r['onnx_sqnr_db']:.1f} | "
                     f"{r['onnx_agreement']:.3f} | {r['tflite_sqnr_db']:.1f} | "
                     f"{r['tflite_agreement']:.3f} |")
    return "\n".join(lines)


def recalibrate_case(name, flavour="keras_hub", rows=48):
    """`keras_bn.recalibrate(passes=1)` of `name` against numpy: each BN layer's new
    statistics are compared with the mean and variance numpy computes from that layer's
    inputs (every BN, custom layers' included, recorded eagerly by patching its call
    here, independently of keras_bn's measurement), relative to their scale."""
    import keras_bn
    from keras_bn.verification import random_inputs
    from keras_bn.layers.find import bn_axes, distinct_batch_norm_layers

    model = realistic_bn(build(name, flavour=flavour))
    data = random_inputs(model, batch=rows, seed=7)
    data = data if len(data) > 1 else data[0]
    layers = list(distinct_batch_norm_layers(model))
    seen = {name: [] for name, _ in layers}
    for bn_name, layer in layers:
        def call(inputs, *args, _layer=layer, _name=bn_name, **kwargs):
            seen[_name].append(np.asarray(inputs, np.float64))
            return type(_layer).call(_layer, inputs, *args, **kwargs)
        layer.call = call
    try:
        model(data, training=False)
    finally:
        for _, layer in layers:
            del layer.call
    keras_bn.recalibrate(model, data, batch_size=16, passes=1, verbose=0)
    worst = 0.0
    for bn_name, layer in layers:
        x = np.concatenate([np.moveaxis(v, bn_axes(layer), range(-len(bn_axes(layer)), 0))
                            .reshape(-1, *np.shape(layer.moving_mean)) for v in seen[bn_name]])
        for got, want in ((layer.moving_mean, x.mean(0)), (layer.moving_variance, x.var(0, ddof=1))):
            got = np.asarray(got, np.float64)
            worst = max(worst, float(np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))))
    return {"model": name, "bn": len(layers), "recalibrate_error": worst}


def table(fold_rows, export_rows):
    exports = {r["model"]: r for r in export_rows}
    recal = any("recalibrate_error" in r for r in fold_rows)
    lines = ["| model | BN | folded | kept (reason) | fold s | fold error (dtype) | float32 "
             "fold error | float32 noise | " + ("recalibrate error | " if recal else "")
             + "ONNX error | TFLite error | ONNX BatchNormalization ops |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if recal else "")]
    for r in fold_rows:
        e = exports.get(r["model"])
        if e and "error" in e:
            export_cells = f"failed: {e['error']} | |"
        else:
            export_cells = (f"{e['onnx_error']:.1e} | {e['tflite_error']:.1e} | "
                            f"{e['onnx_bn_ops']}" if e else "| |")
        recal_cell = f"{r['recalibrate_error']:.1e} | " if recal else ""
        if r.get("verified") is False:
            lines.append(f"| {r['model']} | {r['bn']} | fold failed ({r['parity_dtype']}):"
                         f" {r['failure'][:120]} |")
            continue
        lines.append(f"| {r['model']} | {r['bn']} | {r['folded']} | {r['kept']} "
                     f"({r['kept_reasons']}) | {r['fold_s']:.2f} | {r['fold_error']:.1e} "
                     f"({r['parity_dtype']}) "
                     f"| {_float32_cells(r)} | {recal_cell}"
                     f"{export_cells} |")
    return "\n".join(lines)


def _float32_cells(row):
    """The float32 fold error and noise cells (a failed default check says so)."""
    if row.get("f32_verified") is False:
        return f"failed: {row['f32_failure'][:80]} |"
    return (f"{row.get('fold_error_f32', float('nan')):.1e} | "
            f"{row.get('noise_f32', float('nan')):.1e}")


def _row(run, failed, case, *args):
    """The row `run(case, *args)` returns, or `failed(text)` with the error's text when
    the case died or raised (the run goes on and the table is still written); printed
    as it comes."""
    try:
        row = run(case, *args)
    except Exception as error:  # noqa: BLE001 - a row that says so
        row = failed(f"{type(error).__name__}: {error}"[:300])
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--no-export", action="store_true", help="fold only")
    parser.add_argument("--cases-per-worker", type=int, default=8,
                        help="cases each child process runs before a fresh one replaces "
                             "it (benchmarks/worker.py: bounds the run's memory); 0 runs "
                             "every case in this process")
    parser.add_argument("--flavour", choices=FLAVOURS, default="tf_keras",
                        help="tf_keras.applications (default), Keras 3's keras.applications, "
                             "or keras-hub's vision models")
    args = parser.parse_args(argv)
    import tempfile

    hand_built = list(HAND_BUILT) if args.flavour == "tf_keras" else []
    names = args.only or constructors(args.flavour) + hand_built
    start = time.perf_counter()
    fold_rows, export_rows = [], []
    run = (Worker(args.cases_per_worker) if args.cases_per_worker
           else lambda fn, *a, **k: fn(*a, **k))
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            fold_rows.append(_row(run, lambda text, name=name: {
                "model": name, "flavour": args.flavour, "bn": "?", "parity_dtype": "?",
                "verified": False, "failure": text}, fold_row, name, args.flavour))
        exported = [] if args.no_export else representatives(args.flavour) + hand_built
        for name in [n for n in exported if n in names]:
            export_rows.append(_row(run, lambda text, name=name: {
                "model": name, "error": text}, export_case, name, folder, args.flavour))
        integer = ([] if args.no_export or args.flavour != "keras_hub" else
                   [(n, seed) for n in INTEGER_MODELS if n in names for seed in INTEGER_SEEDS])
        integer_rows = [_row(run, lambda text, name=name, seed=seed: {
            "model": name, "seed": seed, "error": text}, integer_case, name, folder, seed)
            for name, seed in integer]
    if isinstance(run, Worker):
        run.close()
    wall = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    stem = {"tf_keras": "zoo", "keras3": "zoo_keras3", "keras_hub": "zoo_keras_hub"}[
        args.flavour]
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"wall_s": wall, "fold": fold_rows, "export": export_rows,
                   "integer": integer_rows}, f, indent=1)
    text = table(fold_rows, export_rows) + "\n\n"
    if integer_rows:
        text += ("int8 files over weight draws (calibrated on 64 uniform-noise images, "
                 "scored on 13 held-out rows):\n\n" + integer_table(integer_rows) + "\n\n")
    text += f"Wall time: {wall:.0f} s\n"
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
