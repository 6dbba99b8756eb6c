"""`keras_bn.recalibrate`: recompute BN moving statistics as a true average (precise BN)."""

import numpy as np

from keras_bn import _keras
from keras_bn.errors import InputError
from keras_bn.walk import batch_norm_layers


def _batches(data, batch_size):
    """Input batches from an array, a tf.data.Dataset or any iterable; `(x, y)` pairs give x."""
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else item


def _statistics(layers):
    return {name: (np.reshape(l.moving_mean.numpy(), -1).copy(),
                   np.reshape(l.moving_variance.numpy(), -1).copy()) for name, l in layers}


def recalibrate(model, data, *, steps=None, batch_size=32, verbose=1):
    """Recomputes every BN layer's moving statistics as the true average over `data`.

    The moving averages a BN layer keeps during training are a poor estimate of the
    statistics it meets at inference: they weight the last few hundred batches, computed
    while the weights were still changing, and are biased by tiny batches or by a shift of
    the input distribution. This resets them and runs the model on `data` in training
    mode, setting each layer's statistics to the plain (cumulative) average of its batch
    statistics: batch k enters with weight 1/k, so the result is the mean over all
    batches ("precise BN", Wu & Johnson 2021; on new data it is AdaBN, Li et al. 2016).
    Each layer keeps its own variance convention. Only `moving_mean` and
    `moving_variance` change: every other weight (gamma, beta, BRN's renorm statistics
    and step, counters) is restored, and each layer's momentum and `trainable` flag too.

    Cost: one forward pass of the model per batch (eager, training mode).

    Args:
      model: A tf-keras model with tf-keras or keras_bn BatchNormalization layers.
      data: A numpy array of inputs (batched by `batch_size`), a `tf.data.Dataset` or any
        iterable of input batches (or of `(inputs, labels)` pairs).
      steps: Use at most this many batches (None: all of `data`).
      batch_size: Batch size for numpy arrays. Statistics of tiny batches are noisy: use
        the batch size of training, or larger.
      verbose: 1 shows a progress bar.

    Returns:
      A list of dicts, one per BN layer: `name`, `mean_shift` (largest change of a
      channel's mean, in units of its old standard deviation), `variance_ratio` ((min, max)
      of new / old variance over channels).

    Raises:
      ValueError: no BN layer in the model, or no batch in `data`.
    """
    layers = list(batch_norm_layers(model))
    if not layers:
        raise InputError(f"recalibrate: model '{model.name}' has no BatchNormalization layer.")
    before = _statistics(layers)
    saved = {name: ([w.numpy() for w in layer.weights], layer.momentum, layer.trainable)
             for name, layer in layers}
    total = steps if steps is not None else (
        -(-len(data) // batch_size) if isinstance(data, np.ndarray) else None)
    progress = _keras.keras.utils.Progbar(total, unit_name="batch") if verbose else None
    count = 0
    try:
        for _, layer in layers:
            layer.trainable = True
        for batch in _batches(data, batch_size):
            if steps is not None and count >= steps:
                break
            count += 1
            for _, layer in layers:  # batch k enters with weight 1/k
                layer.momentum = (count - 1) / count
            model(batch, training=True)
            if progress:
                progress.update(count)
        if count == 0:
            raise InputError("recalibrate: `data` gave no batch.")
    finally:
        pairs = []
        for name, layer in layers:
            weights, layer.momentum, layer.trainable = saved[name]
            keep = {id(layer.moving_mean), id(layer.moving_variance)} if count else set()
            pairs += [(w, v) for w, v in zip(layer.weights, weights) if id(w) not in keep]
        _keras.keras.backend.batch_set_value(pairs)
    after = _statistics(layers)
    summary = []
    for name, _ in layers:
        (mean0, var0), (mean1, var1) = before[name], after[name]
        summary.append({
            "name": name,
            "mean_shift": float(np.max(np.abs(mean1 - mean0) / np.sqrt(var0 + 1e-12))),
            "variance_ratio": (float(np.min(var1 / np.maximum(var0, 1e-12))),
                               float(np.max(var1 / np.maximum(var0, 1e-12)))),
        })
    return summary
