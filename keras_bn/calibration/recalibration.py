"""`keras_bn.recalibrate`: set BN statistics to the exact statistics of their inputs over
a data set (precise BN; on new, unlabelled data, AdaBN)."""

import numpy as np

from keras_bn import flavour
from keras_bn.calibration.measure import measure_inputs
from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model
from keras_bn.layers.find import distinct_batch_norm_layers


#: Automatic passes stop once no channel's mean moved by more than this many standard
#: deviations and no variance by more than this fraction in the last pass.
CONVERGED = 1e-4


def recalibrate(model: Model, data: Inputs, *, steps: int | None = None, batch_size: int = 32,
                passes: int | None = None, verbose: int = 1) -> list:
    """Sets every BN layer's moving statistics to the exact statistics of its inputs.

    The moving averages a BN layer keeps during training are a poor estimate of what it
    meets at inference: they weight the last few hundred batches, computed while the
    weights were still changing, and are biased by small batches or a shifted input
    distribution. This replaces them by the mean and variance of each layer's inputs over
    the whole of `data` ("precise BN", Wu & Johnson 2021; on new, unlabelled data it is
    AdaBN, Li et al. 2016), so the evaluated model uses true statistics.

    Exact whatever the batching: each batch gives every channel its count, mean and sum
    of squared deviations, merged across batches (and replicas) in float64 with Chan et
    al.'s parallel update, so the result equals numpy's `mean` and `var(ddof=1)` over the
    concatenated inputs, for any batch size, any order (data sorted by class, domain or
    file included) and a ragged last batch. Averaging per-batch variances instead (as
    fvcore's precise BN and torch's `update_bn` do) leaves out the spread of the batch
    means: on class-sorted data it underestimates the variance several times over.

    Which inputs: the statistics a BN layer should hold are those of the inputs it meets
    in the final model, where every BN before it normalizes with its own final
    statistics: a fixed point, reached in passes over `data`.

    * By default (`passes=None`) the first pass makes every BN normalize by each
      batch's own statistics (as in training, without changing the layer) and measures
      every layer's inputs behind them: whatever the stored statistics (freshly
      initialised, or measured on other inputs), nothing explodes, and every layer starts
      close to its fixed point. Then passes in inference mode, each measuring every
      layer behind the statistics the last pass wrote, repeat until nothing moves (no
      channel's mean by 1e-4 of its standard deviation, no variance by 1e-4); the
      statistics of a BN then are those of the inputs it meets in the final model. There
      is no cap a deep model cannot meet: a pass settles exactly every BN whose chain of
      BNs before it is one longer than the last pass's, so after as many inference
      passes as the longest chain of BNs plus one, nothing can move; the loop stops
      there at the latest. Starting from inference-mode passes instead overflowed float32
      on freshly initialised Keras EfficientNetB0, MobileNetV3Small, ResNet50 and
      DenseNet121, and could not reach BN 50 of a 50-BN chain in a fixed number of
      passes. Passes and time against depth: `make bench` (docs/benchmarks.md).
    * `passes=N` runs N passes in inference mode from the stored statistics: `passes=1`
      is the cheapest (one inference pass), and enough where the statistics barely
      move (precise BN right after training).

    All or nothing: nothing changes until every pass is done; a failure (bad data, an
    interrupt) leaves every variable as it was. Works on frozen layers (`trainable=False`,
    `keras_bn.freeze`) and on BatchRenormalization (keras_bn's and tf-keras's
    `renorm=True`), whose renorm statistics (and tf-keras's `moving_stddev`) are set
    consistently. Every other weight is left alone, and no other layer changes mode
    (dropout stays off). The variance stored is the unbiased one (`ddof=1`, keras_bn's
    convention) for every layer.

    Cost: one forward pass per pass, compiled with `tf.function` on TensorFlow,
    `jax.jit` on Keras 3's JAX backend, eager without gradients on torch. Under a
    `tf.distribute` strategy (call it inside `strategy.scope()`), each replica measures
    its share of every batch and the shares are merged exactly.

    Args:
      model: A tf-keras model, or a Keras 3 model on the TensorFlow, JAX or torch
        backend (any structure: nested models, shared layers, BNs inside custom layers),
        with its flavour's or keras_bn's BatchNormalization layers.
      data: A numpy array of inputs (batched by `batch_size`), a `tf.data.Dataset` of
        batches, or any iterable of batches (read once per pass: a generator allows
        `passes=1` only). A tuple element `(inputs, labels)` or
        `(inputs, labels, weights)` gives its inputs (labels are not needed); a
        multi-input batch is a list of arrays.
      steps: Use at most this many batches per pass (None: all of `data`).
      batch_size: Batch size for numpy arrays (any: the result does not depend on it).
      passes: Number of inference-mode passes from the stored statistics; None starts
        from batch statistics and repeats passes until the fixed point (see above).
      verbose: 1 shows a progress bar.

    Returns:
      A list of dicts, one per BN layer: `name`, `count` (elements per channel measured),
      `mean_shift` (largest change of a channel's mean, in units of its old standard
      deviation), `variance_ratio` ((min, max) over channels of new / old variance).

    Raises:
      keras_bn.errors.InputError: no BN layer in the model, no batch in `data`,
        `passes < 1`, or statistics that overflow (nothing is changed then).
    """
    layers = list(distinct_batch_norm_layers(model))
    if not layers:
        raise InputError(f"recalibrate: model '{model.name}' has no BatchNormalization layer.")
    if passes is not None and passes < 1:
        raise InputError(f"recalibrate got passes={passes}; it must be >= 1 (or None: "
                         "until the statistics converge).")
    plumbing = flavour.of(model)
    saved = [(v, v.numpy()) for _, layer in layers for v in _statistic_variables(layer)]
    before = {name: _moments(layer) for name, layer in layers}
    # Every inference pass settles one more BN of the longest chain: this many passes
    # after the first reach the fixed point whatever the convergence test says.
    schedule = (["stored"] * passes if passes else
                ["batch"] + ["stored"] * (len(layers) + 1))
    try:
        # A pass behind statistics that do not fit yet may overflow on the way; the
        # passes after it measure behind finite ones again (checked below).
        with np.errstate(over="ignore", invalid="ignore"):
            for number, normalize in enumerate(schedule):
                label = (f"pass {number + 1}" + (f"/{passes}" if passes else "")
                         + (" (batch statistics)" if normalize == "batch" else ""))
                last = {name: _moments(layer) for name, layer in layers}
                measured = measure_inputs(model, layers, data, steps, batch_size, verbose,
                                          label, normalize)
                plumbing.set_values(
                    [pair for name, layer in layers for pair in _assignments(layer, *measured[name])])
                if passes is None and normalize == "stored" and _converged(last, layers):
                    break
        overflow = [name for name, layer in layers
                    if not all(np.all(np.isfinite(v.numpy()))
                               for v in _statistic_variables(layer))]
        if overflow:
            raise InputError(
                f"recalibrate: the statistics of BN layer(s) {overflow[:5]} are not finite: "
                "the model's activations overflow on `data` (inputs on another scale than "
                "the model expects, or weights that diverged); nothing was changed.")
    except BaseException:
        plumbing.set_values(saved)
        raise
    return [_moved(name, before[name], _moments(layer), measured[name][0])
            for name, layer in layers]


# -- writing them ---------------------------------------------------------------------


def _statistic_variables(layer):
    names = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")
    return [getattr(layer, n) for n in names if getattr(layer, n, None) is not None]


def _assignments(layer, count, mean, m2):
    """(variable, value) pairs: the layer's statistics from `(count, mean, m2)`."""
    variance = m2 / np.maximum(count - 1, 1)
    stddev = np.sqrt(variance + layer.epsilon)
    values = {"moving_mean": mean, "moving_variance": variance, "moving_stddev": stddev,
              "renorm_mean": mean, "renorm_stddev": stddev}
    pairs = []
    for variable in _statistic_variables(layer):
        name = next(n for n in values if getattr(layer, n, None) is variable)
        with np.errstate(over="ignore"):  # an overflow is reported once all passes ran
            value = np.reshape(values[name], variable.shape).astype(
                flavour.of(layer).numpy_dtype(variable))
        pairs.append((variable, value))
    return pairs


def _converged(last, layers):
    for name, layer in layers:
        moved = _moved(name, last[name], _moments(layer), np.zeros(1))
        low, high = moved["variance_ratio"]
        if not (moved["mean_shift"] <= CONVERGED and 1 - CONVERGED <= low
                and high <= 1 + CONVERGED):  # NaN (an overflow) is not converged
            return False
    return True


def _moments(layer):
    return (np.reshape(layer.moving_mean.numpy(), -1).astype(np.float64),
            np.reshape(layer.moving_variance.numpy(), -1).astype(np.float64))


def _moved(name, before, after, count):
    (mean0, var0), (mean1, var1) = before, after
    return {"name": name, "count": int(np.min(count)),
            "mean_shift": float(np.max(np.abs(mean1 - mean0) / np.sqrt(var0 + 1e-12))),
            "variance_ratio": (float(np.min(var1 / np.maximum(var0, 1e-12))),
                               float(np.max(var1 / np.maximum(var0, 1e-12))))}
