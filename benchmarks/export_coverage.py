"""Export coverage per family: keras_bn's exporters, tf2onnx called directly, and the
framework's own export, on one model per family of each zoo.

    python -m benchmarks.export_coverage [--flavour tf_keras keras3 keras_hub] [--only ...]

For each model (the zoo's smallest of each family, 96x96 inputs for the applications,
BN statistics measured on data, `realistic_bn`), every route writes a file that is then
checked the same way: `onnx.checker` and onnxruntime (ONNX) or LiteRT (TFLite) on the
fold's verification batch, against the Keras model in inference mode, relative to the
output scale. A file that converts and runs but is wrong shows its error; "ok" means
within 1e-3 of the output scale (a wrong conversion is off by O(1)). A float16-weight
file is held against the folded model with its weights rounded to float16 (what it
should equal), within 1e-3 or 8x what that rounding moves the model by
(`_float16_check`); an int8 file is counted ok when it converts and passes the
exporter's own checks (its accuracy is the int8 study's subject).

Routes: `keras_bn` (`to_onnx`, `to_tflite` float32, float16 and int8, each with its own
checks); `tf2onnx` (`tf2onnx.convert.from_keras` for tf-keras, `from_function` of the
model's call for Keras 3, which is what Keras 3's `model.export(format="onnx")` hands it
on the TensorFlow backend); `Keras` (Keras 3's `model.export(format="onnx")` and
`format="litert"`; tf-keras has no ONNX export, its TFLite route is
`TFLiteConverter.from_keras_model`). Writes benchmarks/results/export_coverage.{md,json};
rows of the flavours and models not run this time are kept from the last run's json, so
the zoos can run one per process (a process's memory grows with each model it builds);
the files are rewritten after each model.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import zoo
from benchmarks.models import realistic_bn

#: Relative error above which a file that runs is counted wrong (a wrong conversion is
#: off by O(1)).
WRONG = 1e-3


def _relative(model, outputs, inputs):
    """Max abs error of `outputs` against the model on `inputs`, over the output scale."""
    from keras_bn.verification import predict

    expected = predict(model, inputs)
    scale = max(float(np.max(np.abs(e))) for e in expected) or 1.0
    flat = [np.asarray(o, np.float64) for o in outputs]
    if len(flat) != len(expected):
        raise ValueError(f"{len(flat)} outputs, the model has {len(expected)}")
    matched = []
    for e in expected:  # files may order (or name) outputs otherwise: match by shape
        same = [o for o in flat if o.size == e.size]
        matched.append(min(same, key=lambda o: float(np.max(np.abs(o.reshape(e.shape) - e)))))
    return max(float(np.max(np.abs(o.reshape(e.shape) - e))) for o, e in
               zip(matched, expected)) / scale


def _run_onnx(path, inputs):
    from keras_bn.export.isolated import IsolatedRuntime

    with IsolatedRuntime("onnx", path) as runtime:
        names = [name for name, _ in runtime.inputs]
        got = runtime({n: np.asarray(x) for n, x in zip(names, inputs)})
        return [got[name] for name in runtime.outputs]


def _run_tflite(path, inputs):
    from keras_bn.export.isolated import IsolatedRuntime

    with IsolatedRuntime("tflite", path) as runtime:
        names = [name for name, _ in runtime.inputs]
        dtypes = dict(runtime.inputs)
        got = runtime({n: np.asarray(x, dtypes[n]) for n, x in zip(names, inputs)})
        return [got[name] for name in runtime.outputs]


def _tf2onnx_direct(model, flavour, path):
    import onnx
    import tensorflow as tf
    import tf2onnx

    from keras_bn.export._prepare import input_signature

    signature = input_signature(model)
    if flavour == "tf_keras":
        proto = tf2onnx.convert.from_keras(model, input_signature=signature)[0]
    else:
        @tf.function(input_signature=signature)
        def serve(*inputs):
            return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        proto = tf2onnx.convert.from_function(serve, input_signature=signature)[0]
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _keras_onnx(model, flavour, path):
    if flavour == "tf_keras":
        raise NotImplementedError("tf-keras has no ONNX export")
    model.export(path, format="onnx", verbose=False)


def _keras_tflite(model, flavour, path):
    import tensorflow as tf

    if flavour == "tf_keras":
        with open(path, "wb") as f:
            f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    else:
        model.export(path, format="litert", verbose=False)


def _cell(fn, check):
    """'ok (err)', 'wrong (err)' or 'failed: reason' for one route; `check` returns the
    error, or `(error, bound)` where a route's bound is not `WRONG`."""
    try:
        fn()
        error = check()
    except Exception as error:  # noqa: BLE001 - every failure is a row, not a stop
        text = " ".join(f"{type(error).__name__}: {error}".split())
        return {"status": "failed", "detail": text[:160]}
    error, bound = error if isinstance(error, tuple) else (error, WRONG)
    return {"status": "ok" if error <= bound else "wrong", "error": error,
            **({} if bound == WRONG else {"bound": bound})}


def float16_reference(model):
    """The model a float16-weight file should equal: `model` folded, its float weights
    rounded to float16 and back (the converter stores every float constant in float16
    and computes in float32). Against it a correct file agrees to float32's level
    (InceptionV3: 8e-5 of the scale, while it differs from the float model by 0.11), or,
    where the converter rounds constants it derived (folded `(x - mean) / sqrt(var)` of a
    Normalization layer: ResNetRS), to within what float16 rounding does to the model
    (`_float16_check`)."""
    import keras_bn

    folded = keras_bn.fold(model)
    folded.set_weights([w.astype(np.float16).astype(w.dtype)
                        if np.issubdtype(w.dtype, np.floating) else w
                        for w in map(np.asarray, folded.get_weights())])
    return folded


def _float16_check(model, path, inputs):
    """`(error, bound)` of a float16-weight file: its error against `float16_reference`,
    bounded by `NOISE_MULTIPLE` times what rounding the weights to float16 moves the
    model's outputs by (the reference against the model; never under `WRONG`), as float32
    files are held to their float32 noise: a file whose converter rounded other constants
    (fused ones) is another float16 rounding of the same model, and a deep random-weight
    net amplifies any such rounding alike (InceptionV3 at 96x96: the rounded weights move
    it by 0.114 of its scale, a random perturbation of the same size by 0.126)."""
    from keras_bn.verification import predict
    from keras_bn.verification import NOISE_MULTIPLE

    reference = float16_reference(model)
    bound = max(WRONG, NOISE_MULTIPLE * _relative(model, predict(reference, inputs), inputs))
    return _relative(reference, _run_tflite(path, inputs), inputs), bound


def case(name, flavour, folder, routes=None):
    """One model's row: every route (or those in `routes`), each file checked the same
    way: float32 files against the model, float16-weight files against
    `float16_reference`, int8 files only for converting and passing the exporter's checks."""
    from keras_bn import export
    from keras_bn.verification import random_inputs

    model = realistic_bn(zoo.build(name, size=None if flavour == "keras_hub"
                                   else zoo.EXPORT_SIZE, flavour=flavour))
    inputs = random_inputs(model)
    data = random_inputs(model, batch=32, seed=5)
    path = lambda route, ext: os.path.join(folder, f"{name}-{route}.{ext}")
    onnx_check = lambda p: lambda: _relative(model, _run_onnx(p, inputs), inputs)
    tflite_check = lambda p: lambda: _relative(model, _run_tflite(p, inputs), inputs)
    made = {
        "keras_bn onnx": (lambda: export.to_onnx(model, path("ours", "onnx")),
                          onnx_check(path("ours", "onnx"))),
        "keras_bn tflite": (lambda: export.to_tflite(model, path("ours", "tflite")),
                            tflite_check(path("ours", "tflite"))),
        "keras_bn float16": (lambda: export.to_tflite(model, path("ours16", "tflite"),
                                                      quantize="float16"),
                             lambda: _float16_check(model, path("ours16", "tflite"),
                                                    inputs)),
        "keras_bn int8": (lambda: export.to_tflite(model, path("ours8", "tflite"),
                                                   quantize=export.QuantizationOptions(
                                                       "int8", calibration=data)),
                          lambda: 0.0),
        "tf2onnx onnx": (lambda: _tf2onnx_direct(model, flavour, path("t2o", "onnx")),
                         onnx_check(path("t2o", "onnx"))),
        "keras onnx": (lambda: _keras_onnx(model, flavour, path("keras", "onnx")),
                       onnx_check(path("keras", "onnx"))),
        "keras tflite": (lambda: _keras_tflite(model, flavour, path("keras", "tflite")),
                         tflite_check(path("keras", "tflite"))),
    }
    row = {"model": name, "family": zoo.family(name), "flavour": flavour}
    start = time.perf_counter()
    for route in routes or ROUTES:
        row[route] = _cell(*made[route])
    if routes is None:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


ROUTES = ("keras_bn onnx", "keras_bn tflite", "keras_bn float16", "keras_bn int8",
          "tf2onnx onnx", "keras onnx", "keras tflite")


NOT_RUN = {"status": "not run"}


def _shown(cell):
    if cell["status"] == "failed":
        return "failed: " + cell["detail"][:60]
    return f"{cell['status']} ({cell['error']:.1e})" if cell.get("error") else cell["status"]


def table(rows):
    lines = ["| zoo | family (model) | " + " | ".join(ROUTES) + " |",
             "|---|---|" + "---|" * len(ROUTES)]
    for r in rows:
        lines.append(f"| {r['flavour']} | {r['family']} ({r['model']}) | "
                     + " | ".join(_shown(r.get(k, NOT_RUN)) for k in ROUTES) + " |")
    totals = {k: sum(r.get(k, NOT_RUN)["status"] == "ok" for r in rows) for k in ROUTES}
    lines.append(f"| all | {len(rows)} models | "
                 + " | ".join(f"{totals[k]}/{len(rows)}" for k in ROUTES) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flavour", nargs="*", default=list(zoo.FLAVOURS),
                        choices=zoo.FLAVOURS)
    parser.add_argument("--only", nargs="*", help="model names (default: one per family)")
    parser.add_argument("--routes", nargs="*", choices=ROUTES,
                        help="routes to run (default: all); the others keep their last cells")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for flavour in args.flavour:
            for name in args.only or zoo.representatives(flavour):
                if name not in zoo.constructors(flavour):
                    continue
                rows.append(case(name, flavour, folder, args.routes))
                print(json.dumps(rows[-1]), flush=True)
                save(rows, args.out)  # after each model: a killed run keeps its rows
    print(table(save(rows, args.out)))


def save(rows, out):
    """Writes `rows` merged into the last run's json (a flavour, model or route not run
    this time keeps its row or cell) and the table; returns the merged rows."""
    os.makedirs(out, exist_ok=True)
    saved = os.path.join(out, "export_coverage.json")
    merged = {}
    if os.path.exists(saved):
        with open(saved) as f:
            merged = {(r["flavour"], r["model"]): r for r in json.load(f)}
    for row in rows:
        merged[row["flavour"], row["model"]] = {**merged.get((row["flavour"], row["model"]),
                                                             {}), **row}
    order = {flavour: i for i, flavour in enumerate(zoo.FLAVOURS)}
    rows = sorted(merged.values(), key=lambda r: (order[r["flavour"]], r["family"]))
    with open(saved, "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out, "export_coverage.md"), "w") as f:
        f.write(table(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
