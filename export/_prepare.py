"""The step every exporter starts with: the model to convert (folded, and for a calibrated
mode after the post-training techniques), its input signature and the names its outputs
get in the files."""

import collections

import tensorflow as tf

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Model
from keras_bn.folding import fold as _fold
from keras_bn.memo import LastModel, weights_digest
from keras_bn.quantization import post_training
from keras_bn.quantization.inference import inference_model, state
from keras_bn.verification import model_inputs

#: The last fold: exporting the same model, weights and samples again (`to_onnx` then
#: `to_tflite`, the CLI's two files) converts the same folded model without folding and
#: verifying it a second time (InceptionResNetV2: 2 x 9 s).
_LAST_FOLD = LastModel()


def prepare(model, fold, verify=True, samples=None, learned=False):
    """`(model to convert, FoldPlan or None)`: the folded (and, with `verify`, checked
    on `samples` or the default random batch, the inputs the file is checked on too)
    model when `fold`. The model runs on TensorFlow (a Keras 3 model on another backend
    goes through `through_tensorflow` first).

    A quantization-aware model is first lowered to the plain model it computes in
    inference (`keras_bn.quantization.inference_model`): with `learned`, its activation
    quantizers stay, as the fake-quant ops that carry the learned int8 ranges into the
    file (its fold then is not compared with float tolerance: a rounding the fold's
    float noise flips moves a value by a whole step; the file is checked against the
    model instead), else they go."""
    aware = state(model).aware
    if not fold and not aware:
        return model, None
    arrays = [] if samples is None else model_inputs(model, samples, "samples")
    key = (fold, verify, learned, samples is None, weights_digest(model, *arrays))

    def make():
        lowered = inference_model(model, activations=learned) if aware else model
        if not fold:
            return lowered, None
        return _fold(lowered, verify=verify and not learned, samples=samples,
                     return_plan=True)

    return _LAST_FOLD.get(model, key, make)


#: The last post-trained model: the CLI's ONNX and TFLite files from one calibration
#: run the techniques once.
_LAST_POST_TRAINING = LastModel()


def quantization_input(model, fold, verify, samples, options, learned=False):
    """`(model to convert, FoldPlan or None, [Technique])`: `prepare`'s model after the
    post-training techniques of `options` (a `QuantizationOptions` whose calibration
    rows are already checked), run on its calibration rows; the same model, options and
    rows give the same object (both formats get the same weights); `learned`: a
    quantization-aware model's learned ranges go into the file (see `prepare`)."""
    converted, plan = prepare(model, fold, verify, samples, learned)
    names = options.techniques()
    if not names:
        return converted, plan, []
    key = (names, weights_digest(converted, *options.calibration))
    done, records = _LAST_POST_TRAINING.get(
        converted, key, lambda: post_training.apply(converted, options.calibration, names))
    return done, plan, list(records)


def input_signature(model):
    """One TensorSpec per model input, batch dimension left dynamic, named as the input."""
    return [tf.TensorSpec((None,) + tuple(spec.shape[1:]), spec.dtype, name=name)
            for spec, name in zip(model.inputs, flavour.of(model).input_names(model))]


def output_names(model: Model) -> list[str]:
    """The name of each output in the written files, in the order of `model.outputs`.

    A model that returns a dict (keras-hub's feature pyramids, detection heads) names
    each output by its key, a nested one by its keys and positions joined with "_"
    ("boxes", "pyramid_P3", "heads_0"); otherwise an output is named after the layer
    that makes it. A name that repeats gets "_1", "_2", ...
    """
    plumbing = flavour.of(model)
    paths = _paths(plumbing.output_structure(model))
    layers = plumbing.output_names(model)
    names = ["_".join(str(p) for p in path) if any(isinstance(p, str) for p in path)
             else layer for path, layer in zip(paths, layers)]
    unique: list[str] = []
    counts: collections.Counter[str] = collections.Counter()
    for name in names:
        new = name
        while new in unique:
            counts[name] += 1
            new = f"{name}_{counts[name]}"
        unique.append(new)
    return unique


def _paths(structure, path=()):
    """The key/index path of each leaf, in the order Keras flattens (a dict by sorted
    keys, a list or tuple by position)."""
    if isinstance(structure, dict):
        return [p for key in sorted(structure) for p in _paths(structure[key], path + (key,))]
    if isinstance(structure, (list, tuple)):
        return [p for i, item in enumerate(structure) for p in _paths(item, path + (i,))]
    return [path]
