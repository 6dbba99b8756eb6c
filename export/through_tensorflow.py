"""Export of a Keras 3 model on a backend other than TensorFlow (JAX).

Both converters read TensorFlow graphs, and Keras 3 picks its backend once per process,
so the model is saved (a `.keras` file is the same on every backend) and converted by a
child process on the TensorFlow backend with the same exporter. The file it writes is
then verified here, against the model itself on its own backend (onnxruntime or LiteRT,
in an isolated process as always), and only then moved to `path`: what the user gets is
checked against the model they hold, not against its TensorFlow twin.

Why not jax2onnx: it would give ONNX only (TFLite needs TensorFlow's converter anyway),
and a second conversion route with its own op coverage; through TensorFlow, a JAX model
gets exactly the files, modes and op coverage a TensorFlow one gets.

The child imports the modules of the model's custom layer classes (the caller has
imported them already) and loads the file with `safe_mode=False`: the file is the
caller's own in-memory model, just written, not a file from elsewhere.
"""

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError, VerificationError
from keras_bn.files.output import atomic_path
from keras_bn.flavour import Model
from keras_bn.quantization.options import Prepared

if TYPE_CHECKING:
    from keras_bn.export.checks import ExportResult

#: What the child passes on to the exporter, by format.
_OPTIONS = {"onnx": ("fold", "opset"), "tflite": ("fold",)}
#: The quantization options the child converts with (its calibration rows go as arrays).
_QUANTIZATION = ("mode", "calibration_rows", "ranges", "equalization", "bias_correction")


def export(fmt: str, model: Model, path: str | os.PathLike, ready: Prepared,
           options: dict) -> "ExportResult":
    """`to_onnx` / `to_tflite` (`fmt` "onnx" or "tflite") of a Keras 3 `model` on a
    backend other than TensorFlow, with the exporter's `options` and its checked
    quantization decisions `ready` (a `keras_bn.quantization.options.Prepared`: the child
    converts with its calibration rows, the file is scored here); returns its
    `ExportResult`."""
    from keras_bn.export import checks, onnx, tflite
    from keras_bn.folding import fold
    from keras_bn.quantization.technique import Technique

    if ready.options.float_fallback:
        raise InputError(f"Float fallback of '{model.name}' scores files layer by layer on "
                         f"the TensorFlow backend, not {flavour.of(model).backend()}: save "
                         "the model and export it with KERAS_BACKEND=tensorflow.")
    modules = _modules(model)
    plan = None
    if options["fold"]:  # the fold itself, verified on the model's own backend (not
        # with learned ranges: see `_prepare.prepare`; the file is checked instead)
        _, plan = fold(model, verify=options["verify"] and not ready.learned,
                       return_plan=True)
    suffix = "." + fmt
    with tempfile.TemporaryDirectory(prefix="keras_bn_export_") as work:
        request = {"format": fmt, "model": os.path.join(work, "model.keras"),
                   "out": os.path.join(work, "converted" + suffix), "modules": modules,
                   "arrays": os.path.join(work, "arrays.npz"),
                   "reply": os.path.join(work, "reply.json"),
                   "options": {k: options[k] for k in _OPTIONS[fmt] if k in options},
                   "quantization": {k: getattr(ready.options, k) for k in _QUANTIZATION}}
        model.save(request["model"])
        data = ready.rows or []
        np.savez(request["arrays"], **{f"calibration_{i}": a for i, a in enumerate(data)})
        with open(os.path.join(work, "request.json"), "w") as f:
            json.dump(request, f)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        child = subprocess.run([sys.executable, "-m", __name__,
                                os.path.join(work, "request.json")],
                               env=env, capture_output=True, text=True)
        reply = _reply(request["reply"], child, model.name)
        result = checks.ExportResult(path=os.fspath(path), format=reply["format"],
                                     fold_plan=plan, op_counts=reply["op_counts"],
                                     post_training=[Technique(**record)
                                                    for record in reply["post_training"]])
        verify_file = onnx.verify_file if fmt == "onnx" else tflite.verify_file
        with atomic_path(path, (suffix,)) as tmp:
            shutil.copyfile(request["out"], tmp)
            verify_file(result, model, tmp, options["samples"], options["labels"],
                        options["verify"], options["rtol"], options["atol"],
                        options["latency_batch"], check=ready.options.mode is None,
                        ready=ready)
    return result


def _modules(model):
    """The modules of the model's custom layer classes, for the child to import."""
    plumbing = flavour.of(model)
    found = []
    for layer in model._flatten_layers(include_self=False):
        cls = type(layer)
        if plumbing.is_builtin_layer_class(cls) or cls.__module__.startswith("keras_bn."):
            continue
        if cls.__module__ == "__main__":
            raise InputError(
                f"Export of Keras 3 model '{model.name}' on the {plumbing.backend()} backend "
                "converts it in a TensorFlow process, which must import its layer class "
                f"'{cls.__name__}'; it is defined in __main__. Define it in a module, or "
                "export with KERAS_BACKEND=tensorflow.")
        if cls.__module__ not in found:
            found.append(cls.__module__)
    return found


def _reply(path, child, name):
    if os.path.exists(path):
        with open(path) as f:
            reply = json.load(f)
        if "error" not in reply:
            return reply
        raise (VerificationError if reply["error"] == "VerificationError" else InputError)(
            reply["message"])
    last = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise VerificationError(f"Export of '{name}': the TensorFlow conversion process ended "
                            f"with status {child.returncode} without a file: {last}")


def main(request_path):
    """The child: load the saved model on the TensorFlow backend, convert it."""
    with open(request_path) as f:
        request = json.load(f)
    for module in request["modules"]:
        importlib.import_module(module)
    import keras_bn.keras3  # noqa: F401 -- registers keras_bn's Keras 3 layers
    from keras_bn.export import to_onnx, to_tflite
    from keras_bn.quantization import QuantizationOptions

    keras = flavour.named("keras3").keras
    try:
        model = keras.saving.load_model(request["model"], safe_mode=False)
        arrays = np.load(request["arrays"])
        data = [arrays[f"calibration_{i}"] for i in range(len(arrays.files))]
        quantize = QuantizationOptions(**request["quantization"], calibration=data or None)
        options = dict(request["options"], verify=False, latency_batch=None)
        export_to = to_onnx if request["format"] == "onnx" else to_tflite
        result = export_to(model, request["out"], quantize=quantize, **options)
        reply = {"format": result.format, "op_counts": result.op_counts,
                 "post_training": [dataclasses.asdict(r) for r in result.post_training]}
    except ValueError as error:  # InputError, VerificationError: the user's to read
        reply = {"error": type(error).__name__, "message": str(error)}
    with open(request["reply"], "w") as f:
        json.dump(reply, f)


if __name__ == "__main__":
    main(sys.argv[1])
