"""`keras_bn.freeze` / `keras_bn.unfreeze`: BN layers in inference mode for fine-tuning."""

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Model
from keras_bn.layers.find import batch_norm_layers, is_ours


def freeze(model: Model, *, train_gamma_beta: bool = False) -> list:
    """Puts every BatchNormalization layer of `model` in inference mode for fine-tuning.

    A frozen BN normalizes with its moving statistics and never updates them, whatever
    `training` the model is called with, so fine-tuning on a small or different dataset
    cannot wreck statistics learned on a large one. Every other layer keeps its
    `trainable` state. Works on tf-keras and Keras 3 models: their BatchNormalization and
    keras_bn's layers (either flavour), in nested models too.

    By default this sets `trainable = False` on each BN layer, which in tf-keras 2 and
    Keras 3 means both "inference mode" and "gamma and beta are not trained" (and is saved
    with the model). With `train_gamma_beta=True`, keras_bn layers stay trainable (gamma and beta
    keep learning) but run in inference mode; this state is not saved in the model file.
    Recompile the model after freezing for `fit` to see the change.

    Args:
      model: A tf-keras or Keras 3 model (any kind).
      train_gamma_beta: Keep gamma and beta trainable.

    Returns:
      The names of the BN layers frozen.

    Raises:
      ValueError: `train_gamma_beta=True` with a Keras BatchNormalization (not keras_bn's),
        which cannot run in inference mode while trainable; the message names the layer
        and the fix.
    """
    layers = list(batch_norm_layers(model))
    if train_gamma_beta:
        builtin = [name for name, layer in layers if not is_ours(layer)]
        if builtin:
            plumbing = flavour.of(model)
            raise InputError(
                f"freeze(train_gamma_beta=True): {plumbing.TITLE} BatchNormalization layer(s) "
                f"{', '.join(repr(n) for n in builtin)} run in inference mode only when "
                "trainable=False, which also freezes gamma and beta. Use train_gamma_beta="
                f"False, or build the model with {plumbing.OUR_LABEL}.BatchNormalization.")
    for _, layer in layers:
        if train_gamma_beta:
            layer.frozen = True
        else:
            layer.trainable = False
    return [name for name, _ in layers]


def unfreeze(model: Model) -> list:
    """Undoes `freeze`: every BN layer trainable and back in training mode when training.

    Returns:
      The names of the BN layers unfrozen.
    """
    layers = list(batch_norm_layers(model))
    for _, layer in layers:
        layer.trainable = True
        if is_ours(layer):
            layer.frozen = False
    return [name for name, _ in layers]
