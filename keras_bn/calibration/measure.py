"""What a BN layer's inputs are: per-channel count, mean and sum of squared deviations,
recorded from every call of the layer while a model runs, merged exactly across batches
and replicas. Used by `keras_bn.recalibrate` and `keras_bn.callbacks.BatchNormMonitor`.

The model runs in inference mode in a compiled step of its backend: a `tf.function` on
TensorFlow (per replica under a `tf.distribute` strategy), `jax.jit` of its
`stateless_call` on JAX (the variables are arguments, so the step sees the statistics a
previous pass wrote), an eager call without gradients on torch. Inside the step each BN
call gives float32 sums per example (`example_sums`, on the flavour's `ops`); the sums
across examples and batches are taken here in float64 numpy. TensorFlow is imported only for a TensorFlow model.
"""

import contextlib
import weakref
from typing import Any

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.layers.find import bn_axes


def merge(a, b):
    """Chan et al.'s parallel update of `(count, mean, m2)` triples (per channel, float64):
    the statistics of the union of two sets from those of each."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    safe = np.maximum(n, 1)
    delta = mb - ma
    return n, ma + delta * nb / safe, sa + sb + delta ** 2 * na * nb / safe


def example_sums(ops, x, axes, mask=None):
    """One BN call's inputs as float32 sums per example, in the compiled step.

    Returns `(count, s1, s2, shift)`, each with the batch axis and the channel `axes`
    (the other axes summed, kept with size 1): `s1 = sum(x - shift)` and
    `s2 = sum((x - shift)**2)` over each example's positions (masked ones left out),
    `count` the positions counted, `shift` the first example's mean (close to the batch
    mean, so the sums hold deviations, not the offset). `combine` takes them across
    examples in float64: all-float64 reductions cost 0.65 of a ResNet50 forward pass on
    CPU (recalibrate took 2.0x `predict`; this, 1.2x), and unshifted float32 sums were
    measured 1.2e-5 off on inputs of mean 100 and std 0.1.
    """
    x = _computing(ops, x)
    inner = tuple(i for i in range(1, len(x.shape)) if i not in axes)  # within examples
    if mask is None:
        weights = None
        shift = ops.mean(x[:1], axis=inner, keepdims=True)
    else:
        weights = ops.cast(mask, x.dtype)
        while len(weights.shape) < len(x.shape):
            weights = ops.expand_dims(weights, -1)
        weights = ops.broadcast_to(weights, ops.shape(x))
        shift = (ops.sum(x[:1] * weights[:1], axis=inner, keepdims=True)
                 / ops.maximum(ops.sum(weights[:1], axis=inner, keepdims=True), 1.0))
    centred = x - shift
    weighted = centred if weights is None else centred * weights
    s1 = ops.sum(weighted, axis=inner, keepdims=True)
    s2 = ops.sum(weighted * centred, axis=inner, keepdims=True)
    if weights is None:
        count = ops.sum(ops.ones_like(centred), axis=inner, keepdims=True)
    else:
        count = ops.sum(weights, axis=inner, keepdims=True)
    return count, s1, s2, shift


def combine(sums, axes):
    """`(count, mean, m2)` per channel (float64 numpy) of one call from its
    `example_sums`, summed across examples in float64; `axes` are the BN's channel axes
    of the input."""
    count, s1, s2, shift = (np.asarray(t, np.float64) for t in sums)
    n, total1, total2 = count.sum(0), s1.sum(0), s2.sum(0)
    safe = np.maximum(n, 1)
    mean = shift[0] + total1 / safe
    m2 = np.maximum(total2 - np.square(total1) / safe, 0.0)
    inner = tuple(i - 1 for i in range(1, count.ndim) if i not in axes)
    return tuple(np.squeeze(t, inner) for t in (n, mean, m2))


def _computing(ops, x):
    """`x` in the dtype the sums are taken in: float32, or float64 for float64 inputs."""
    x = ops.convert_to_tensor(x)
    name = getattr(x.dtype, "name", str(x.dtype)).replace("torch.", "")
    return x if name in ("float32", "float64") else ops.cast(x, "float32")


def batch_normalized(ops, layer, x, sums, axes):
    """What `layer` returns for `x` in training mode without its renormalization: `x`
    normalized by the batch's own mean and (biased) variance, from the call's
    `example_sums`, then scaled and shifted by its gamma and beta. Bounded whatever the
    layer's stored statistics, so a pass through a deep model from stale or fresh
    statistics cannot overflow; at a fixed point the inference-mode output of a BN and
    of a BRN (which normalizes by its moving statistics) is this with the data set's
    statistics in place of the batch's."""
    count, s1, s2, shift = sums
    n = ops.maximum(ops.sum(count, axis=0, keepdims=True), 1.0)
    deviation = ops.sum(s1, axis=0, keepdims=True) / n
    variance = ops.maximum(ops.sum(s2, axis=0, keepdims=True) / n - deviation ** 2, 0.0)
    y = (_computing(ops, x) - (shift + deviation)) * ops.rsqrt(
        variance + layer.epsilon)
    broadcast = tuple(dim if i in axes else 1 for i, dim in enumerate(x.shape))
    if getattr(layer, "gamma", None) is not None:
        y = y * ops.reshape(ops.cast(layer.gamma, y.dtype), broadcast)
    if getattr(layer, "beta", None) is not None:
        y = y + ops.reshape(ops.cast(layer.beta, y.dtype), broadcast)
    return ops.cast(y, x.dtype)


def batch_moments(x, axes, mask=None, ops=None):
    """`(count, mean, m2)` per channel (float64 numpy) of one batch `x` reduced over all
    axes but `axes`: `combine` of its `example_sums` (eagerly, on TensorFlow's ops by
    default)."""
    if ops is None:
        ops = flavour.named("tf_keras").ops
    return combine(example_sums(ops, x, axes, mask), axes)


def _tensorflow():
    import tensorflow as tf

    return tf


@contextlib.contextmanager
def recording(layers, backend="tensorflow", normalize="stored"):
    """Makes each BN layer record the `example_sums` of its inputs on every call (a
    shared layer once per call) into the yielded dict, name -> list. `normalize`:
    "stored", each layer then runs as itself (inference mode: its stored statistics);
    "batch", it returns its input normalized by the batch's statistics
    (`batch_normalized`)."""
    records: dict[str, list] = {name: [] for name, _ in layers}
    keep_python = (_tensorflow().autograph.experimental.do_not_convert
                   if backend == "tensorflow" else (lambda f: f))
    for name, layer in layers:
        ops = flavour.of(layer).ops

        @keep_python
        def call(inputs, *args, _layer=layer, _name=name, _ops=ops, **kwargs):
            axes = bn_axes(_layer)
            sums = example_sums(_ops, inputs, axes, kwargs.get("mask"))
            records[_name].append(sums)
            if normalize == "batch":
                return batch_normalized(_ops, _layer, _ops.convert_to_tensor(inputs), sums,
                                        axes)
            return type(_layer).call(_layer, inputs, *args, **kwargs)

        layer.call = call  # an instance attribute: Keras's __call__ looks `call` up
    try:
        yield records
    finally:
        for _, layer in layers:
            del layer.call


def measure_inputs(model, layers, data, steps=None, batch_size=32, verbose=0,
                   label="pass 1", normalize="stored"):
    """name -> `(count, mean, m2)` (float64 numpy arrays) of each of `layers'` inputs
    (`(name, layer)` pairs) over all of `data`, the model running in inference mode in a
    compiled step of its backend (TensorFlow: per replica under a `tf.distribute`
    strategy, merged exactly; JAX: `jax.jit`; torch: eagerly, without gradients).
    `normalize="batch"` makes the BN layers normalize by each batch's statistics
    (`recording`).

    Raises:
      InputError: no batch in `data` (`label`, e.g. "pass 2", says which pass), a layer
        the model never called, a backend with no compiled step here, or a
        distribution strategy with data that is not an array or a `tf.data.Dataset`.
    """
    plumbing = flavour.of(model)
    backend = plumbing.backend()
    if backend not in _STEP_BUILDERS:
        raise InputError(
            f"Measuring BN inputs of Keras 3 model '{model.name}' runs it on the "
            f"TensorFlow, JAX or torch backend; this process runs the {backend} "
            "backend. Save the model and recalibrate it with KERAS_BACKEND=jax, torch or "
            "tensorflow (the weights are the same).")
    totals = {name: None for name, _ in layers}
    axes = {name: bn_axes(layer) for name, layer in layers}
    strategy = None
    if backend == "tensorflow":
        tf = _tensorflow()
        strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    compiled, holder = _compiled_step(model, layers, backend, normalize)
    with recording(layers, backend, normalize) as records:
        holder["records"] = records  # what a (re)trace records into
        if strategy:
            run = lambda x: _per_replica(strategy, strategy.run(compiled, (x,)))
        else:
            run = lambda x: [compiled(x)]
        total = steps or _length(data, batch_size)
        if backend != "tensorflow" and _is_dataset(data):  # JAX, torch: numpy batches
            data = _AsNumpy(data)
        batches = _batches(data, batch_size, strategy)
        progress = plumbing.Progbar(total, unit_name="batch") if verbose else None
        if progress:
            print(f"recalibrate, {label}")
        seen = 0
        for batch in batches:
            if steps is not None and seen >= steps:
                break
            for replica in run(batch):
                for name, calls in replica.items():
                    for call in calls:
                        triple = combine(call, axes[name])
                        totals[name] = triple if totals[name] is None else merge(
                            totals[name], triple)
            seen += 1
            if progress:
                progress.update(seen)
    if seen == 0:
        again = "" if label.startswith("pass 1") else (
            " on a later pass: an iterator or generator can be read only once; give a "
            "numpy array, a tf.data.Dataset or a list, or passes=1")
        raise InputError(f"recalibrate: `data` gave no batch{again}.")
    unused = [name for name, total in totals.items() if total is None]
    if unused:
        raise InputError(f"recalibrate: BN layer(s) {unused} were not called by the model "
                         "on `data`; their statistics cannot be measured.")
    return totals


#: model -> {(BN layers, backend, normalize): (compiled step, holder)}: the measuring
#: function is traced once per model, mode and input shape, not at every pass or call
#: (tracing MobileNetV2 took ~0.7 s, 9x the `predict` of 64 images). Weak keys, and the
#: step holds the model weakly.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensorflow_step(owner, holder):
    def step(x):  # Python runs only while tracing: it wires this trace's tensors
        records = holder["records"]
        for calls in records.values():
            calls.clear()
        owner()(x, training=False)
        return {name: list(calls) for name, calls in records.items()}

    return _tensorflow().function(step, reduce_retracing=True)


def _jax_step(owner, holder):
    """`jax.jit` of the model's `stateless_call`: the variables are arguments (a step
    that read them as constants would keep the statistics of its first trace)."""
    import jax

    def step(trainable, non_trainable, x):
        records = holder["records"]
        for calls in records.values():
            calls.clear()
        owner().stateless_call(trainable, non_trainable, x, training=False)
        return {name: list(calls) for name, calls in records.items()}

    jitted = jax.jit(step)

    def run(x):
        model = owner()
        return jitted([v.value for v in model.trainable_variables],
                      [v.value for v in model.non_trainable_variables], x)

    return run


def _torch_step(owner, holder):
    """An eager call without gradients: torch has no trace for the recording to live in,
    so the patched calls record at every call."""
    import torch

    def step(x):
        records = holder["records"]
        for calls in records.values():
            calls.clear()
        with torch.no_grad():
            owner()(x, training=False)
        return {name: [tuple(t.detach().cpu().numpy() for t in call) for call in calls]
                for name, calls in records.items()}

    return step


_STEP_BUILDERS = {"tensorflow": _tensorflow_step, "jax": _jax_step, "torch": _torch_step}


def _compiled_step(model, layers, backend, normalize="stored"):
    key = (tuple(id(layer) for _, layer in layers), backend, normalize)
    steps = _STEPS.get(model)
    if steps is None or any(k[0] != key[0] for k in steps):  # other layers: start again
        steps = _STEPS[model] = {}
    if key not in steps:
        holder: dict[str, Any] = {}
        steps[key] = (_STEP_BUILDERS[backend](weakref.ref(model), holder), holder)
    return steps[key]


def _per_replica(strategy, structure):
    """A structure of per-replica values as one structure per local replica."""
    tf = _tensorflow()
    flat = [strategy.experimental_local_results(v) for v in tf.nest.flatten(structure)]
    replicas = len(flat[0]) if flat else 0
    return [tf.nest.pack_sequence_as(structure, [v[i] for v in flat]) for i in range(replicas)]


def _is_dataset(data):
    """A `tf.data.Dataset` (without importing TensorFlow for other data)."""
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "cardinality")


class _AsNumpy:
    """A `tf.data.Dataset` read as numpy batches, afresh on every pass."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return self.dataset.as_numpy_iterator()


def _batches(data, batch_size, strategy):
    """Input batches; under a strategy, distributed ones."""
    if strategy is not None:
        tf = _tensorflow()
        if isinstance(data, np.ndarray):
            data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
        if not isinstance(data, tf.data.Dataset):
            raise InputError("recalibrate under a tf.distribute strategy needs a numpy array "
                             "or a tf.data.Dataset of batches.")
        data = data.map(_inputs_of)
        return strategy.experimental_distribute_dataset(data)
    if isinstance(data, np.ndarray):
        return (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    return (_inputs_of(*item) if isinstance(item, tuple) else item for item in data)


def _inputs_of(*element):
    """The inputs of an element `x`, `(x, y)` or `(x, y, sample_weight)`."""
    return element[0] if len(element) <= 3 else element


def _length(data, batch_size):
    if isinstance(data, np.ndarray):
        return -(-len(data) // batch_size)
    if _is_dataset(data):
        n = int(data.cardinality())
        return n if n >= 0 else None
    return len(data) if hasattr(data, "__len__") else None
