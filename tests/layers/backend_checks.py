"""Keras 3 layers against Keras 3's own BatchNormalization, on the backend this process
runs (`KERAS_BACKEND` is read when `keras` is first imported, so each backend gets its
own process): `python tests/layers/backend_checks.py OUT_DIR`.

For 2-D, 4-D and 5-D inputs and 20 training steps on shifting data, it compares our
BatchNormalization with `keras.layers.BatchNormalization`, and our BatchRenormalization
(constant clipping) with Keras 3's `renorm=True`: outputs, gradients (inputs, gamma,
beta), moving mean, renorm statistics; our moving variance against the Bessel-corrected
recursion computed in float64 numpy (Keras 3 keeps the biased one, also checked against
its own recursion). Writes OUT_DIR/<backend>.json (max relative errors per quantity) and
OUT_DIR/<backend>.npz (our outputs, for the cross-backend comparison).
"""

import json
import os
import sys

import keras
import numpy as np

from keras_bn import keras3 as kbn

BACKEND = keras.backend.backend()
SHAPES = {"2d": (16, 5), "4d": (8, 6, 6, 5), "5d": (4, 3, 4, 4, 5)}
STEPS = 20
MOMENTUM, RENORM_MOMENTUM, EPSILON = 0.9, 0.9, 1e-3
RMAX, DMAX = 1.5, 0.5


def pair(kind):
    """(ours, Keras 3's) with the same configuration."""
    common = dict(momentum=MOMENTUM, epsilon=EPSILON)
    if kind == "bn":
        return kbn.BatchNormalization(**common), keras.layers.BatchNormalization(**common)
    ours = kbn.BatchRenormalization(rmax=RMAX, dmax=DMAX, warmup_steps=0, rmax_ramp_steps=0,
                                    dmax_ramp_steps=0, renorm_momentum=RENORM_MOMENTUM,
                                    **common)
    theirs = keras.layers.BatchNormalization(
        renorm=True, renorm_clipping={"rmax": RMAX, "rmin": 1 / RMAX, "dmax": DMAX},
        renorm_momentum=RENORM_MOMENTUM, **common)
    return ours, theirs


def train_step(layer, x, dy):
    """`[y, dx, dgamma, dbeta]` of one training call; the layer's statistics update."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * dy)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        return [np.asarray(v, np.float64) for v in [y] + grads]
    if BACKEND == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        parameters = [layer.gamma.value, layer.beta.value]
        for parameter in parameters:
            parameter.grad = None
        y = layer(x, training=True)
        torch.sum(y * torch.tensor(dy)).backward()
        return [v.detach().cpu().numpy().astype(np.float64)
                for v in [y, x.grad] + [p.grad for p in parameters]]
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x):
        y, updated = layer.stateless_call(trainable, fixed, x, training=True)
        return jnp.sum(y * dy), (y, updated)

    (_, (y, updated)), (dtrainable, dx) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(trainable, jnp.asarray(x))
    for variable, value in zip(layer.non_trainable_variables, updated):
        variable.assign(value)
    return [np.asarray(v, np.float64) for v in (y, dx, dtrainable[0], dtrainable[1])]


def numpy(value):
    """A tensor or variable of any backend as numpy (a torch tensor that requires
    gradients included)."""
    return keras.ops.convert_to_numpy(value)


def relative(a, b):
    a, b = numpy(a).astype(np.float64), numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def run(kind, name, shape, rs):
    ours, theirs = pair(kind)
    ours.build(shape), theirs.build(shape)
    gamma, beta = rs.uniform(0.5, 1.5, shape[-1]), rs.randn(shape[-1]) * 0.1
    for layer in (ours, theirs):
        layer.gamma.assign(gamma.astype("float32")), layer.beta.assign(beta.astype("float32"))
    errors, outputs, clipped = {}, [], 0
    n = int(np.prod(shape[:-1]))
    reference_variance = np.ones(shape[-1])
    keras_variance = np.ones(shape[-1])
    for step in range(STEPS):
        # A drifting mean and scale, so renorm's r and d move and hit their clips.
        x = (rs.randn(*shape) * (1 + 0.5 * np.sin(step)) + 0.3 * step).astype("float32")
        dy = rs.randn(*shape).astype("float32")
        if kind == "brn":
            clipped += _clipped(x, ours)
        mine, reference = train_step(ours, x, dy), train_step(theirs, x, dy)
        outputs.extend(mine)
        for label, a, b in zip(("output", "grad_x", "grad_gamma", "grad_beta"),
                               mine, reference):
            errors[label] = max(errors.get(label, 0.0), relative(a, b))
        variance = np.var(x.astype(np.float64).reshape(-1, shape[-1]), axis=0)
        reference_variance = (MOMENTUM * reference_variance
                              + (1 - MOMENTUM) * variance * n / (n - 1))
        keras_variance = MOMENTUM * keras_variance + (1 - MOMENTUM) * variance
        checks = {"moving_mean": (ours.moving_mean, theirs.moving_mean),
                  "moving_variance_vs_numpy": (ours.moving_variance, reference_variance)}
        if kind == "bn":
            checks["keras_moving_variance_vs_numpy"] = (theirs.moving_variance,
                                                        keras_variance)
        else:
            checks["renorm_mean"] = (ours.renorm_mean, theirs.renorm_mean)
            checks["renorm_stddev"] = (ours.renorm_stddev, theirs.renorm_stddev)
        for label, (a, b) in checks.items():
            errors[label] = max(errors.get(label, 0.0),
                                relative(np.asarray(a, np.float64), np.asarray(b, np.float64)))
        outputs.extend([np.asarray(ours.moving_mean), np.asarray(ours.moving_variance)])
    if kind == "brn":
        errors["steps_with_r_or_d_clipped"] = clipped
    return errors, outputs


def _clipped(x, layer):
    """1 if this batch's r or d hits the clip limits (numpy, from the layer's renorm
    statistics before the step), else 0: the renorm comparison must exercise clipping."""
    flat = x.astype(np.float64).reshape(-1, x.shape[-1])
    sigma = np.maximum(np.asarray(layer.renorm_stddev, np.float64), EPSILON ** 0.5)
    r = np.sqrt(flat.var(0) + EPSILON) / sigma
    d = (flat.mean(0) - np.asarray(layer.renorm_mean, np.float64)) / sigma
    return int(np.any((r > RMAX) | (r < 1 / RMAX) | (np.abs(d) > DMAX)))


def fit_and_reload(out_dir):
    """A compiled `fit` (jit on JAX) of a model with both layers, then a `.keras` round
    trip without custom_objects: the moving statistics moved, the reload predicts the
    same."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3), kbn.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Conv2D(4, 1),
        kbn.BatchRenormalization(warmup_steps=2, rmax_ramp_steps=3, dmax_ramp_steps=3),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rs = np.random.RandomState(0)
    x, y = (rs.randn(64, 6, 6, 3) + 2).astype("float32"), rs.randn(64, 2).astype("float32")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = os.path.join(out_dir, f"{BACKEND}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    return {"loss": [float(v) for v in history.history["loss"]],
            "moving_mean_moved": float(np.max(np.abs(np.asarray(model.layers[1].moving_mean)))),
            "renorm_step": int(np.asarray(model.layers[4].renorm_step)),
            "reload_classes": [type(layer).__name__ for layer in loaded.layers],
            "reload_error": float(np.max(np.abs(loaded.predict(x, verbose=0)
                                                - model.predict(x, verbose=0))))}


def fold_and_export(out_dir):
    """`keras_bn.fold` on this backend (functional model with Keras 3's and our BNs and an
    op node), and its ONNX and TFLite exports (on JAX converted by a TensorFlow process,
    the file verified here against this backend's model)."""
    import keras_bn
    from keras_bn import export

    L = keras.layers
    inputs = keras.Input((10, 10, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3)(inputs)))
    x = kbn.BatchRenormalization()(L.DepthwiseConv2D(3)(x))
    x = L.GlobalAveragePooling2D()(keras.ops.multiply(x, 0.5))
    model = keras.Model(inputs, L.Dense(2)(kbn.BatchNormalization()(x)))
    rs = np.random.RandomState(0)
    for w in model.weights:
        if w.path.endswith("moving_variance"):
            w.assign(rs.uniform(0.5, 2.0, w.shape))
        elif w.path.endswith("moving_mean"):
            w.assign(rs.randn(*w.shape))
    folded, plan = keras_bn.fold(model, return_plan=True)
    result = {"folded": len(plan.folded), "kept": len(plan.kept),
              "max_error": plan.max_error, "tolerance": plan.tolerance,
              "class": type(folded).__name__}
    exports = {}
    for fmt, function in (("onnx", export.to_onnx), ("tflite", export.to_tflite)):
        written = function(model, os.path.join(out_dir, f"{BACKEND}.{fmt}"))
        exports[fmt] = {"max_error": written.max_error, "tolerance": written.tolerance,
                        "folded": len(written.fold_plan.folded),
                        "size": os.path.getsize(written.path)}
    result["export"] = exports
    data = rs.randn(40, 10, 10, 3).astype("float32")
    int8 = export.to_tflite(model, os.path.join(out_dir, f"{BACKEND}_int8.tflite"),
                            quantize=export.QuantizationOptions(
                                "int8", calibration=data, equalization=True),
                            latency_batch=None)
    result["int8_techniques"] = [t.name for t in int8.post_training]
    result["int8_bias_corrected"] = int8.post_training[-1].changed
    qdq = export.to_onnx(model, os.path.join(out_dir, f"{BACKEND}_int8.onnx"),
                         quantize=export.QuantizationOptions("int8", calibration=data,
                                                             evaluation=data[:16]),
                         latency_batch=None)
    result["onnx_int8"] = {"format": qdq.format, "scored_rows": qdq.evaluation[0].rows,
                           "techniques": [t.name for t in qdq.post_training],
                           "quantize_nodes": qdq.op_counts.get("QuantizeLinear", 0)}
    try:
        keras_bn.recalibrate(model, data, batch_size=16, passes=1)
        result["recalibrate"] = "recalibrated"
    except ValueError as error:
        result["recalibrate"] = str(error)
    return result


def callbacks_in_fit(out_dir):
    """keras_bn.keras3's PreciseBN and BatchNormMonitor in a `fit` with validation on
    this backend: when PreciseBN recalibrated, the last validation loss equals an
    evaluation right after `fit` (it already saw the precise statistics)."""
    keras.utils.set_random_seed(1)
    L = keras.layers
    model = keras.Sequential([keras.Input((8,)), L.Dense(8), kbn.BatchNormalization(),
                              L.ReLU(), L.Dense(8), kbn.BatchRenormalization(), L.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rs = np.random.RandomState(1)
    x, y = (rs.randn(96, 8) * 2 + 1).astype("float32"), rs.randn(96, 1).astype("float32")
    precise = kbn.PreciseBN(x, batch_size=32)
    monitor = kbn.BatchNormMonitor(x[:32], log_path=os.path.join(out_dir, f"{BACKEND}_bn"))
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y),
                        callbacks=[precise, monitor])
    return {"is_keras_callback": isinstance(precise, keras.callbacks.Callback),
            "recalibrated_epochs": [epoch for epoch, _ in precise.history],
            "val_loss_gap": abs(history.history["val_loss"][-1]
                                - float(model.evaluate(x, y, verbose=0))),
            "monitor_rows": len(monitor.rows)}


def freeze_and_summary():
    """`freeze` (gamma and beta still training) and `summary` on this backend: a fit
    leaves the moving statistics as they were and moves gamma; `unfreeze` clears it."""
    import keras_bn

    keras.utils.set_random_seed(2)
    L = keras.layers
    model = keras.Sequential([keras.Input((8,)), L.Dense(8), kbn.BatchNormalization(name="a"),
                              L.ReLU(), L.Dense(4), kbn.BatchRenormalization(name="b"),
                              L.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rs = np.random.RandomState(2)
    x, y = (rs.randn(64, 8) * 2 + 1).astype("float32"), rs.randn(64, 1).astype("float32")
    frozen = keras_bn.freeze(model, train_gamma_beta=True)
    bn = model.get_layer("a")
    mean, gamma = np.array(bn.moving_mean), numpy(bn.gamma)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return {"frozen": frozen,
            "mean_moved": float(np.max(np.abs(np.array(bn.moving_mean) - mean))),
            "gamma_moved": float(np.max(np.abs(numpy(bn.gamma) - gamma))),
            "unfrozen": keras_bn.unfreeze(model), "frozen_after": bool(bn.frozen),
            "summary": [row["foldable"] for row in keras_bn.summary(
                model, print_fn=lambda *_: None)]}


def recalibrate_exactly():
    """`keras_bn.recalibrate` on this backend (its compiled step: `tf.function` or
    `jax.jit`), on class-sorted data: max error of each BN's statistics against numpy's,
    relative to their scale, and whether TensorFlow got imported."""
    import keras_bn

    L = keras.layers
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), kbn.BatchNormalization(),
                              L.BatchNormalization(renorm=True)])
    x = (np.random.RandomState(0).randn(64, 4) * 3 + 1).astype("float32")
    keras_bn.recalibrate(model, x[np.argsort(x[:, 0])], batch_size=16, verbose=0)
    h = numpy(model.layers[0](x)).astype(np.float64)
    first, second = model.layers[1], model.layers[2]
    y = (h - h.mean(0)) / np.sqrt(h.var(0, ddof=1) + first.epsilon)
    y = y * numpy(first.gamma) + numpy(first.beta)
    errors = {"mean": relative(first.moving_mean, h.mean(0)),
              "variance": relative(first.moving_variance, h.var(0, ddof=1)),
              "second_variance": relative(second.moving_variance, y.var(0, ddof=1))}
    return {"errors": errors, "tensorflow_imported": "tensorflow" in sys.modules}


def main(out_dir):
    results, arrays = {}, {}
    for kind in ("bn", "brn"):
        for name, shape in SHAPES.items():
            rs = np.random.RandomState(0)
            errors, outputs = run(kind, name, shape, rs)
            results[f"{kind}_{name}"] = errors
            for i, value in enumerate(outputs):
                arrays[f"{kind}_{name}_{i}"] = value
    results["recalibrate"] = recalibrate_exactly()  # before fit: Keras's fit imports TF
    results["fit"] = fit_and_reload(out_dir)
    results["callbacks"] = callbacks_in_fit(out_dir)
    results["freeze"] = freeze_and_summary()
    results["fold"] = fold_and_export(out_dir)
    try:  # a clear error, not a silent single-device statistic
        kbn.BatchNormalization(synchronized=True)
        results["synchronized"] = "accepted"
    except ValueError as error:
        results["synchronized"] = str(error)
    with open(os.path.join(out_dir, f"{BACKEND}.json"), "w") as f:
        json.dump(results, f, indent=1)
    np.savez(os.path.join(out_dir, f"{BACKEND}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
