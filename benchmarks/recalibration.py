"""Passes and time of `keras_bn.recalibrate` against depth: residual conv-BN-ReLU stacks
of 2 to 48 BNs trained briefly on scikit-learn's digits, recalibrated from the statistics
training left and from freshly initialised ones (mean 0, variance 1), with the time of one
`model.predict` of the same rows for scale. Each inference pass settles exactly one more
BN of the longest chain, so the passes needed to reach the fixed point grow with depth;
the table shows how fast in practice."""

import time

import numpy as np

DEPTHS = (2, 8, 16, 48)
QUICK_DEPTHS = (2, 8)


def residual_stack(keras, depth, seed=0):
    """`depth` residual blocks `h + ReLU(BN(Conv3x3(h)))` on 8x8 digits, 16 channels."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same")(inputs)
    for _ in range(depth):
        h = L.Add()([h, L.ReLU()(L.BatchNormalization()(
            L.Conv2D(16, 3, padding="same", use_bias=False)(h)))])
    return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16).astype("float32").reshape(-1, 8, 8, 1), y


def depth_rows(quick=False, rows=1000):
    """One dict per depth and starting point: `depth`, `start`, `passes`, `seconds`,
    `predict_seconds` (one `predict` of the same rows, batch 32); both traced before they
    are timed."""
    import tf_keras

    import keras_bn
    from keras_bn.calibration import recalibration

    x, y = _digits()
    counted = []
    measure = recalibration.measure_inputs

    def counting(*args, **kwargs):
        counted.append(1)
        return measure(*args, **kwargs)

    results = []
    recalibration.measure_inputs = counting
    try:
        for depth in (QUICK_DEPTHS if quick else DEPTHS):
            model = residual_stack(tf_keras, depth)
            model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
            model.fit(x[:1400], y[:1400], epochs=1 if quick else 2, batch_size=32, verbose=0)
            trained = [v.numpy() for v in model.non_trainable_variables]
            model.predict(x[:rows], batch_size=32, verbose=0)  # traced before timing
            keras_bn.recalibrate(model, x[:rows], batch_size=32, verbose=0)
            start = time.perf_counter()
            model.predict(x[:rows], batch_size=32, verbose=0)
            predict_seconds = time.perf_counter() - start
            for label in ("trained", "fresh"):
                for variable, value in zip(model.non_trainable_variables, trained):
                    variable.assign(np.ones_like(value) if label == "fresh"
                                    and "variance" in variable.name else
                                    np.zeros_like(value) if label == "fresh" else value)
                counted.clear()
                start = time.perf_counter()
                keras_bn.recalibrate(model, x[:rows], batch_size=32, verbose=0)
                results.append({"depth": depth, "start": label, "passes": len(counted),
                                "seconds": time.perf_counter() - start,
                                "predict_seconds": predict_seconds})
    finally:
        recalibration.measure_inputs = measure
    return results


def markdown(results):
    lines = ["| BNs in a chain | statistics at the start | passes | recalibrate s | "
             "/ one predict |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['depth']} | {r['start']} | {r['passes']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / r['predict_seconds']:.1f}x |")
    return "\n".join(lines)
