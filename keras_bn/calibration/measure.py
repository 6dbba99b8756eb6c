"""What a BN layer's inputs are: per-channel count, mean and sum of squared deviations,
recorded from every call of the layer while a model runs, merged exactly across batches
and replicas. Used by `keras_bn.recalibrate` and `keras_bn.callbacks.BatchNormMonitor`."""

import contextlib
import weakref

import numpy as np
import tensorflow as tf

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


def batch_moments(x, axes, mask=None):
    """`(count, mean, m2)` per channel of one batch (float64), reduced over all but
    `axes`.

    One pass over shifted data: with `c` the first example's mean (close to the batch
    mean), `mean = c + S1 / n` and `m2 = S2 - S1**2 / n` from `S1 = sum(x - c)` and
    `S2 = sum((x - c)**2)`, so the sums hold deviations, not the offset. Each example's
    sums are taken in the input's float32 and the sums across examples in float64:
    all-float64 reductions cost 0.65 of a ResNet50 forward pass on CPU (recalibrate took
    2.0x `predict`; this, 1.2x), and unshifted float32 sums were measured 1.2e-5 off on
    inputs of mean 100 and std 0.1.
    """
    x = tf.convert_to_tensor(x)
    x = x if x.dtype in (tf.float32, tf.float64) else tf.cast(x, tf.float32)
    reduce = [i for i in range(x.shape.rank) if i not in axes]
    inner = [i for i in reduce if i != 0]  # within each example
    outer = [0] if 0 in reduce else []  # across examples
    weights = None  # no mask: every element counts, and no tensor of ones is made
    if mask is not None:
        weights = tf.cast(mask, x.dtype)
        while weights.shape.rank < x.shape.rank:
            weights = tf.expand_dims(weights, -1)
        weights = tf.broadcast_to(weights, tf.shape(x))

    def total(t):  # float32 within examples, float64 across them
        t = tf.reduce_sum(t, inner, keepdims=True)
        return tf.reduce_sum(tf.cast(t, tf.float64), outer, keepdims=True)

    if not outer:
        shift = tf.zeros_like(tf.reduce_sum(x, inner, keepdims=True))
    elif weights is None:
        shift = tf.reduce_mean(x[:1], inner, keepdims=True)
    else:
        shift = (tf.reduce_sum(x[:1] * weights[:1], inner, keepdims=True)
                 / tf.maximum(tf.reduce_sum(weights[:1], inner, keepdims=True), 1))
    centred = x - shift
    weighted = centred if weights is None else centred * weights
    s1, s2 = total(weighted), total(weighted * centred)
    if weights is None:
        per_channel = tf.size(x, out_type=tf.int64) // tf.size(s1, out_type=tf.int64)
        count = tf.fill(tf.shape(s1), tf.cast(per_channel, tf.float64))
    else:
        count = total(weights)
    safe = tf.maximum(count, 1)
    mean = tf.cast(shift, tf.float64) + s1 / safe
    m2 = tf.maximum(s2 - tf.square(s1) / safe, 0.0)
    squeeze = lambda t: tf.squeeze(t, reduce)
    return squeeze(count), squeeze(mean), squeeze(m2)


@contextlib.contextmanager
def recording(layers):
    """Makes each BN layer record `(count, mean, m2)` of its inputs on every call (a
    shared layer once per call) into the yielded dict, name -> list."""
    records = {name: [] for name, _ in layers}
    for name, layer in layers:

        @tf.autograph.experimental.do_not_convert
        def call(inputs, *args, _layer=layer, _name=name, **kwargs):
            records[_name].append(batch_moments(inputs, bn_axes(_layer), kwargs.get("mask")))
            return type(_layer).call(_layer, inputs, *args, **kwargs)

        layer.call = call  # an instance attribute: Keras's __call__ looks `call` up
    try:
        yield records
    finally:
        for _, layer in layers:
            del layer.call


def measure_inputs(model, layers, data, steps=None, batch_size=32, verbose=0,
                   label="pass 1"):
    """name -> `(count, mean, m2)` (float64 numpy arrays) of each of `layers`' inputs
    (`(name, layer)` pairs) over all of `data`, the model running in inference mode in a
    compiled step (per replica under a `tf.distribute` strategy, merged exactly).

    Raises:
      InputError: no batch in `data` (`label`, e.g. "pass 2", says which pass), a layer
        the model never called, or a Keras 3 model on a backend other than TensorFlow.
    """
    backend = flavour.of(model).backend()
    if backend != "tensorflow":
        raise InputError(
            f"Measuring BN inputs of Keras 3 model '{model.name}' runs it in a compiled "
            f"TensorFlow step; this process runs the {backend} backend. Save the model and "
            "recalibrate it with KERAS_BACKEND=tensorflow (the weights are the same).")
    totals = {name: None for name, _ in layers}
    strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    compiled, holder = _compiled_step(model, layers)
    with recording(layers) as records:
        holder["records"] = records  # what a (re)trace records into
        run = (lambda x: _per_replica(strategy, strategy.run(compiled, (x,)))) \
            if strategy else (lambda x: [compiled(x)])
        batches = _batches(data, batch_size, strategy)
        total = steps or _length(data, batch_size)
        progress = flavour.of(model).Progbar(total, unit_name="batch") if verbose else None
        if progress:
            print(f"recalibrate, {label}")
        seen = 0
        for batch in batches:
            if steps is not None and seen >= steps:
                break
            for replica in run(batch):
                for name, calls in replica.items():
                    for call in calls:
                        triple = tuple(np.asarray(t, np.float64) for t in call)
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


#: model -> (BN layers, compiled step, holder): the measuring function is traced once
#: per model and input shape, not at every pass or call (tracing MobileNetV2 took ~0.7 s,
#: 9x the `predict` of 64 images). Weak keys, and the step holds the model weakly.
_STEPS = weakref.WeakKeyDictionary()


def _compiled_step(model, layers):
    key = tuple(id(layer) for _, layer in layers)
    cached = _STEPS.get(model)
    if cached is None or cached[0] != key:
        holder, owner = {}, weakref.ref(model)

        def step(x):  # Python runs only while tracing: it wires this trace's tensors
            records = holder["records"]
            for calls in records.values():
                calls.clear()
            owner()(x, training=False)
            return {name: list(calls) for name, calls in records.items()}

        cached = (key, tf.function(step, reduce_retracing=True), holder)
        _STEPS[model] = cached
    return cached[1], cached[2]


def _per_replica(strategy, structure):
    """A structure of per-replica values as one structure per local replica."""
    flat = [strategy.experimental_local_results(v) for v in tf.nest.flatten(structure)]
    replicas = len(flat[0]) if flat else 0
    return [tf.nest.pack_sequence_as(structure, [v[i] for v in flat]) for i in range(replicas)]


def _batches(data, batch_size, strategy):
    """Input batches; under a strategy, distributed ones."""
    if strategy is not None:
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
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        return n if n >= 0 else None
    return len(data) if hasattr(data, "__len__") else None
