"""Seeded data and the trained models of the int8 study (`benchmarks.int8_study`).

Nothing is downloaded: digits ship with scikit-learn, the images and signals are drawn
here from a seed. `trained(name, seed)` returns a tf-keras model with keras_bn's
BatchNormalization trained on its data, and `(calibration rows, held-out rows,
held-out targets)`.
"""

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross", "ring", "horizontal bars",
          "vertical bars")
SOUNDS = ("tone", "chord", "chirp up", "chirp down", "modulated tone", "noise burst")
#: The sources of `events`, each on in some frames of a signal.
EVENTS = ("tone", "chirp", "noise burst")
#: Frames of `events` (64 samples each).
FRAMES = 16
_RATE, _SAMPLES = 4000, 1024


def shapes(n, seed, size=32, noise=0.15):
    """`(images [n, size, size, 1] in [0, 1], labels)`: one of `SHAPES` per image, at a
    random place, size and faint brightness, on a noisy background (hard enough
    that a trained net's margins are small and int8 rounding can flip its answers)."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 1), np.float32)
    labels = rs.randint(len(SHAPES), size=n)
    for i, label in enumerate(labels):
        cy, cx = rs.uniform(0.3, 0.7, 2) * size
        r = rs.uniform(0.15, 0.3) * size
        dy, dx = yy - cy, xx - cx
        shape = {
            0: dy ** 2 + dx ** 2 < r ** 2,
            1: (abs(dy) < r * 0.8) & (abs(dx) < r * 0.8),
            2: (dy < r * 0.7) & (dy > -r) & (abs(dx) < (dy + r) * 0.6),
            3: ((abs(dy) < r * 0.25) | (abs(dx) < r * 0.25)) & (abs(dy) < r) & (abs(dx) < r),
            4: abs(np.sqrt(dy ** 2 + dx ** 2) - r * 0.8) < r * 0.2,
            5: (np.sin(yy * rs.uniform(0.6, 1.0)) > 0.3) & (abs(dx) < r) & (abs(dy) < r),
            6: (np.sin(xx * rs.uniform(0.6, 1.0)) > 0.3) & (abs(dx) < r) & (abs(dy) < r),
        }[label]
        background = rs.uniform(0, 0.3)
        image = background + shape * rs.uniform(0.1, 0.35) + rs.randn(size, size) * noise
        images[i, ..., 0] = np.clip(image, 0, 1)
    return images, labels


def sounds(n, seed):
    """`(signals [n, 1024, 1], labels, frequencies)`: a quarter second at 4 kHz of one
    of `SOUNDS` in background noise; `frequencies` is each signal's base frequency in
    kHz (the regression target)."""
    rs = np.random.RandomState(seed)
    t = np.arange(_SAMPLES) / _RATE
    signals = np.empty((n, _SAMPLES, 1), np.float32)
    labels = rs.randint(len(SOUNDS), size=n)
    frequencies = rs.uniform(0.1, 1.2, n).astype(np.float32)
    for i, (label, f) in enumerate(zip(labels, frequencies * 1000)):
        phase = rs.uniform(0, 2 * np.pi)
        wave = {
            0: lambda: np.sin(2 * np.pi * f * t + phase),
            1: lambda: (np.sin(2 * np.pi * f * t + phase)
                        + np.sin(2 * np.pi * f * 1.5 * t)) / 2,
            2: lambda: np.sin(2 * np.pi * (f + 600 * t / t[-1]) * t + phase),
            3: lambda: np.sin(2 * np.pi * (f + 600 * (1 - t / t[-1])) * t + phase),
            4: lambda: np.sin(2 * np.pi * f * t + phase) * (0.5 + 0.5 * np.sin(
                2 * np.pi * rs.uniform(8, 20) * t)),
            5: lambda: rs.randn(_SAMPLES) * ((t > rs.uniform(0, 0.1))
                                             & (t < rs.uniform(0.15, 0.25))),
        }[label]()
        signals[i, :, 0] = wave * rs.uniform(0.2, 1.0) + rs.randn(_SAMPLES) * 0.5
    return signals, labels, frequencies


def events(n, seed):
    """`(signals [n, 1024, 1], targets [n, FRAMES, 3])`: a quarter second at 4 kHz in
    which each of `EVENTS` sounds over its own random run of frames (or not at all),
    overlapping, faint, in background noise; `targets` says per frame which are on
    (several may be: sigmoid outputs per frame, as a sound-event detector has)."""
    rs = np.random.RandomState(seed)
    t = np.arange(_SAMPLES) / _RATE
    frame = _SAMPLES // FRAMES
    signals = rs.randn(n, _SAMPLES, 1).astype(np.float32) * 0.5
    targets = np.zeros((n, FRAMES, len(EVENTS)), np.float32)
    for i in range(n):
        for k in range(len(EVENTS)):
            if rs.rand() < 0.35:
                continue
            start = rs.randint(0, FRAMES - 2)
            stop = rs.randint(start + 2, FRAMES + 1)
            on = np.zeros(_SAMPLES)
            on[start * frame:stop * frame] = 1
            f = rs.uniform(200, 1200)
            wave = {0: lambda: np.sin(2 * np.pi * f * t),
                    1: lambda: np.sin(2 * np.pi * (f + 800 * t / t[-1]) * t),
                    2: lambda: rs.randn(_SAMPLES)}[k]()
            signals[i, :, 0] += (wave * on * rs.uniform(0.3, 0.8)).astype(np.float32)
            targets[i, start:stop, k] = 1
    return signals, targets


def _audio_frames(keras, bn):
    """A sound-event detector mixing 1-D and 2-D convolutions: waveform convolutions,
    the feature map read as an image for two Conv2D, back to frames, a sigmoid per
    event and frame."""
    L = keras.layers
    inputs = keras.Input((_SAMPLES, 1))
    x = L.ReLU()(bn()(L.Conv1D(16, 9, strides=2, padding="same", use_bias=False)(inputs)))
    x = L.ReLU()(bn()(L.Conv1D(32, 5, strides=2, padding="same", use_bias=False)(x)))
    x = L.Reshape((_SAMPLES // 4, 32, 1))(x)
    x = L.ReLU()(bn()(L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)))
    x = L.ReLU()(bn()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)))
    x = L.Reshape((_SAMPLES // 16, 8 * 16))(x)
    x = L.ReLU()(bn()(L.Conv1D(32, 3, strides=4, padding="same", use_bias=False)(x)))
    return keras.Model(inputs, L.Dense(len(EVENTS), activation="sigmoid")(x))


def _digits_mlp(keras, bn):
    L = keras.layers
    return keras.Sequential([
        keras.Input((64,)), L.Dense(64, use_bias=False), bn(), L.ReLU(),
        L.Dense(32, use_bias=False), bn(), L.ReLU(), L.Dense(10)])


def _mini_xception(keras, bn, classes=7, size=32):
    """Arriaga et al.'s mini-Xception (2017), at `size` x `size`."""
    L = keras.layers
    inputs = keras.Input((size, size, 1))
    x = inputs
    for _ in range(2):
        x = L.ReLU()(bn()(L.Conv2D(8, 3, use_bias=False)(x)))
    for filters in (16, 32, 64):
        residual = bn()(L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x))
        x = L.ReLU()(bn()(L.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)))
        x = bn()(L.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x))
        x = L.Add()([L.MaxPooling2D(3, strides=2, padding="same")(x), residual])
    x = L.GlobalAveragePooling2D()(L.Conv2D(classes, 3, padding="same")(x))
    return keras.Model(inputs, L.Softmax()(x))


def _mobilenet(keras, bn, classes=7):
    """MobileNet-style: a conv, then depthwise-separable blocks (ReLU, as MobileNet v1
    with ReLU6 replaced: ReLU6 clips, which cross-layer equalization cannot scale)."""
    L = keras.layers
    inputs = keras.Input((32, 32, 1))
    x = L.ReLU()(bn()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)))
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
        x = L.ReLU()(bn()(L.DepthwiseConv2D(3, strides=stride, padding="same",
                                            use_bias=False)(x)))
        x = L.ReLU()(bn()(L.Conv2D(filters, 1, use_bias=False)(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(classes)(x))


def _audio_cnn(keras, bn, outputs=len(SOUNDS)):
    L = keras.layers
    inputs = keras.Input((_SAMPLES, 1))
    x = inputs
    for filters, kernel in ((16, 9), (32, 5), (32, 5), (64, 3)):
        x = L.ReLU()(bn()(L.Conv1D(filters, kernel, padding="same", use_bias=False)(x)))
        x = L.MaxPooling1D(4)(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.ReLU()(bn()(L.Dense(32, use_bias=False)(x)))
    return keras.Model(inputs, L.Dense(outputs)(x))


#: Added to a model's seed for the rows of `fresh`: a source no model trained on.
FRESH_SEED = 10_000
#: The `shapes` arguments of the study models trained on shapes.
SHAPE_SOURCES = {"mini_xception": {}, "mobilenet": {},
                 "mini_xception_noisy": {"noise": 0.3},  # twice the noise: more near ties
                 "mini_xception64": {"size": 64}}  # the case: 64x64 grayscale


def fresh(name, seed, n):
    """`(rows, targets)`: `n` rows more from the source of study model `name` (seed
    `seed`), drawn from seed `FRESH_SEED + seed`, which no model trained, calibrated or
    was scored on: for figures that resolve what the held-out rows alone cannot (600
    rows: a row is 0.17 points)."""
    if name in SHAPE_SOURCES:
        return shapes(n, FRESH_SEED + seed, **SHAPE_SOURCES[name])
    if name == "audio_cnn":
        x, labels, _ = sounds(n, FRESH_SEED + seed)
        return x, labels
    raise ValueError(f"study model {name!r} has no fresh rows (digits are finite; "
                     "the regressor and the event detector are not classifiers)")


def trained(name, seed, training_rows=False, unseen_calibration=False):
    """`(model, (calibration rows, held-out rows, held-out targets))` of a study model;
    with `training_rows`, also `(training rows, their targets)` as a third item.

    The calibration rows are the first 300 training rows; with `unseen_calibration`,
    300 rows more of the same source that the model neither trained on nor is scored
    on (the rows a user has: a trained model is more confident on its training rows,
    so distilling on them teaches little about the answers near a tie: in a trial on
    mini_xception_noisy, 12 epochs of distillation on training rows doubled the error
    on the scored rows, and on unseen rows lowered it).
    The data then differs from the default's (drawn with the extra rows)."""
    import tf_keras

    import keras_bn

    bn = lambda: keras_bn.BatchNormalization(momentum=0.9)  # noqa: E731
    tf_keras.utils.set_random_seed(seed)
    extra = 300 if unseen_calibration else 0
    if name == "digits_mlp":
        if extra:
            raise ValueError("digits_mlp has no rows to spare for unseen calibration")
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16).astype("float32")
        order = np.random.RandomState(seed).permutation(len(x))
        x, y = x[order], y[order]
        model, train, test, epochs = _digits_mlp(tf_keras, bn), slice(0, 1400), slice(1400, None), 20
    elif name in SHAPE_SOURCES:
        x, y = shapes(3000 + extra, seed, **SHAPE_SOURCES[name])
        model = (_mobilenet(tf_keras, bn) if name == "mobilenet" else
                 _mini_xception(tf_keras, bn, size=SHAPE_SOURCES[name].get("size", 32)))
        train, test, epochs = slice(0, 2400), slice(2400, None), 8
    elif name == "audio_frames":
        x, y = events(3000 + extra, seed)
        model = _audio_frames(tf_keras, bn)
        train, test, epochs = slice(0, 2400), slice(2400, None), 10
    elif name in ("audio_cnn", "audio_regressor"):
        x, labels, frequencies = sounds(3000 + extra, seed)
        regression = name == "audio_regressor"
        if regression:  # tones and chords only: their base frequency is defined
            keep = labels <= 1
            x, y = x[keep], frequencies[keep]
        else:
            y = labels
        model = _audio_cnn(tf_keras, bn, 1 if regression else len(SOUNDS))
        n = len(x) - extra  # the rows left once the unseen ones are set aside (below)
        train, test, epochs = slice(0, int(n * 0.8)), slice(int(n * 0.8), None), 12
    else:
        raise ValueError(f"unknown study model {name!r}")
    unseen = None
    if extra:  # the last rows drawn: neither trained on nor scored
        unseen, x, y = x[-extra:], x[:-extra], y[:-extra]
    regression = y.dtype.kind == "f"
    loss = (tf_keras.losses.BinaryCrossentropy() if name == "audio_frames" else
            tf_keras.losses.MeanSquaredError() if regression else
            tf_keras.losses.SparseCategoricalCrossentropy(
                from_logits=not name.startswith("mini_xception")))
    model.compile(tf_keras.optimizers.Adam(3e-3), loss)
    model.fit(x[train], y[train], batch_size=32, epochs=epochs, verbose=0)
    calibration = x[train][:300] if unseen is None else unseen
    if training_rows:
        return model, (calibration, x[test], y[test]), (x[train], y[train])
    return model, (calibration, x[test], y[test])
