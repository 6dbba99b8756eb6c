"""Finding the BatchNormalization layers of a model: the helpers every feature shares.

Folding, freezing, recalibration, the summary and the benchmarks all need "which layers
are BN, where are they, over which axes"; they import it from here, not from each other.

Every helper takes a layer or model of either Keras flavour (tf-keras or Keras 3).
"""

from collections.abc import Callable

from keras_bn import flavour
from keras_bn.flavour import Layer, Model
from keras_bn.layers.activation_quantizer import ActivationQuantizer as _Quantizer
from keras_bn.layers.batch_normalization import BatchNormalization as _Core
from keras_bn.layers.quantized_conv_bn import QuantizedConvBN as _Fused


def is_batch_norm(layer: Layer) -> bool:
    """A BatchNormalization of tf-keras or Keras 3 (`renorm=True` included), or a keras_bn
    one of either flavour (BatchRenormalization included)."""
    return isinstance(layer, (flavour.of(layer).BuiltinBatchNormalization, _Core))


def is_ours(layer: Layer) -> bool:
    """A keras_bn layer (BatchNormalization or BatchRenormalization), either flavour:
    both flavours' classes are the one core on their base class."""
    return isinstance(layer, _Core)


def is_model(layer: Layer) -> bool:
    """Whether a layer of a model is itself a (nested) model."""
    return isinstance(layer, flavour.of(layer).keras.Model)


def bn_kind(layer: Layer) -> str:
    """`"tf_keras.BatchNormalization"`, `"keras.BatchNormalization"` (Keras 3),
    `"keras_bn.BatchRenormalization"`, `"keras_bn.keras3.BatchNormalization"`, ..."""
    plumbing = flavour.of(layer)
    label = plumbing.OUR_LABEL if is_ours(layer) else plumbing.LABEL
    return f"{label}.{type(layer).__name__}"


def bn_axes(layer: Layer) -> list:
    """The BN layer's channel axes as non-negative integers (it must be built)."""
    if is_ours(layer):
        return list(layer.channel_axes)
    # tf-keras's `build` turns `axis` into a list of non-negative axes; Keras 3 keeps the
    # integer it was given (-1), resolved here against the rank its input spec holds.
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = getattr(layer.input_spec, "ndim", None)
    return sorted(a % rank if rank else a for a in axes)


def all_layers(model):
    """Every layer of `model`, nested models' layers included (after the model itself)."""
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from all_layers(layer)


def quantization_aware_layers(model: Model) -> list[str]:
    """The names of the QuantizedConvBN and ActivationQuantizer layers of `model` (a
    model `keras_bn.quantization.quantize_aware` made), nested models' included."""
    return [layer.name for layer in all_layers(model) if isinstance(layer, (_Fused, _Quantizer))]


def activation_quantizers(model: Model) -> list:
    """The ActivationQuantizer layers of `model`, nested models' included."""
    return [layer for layer in all_layers(model) if isinstance(layer, _Quantizer)]


def _named_layers(model: Model, keep: Callable[[Layer], bool]) -> list[tuple[str, str]]:
    """`(name, class name)` of every layer of `model` that is not a model and that `keep`
    keeps, nested models' included with `outer/inner` names."""
    found = []

    def walk(layers, path):
        for layer in layers:
            if is_model(layer):
                walk(layer.layers, path + (layer.name,))
            elif keep(layer):
                found.append(("/".join(path + (layer.name,)), type(layer).__name__))

    walk(model.layers, ())
    return found


def revived_layers(model: Model) -> list[tuple[str, str]]:
    """`(name, saved class name)` of every layer of `model` (nested models' included,
    `outer/inner` names) that tf-keras revived from a SavedModel without its class."""
    return _named_layers(model, lambda layer: flavour.of(layer).is_revived(layer))


#: Normalization layers that use each sample's own statistics (Keras built-ins and the
#: usual add-ons' names): nothing fixed to fold, whatever the neighbours.
PER_SAMPLE_NORMALIZATIONS = ("GroupNormalization", "LayerNormalization",
                             "UnitNormalization", "RMSNormalization",
                             "InstanceNormalization")

#: Why such a layer stays, in one line.
PER_SAMPLE_REASON = ("normalizes each sample by its own statistics, computed anew for "
                     "every input, so it is no fixed affine map and cannot fold")


def per_sample_normalizations(model: Model) -> list[tuple[str, str]]:
    """`(name, class name)` of every layer of `model` (nested models' included,
    `outer/inner` names) of a class in `PER_SAMPLE_NORMALIZATIONS`."""
    return _named_layers(model,
                         lambda layer: type(layer).__name__ in PER_SAMPLE_NORMALIZATIONS)


def per_sample_note(model: Model) -> str | None:
    """One line saying which per-sample normalization layers `model` holds and why they
    stay (None where it holds none)."""
    found = per_sample_normalizations(model)
    if not found:
        return None
    names = ", ".join(f"'{name}' ({cls})" for name, cls in found)
    return f"Not BN, kept: {names}: each {PER_SAMPLE_REASON}."


def batch_norm_paths(model, path=()):
    """`(path, layer)` for every BN layer of `model`, in layer order: nested models' and
    those a custom layer or wrapper holds (keras-hub's blocks, `TimeDistributed`)
    included. `path` is the tuple of the names of the models and layers that hold it,
    then the layer's own name (names may contain `/`, so a path is never a split
    string)."""
    for path, _, layer in batch_norm_places(model, path):
        yield path, layer


def batch_norm_places(model, path=()):
    """`(path, place, layer)` for every BN of `batch_norm_paths`; `place` is its path cut
    after the first layer that is not a model (the custom layer that holds it, whose
    sublayers' names are its own business: rebuilt from its config it may name them
    anew), the full path for a BN of a model's graph."""
    for layer in model.layers:
        yield from _places_in(layer, path, None)


def _places_in(layer, path, place):
    if is_model(layer):
        for inner in layer.layers:
            yield from _places_in(inner, path + (layer.name,), place)
    elif is_batch_norm(layer):
        yield path + (layer.name,), place or path + (layer.name,), layer
    else:
        for inner in flavour.of(layer).sublayers(layer):
            yield from _places_in(inner, path + (layer.name,), place or path + (layer.name,))


def batch_norm_paths_in(layer, path=()):
    """`batch_norm_paths` of one layer that is not a model: the BNs it holds."""
    for inner in flavour.of(layer).sublayers(layer):
        for inner_path, _, bn in _places_in(inner, path, path):
            yield inner_path, bn


def batch_norm_layers(model):
    """`(name, layer)` for every BN layer of `model`, nested models' and custom layers'
    included (`outer/inner` names), in layer order."""
    for path, layer in batch_norm_paths(model):
        yield "/".join(path), layer


def distinct_batch_norm_layers(model):
    """`batch_norm_layers`, each layer object once: a layer shared by several nested
    models keeps its first name."""
    seen = set()
    for name, layer in batch_norm_layers(model):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield name, layer
