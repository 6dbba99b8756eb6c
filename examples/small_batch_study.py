"""The small-batch study: does Batch Renormalization do what the paper says, and how do
the alternatives users weigh against it compare?

Ioffe (2017) reports that BN degrades with small or non-i.i.d. mini-batches (Inception-v3,
micro-batches of 4: 74.2 % top-1 against 78.3 % at 32) and that Batch Renormalization
recovers most of it (76.5 %). Wu & He (2018) propose Group Normalization for the same
problem (GN at batch 2 as good as at 32). This script checks both on real data that ships
with scikit-learn (8x8 digits: 1,347 training and 450 held-out images), with an MLP
(64-128-64-10) whose hidden layers use no normalization, BN, Ghost BN (BN over virtual
batches of 4, Hoffer et al. 2017; at batches of 4 or fewer it is BN and is not run), BRN
(with the paper's schedule scaled to the run: plain BN for the first 5 % of steps, rmax
1->3 over the next 40 %, dmax 0->5 over 25 %), GroupNormalization (8 groups) or
LayerNormalization (Keras built-ins), at batch sizes 2, 4, 8 and 32, and in a non-i.i.d.
setting (batches of 32 drawn from 2 classes each). Every setting runs with the same seeds
and the same budget (epochs, optimizer, learning rate).

Measured per run: held-out accuracy in inference mode; the same held-out images in
training mode (batch statistics of held-out batches of the training batch size) and the
gap between the two (exactly 0 for GN and LN, whose statistics are each sample's own);
steps (and epochs) until the held-out accuracy first reaches 90 %.
Writes `small_batch_study.md`, `.json` and two PNG plots into `--out`.
Time: ~6 min on 2 cores (`--quick`: ~1 min, one seed, two batch sizes).

    python examples/small_batch_study.py [--quick] [--seeds N] [--epochs N] [--out DIR]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402  (import TensorFlow before tf_keras)
import tf_keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn.cli.demo import load_digits  # noqa: E402

METHODS = ("none", "BN", "Ghost BN", "BRN", "GN", "LN")
#: Ghost BN's virtual batch (Hoffer et al. 2017); at this batch size or below it is BN.
GHOST_BATCH = 4
#: GroupNormalization's groups (Wu & He's default is 32 groups of conv channels; the
#: hidden layers here have 128 and 64 features: 16 and 8 per group).
GN_GROUPS = 8
COLORS = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple",
                            "tab:brown")))
TARGET = 0.90


def normalization(method, total_steps):
    """The layer `method` puts after each hidden Dense (None for no normalization)."""
    if method == "BN":
        return keras_bn.BatchNormalization()
    if method == "Ghost BN":
        return keras_bn.BatchNormalization(virtual_batch_size=GHOST_BATCH)
    if method == "BRN":
        return keras_bn.BatchRenormalization(
            warmup_steps=int(0.05 * total_steps), rmax_ramp_steps=int(0.4 * total_steps),
            dmax_ramp_steps=int(0.25 * total_steps))
    if method == "GN":
        return tf_keras.layers.GroupNormalization(groups=GN_GROUPS)
    if method == "LN":
        return tf_keras.layers.LayerNormalization()
    return None


def build(method, total_steps, seed):
    tf_keras.utils.set_random_seed(seed)
    L = tf_keras.layers
    layers = [tf_keras.Input((64,))]
    for units in (128, 64):
        norm = normalization(method, total_steps)
        layers.append(L.Dense(units, use_bias=norm is None))
        if norm is not None:
            layers.append(norm)
        layers.append(L.ReLU())
    layers.append(L.Dense(10))
    model = tf_keras.Sequential(layers)
    model.compile(tf_keras.optimizers.Adam(1e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def non_iid_order(y, batch_size, classes_per_batch, rs):
    """Indices arranged so that each consecutive batch holds `classes_per_batch` classes."""
    pools = {c: list(rs.permutation(np.where(y == c)[0])) for c in np.unique(y)}
    per_class = batch_size // classes_per_batch
    order = []
    while len(order) + batch_size <= len(y):
        for c in rs.choice(list(pools), classes_per_batch, replace=False):
            if len(pools[c]) < per_class:
                pools[c] += list(rs.permutation(np.where(y == c)[0]))
            order += [pools[c].pop() for _ in range(per_class)]
    return np.array(order)


def accuracy(logits, y):
    return float(np.mean(np.argmax(logits, -1) == y))


def training_mode_gap(model, x, y, batch_size, order):
    """Accuracy with batch statistics of held-out batches minus the inference-mode accuracy
    on the same rows (the whole batches of `order`); the moving statistics (and every other
    weight) are restored afterwards."""
    saved = [w.numpy() for w in model.non_trainable_weights]
    rows = order[:len(order) - len(order) % batch_size]
    logits = np.concatenate([model(x[rows[i:i + batch_size]], training=True).numpy()
                             for i in range(0, len(rows), batch_size)])
    tf_keras.backend.batch_set_value(list(zip(model.non_trainable_weights, saved)))
    return (accuracy(logits, y[rows])
            - accuracy(model(x[rows], training=False).numpy(), y[rows]))


class HeldOutCurve(tf_keras.callbacks.Callback):
    """Held-out accuracy in inference mode every `every` training steps."""

    def __init__(self, x, y, every):
        super().__init__()
        self.x, self.y, self.every, self.step, self.curve = x, y, every, 0, []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            logits = self.model(self.x, training=False).numpy()
            self.curve.append((self.step, accuracy(logits, self.y)))


def run(method, batch_size, iid, seed, epochs, data):
    x_train, y_train, x_test, y_test = data
    rs = np.random.RandomState(seed)
    steps_per_epoch = len(x_train) // batch_size
    total = steps_per_epoch * epochs
    model = build(method, total, seed)
    curve = HeldOutCurve(x_test, y_test, every=max(1, total // 40))
    for _ in range(epochs):  # one fit call per epoch: a new batch order each time
        order = (rs.permutation(len(x_train))[:steps_per_epoch * batch_size] if iid
                 else non_iid_order(y_train, batch_size, 2, rs))
        model.fit(x_train[order], y_train[order], batch_size=batch_size, epochs=1,
                  shuffle=False, verbose=0, callbacks=[curve])
    test_order = (np.random.RandomState(seed + 1).permutation(len(x_test)) if iid
                  else non_iid_order(y_test, batch_size, 2, np.random.RandomState(seed + 1)))
    inference = accuracy(model(x_test, training=False).numpy(), y_test)
    gap = training_mode_gap(model, x_test, y_test, batch_size, test_order)
    reached = next((step for step, acc in curve.curve if acc >= TARGET), None)
    return {"method": method, "batch_size": batch_size, "iid": iid, "seed": seed,
            "inference_accuracy": inference, "gap": gap, "steps_to_target": reached,
            "epochs_to_target": None if reached is None else reached / steps_per_epoch,
            "curve": curve.curve, "steps_per_epoch": steps_per_epoch}


def aggregate(runs):
    groups = {}
    for r in runs:
        key = ("i.i.d." if r["iid"] else "2 classes/batch", r["batch_size"], r["method"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (setting, batch, method), rs in groups.items():
        acc = np.array([r["inference_accuracy"] for r in rs])
        gap = np.array([r["gap"] for r in rs])
        steps = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        epochs = [r["epochs_to_target"] for r in rs if r["epochs_to_target"] is not None]
        rows.append({"setting": setting, "batch_size": batch, "method": method,
                     "runs": len(rs), "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std()), "gap_mean": float(gap.mean()),
                     "gap_std": float(gap.std()), "reached": len(steps),
                     "steps_to_target": float(np.mean(steps)) if steps else None,
                     "epochs_to_target": float(np.mean(epochs)) if epochs else None})
    return rows


def markdown(rows, seeds, epochs):
    lines = [f"Digits (scikit-learn), MLP 64-128-64-10, Adam 1e-3, {epochs} epochs, "
             f"{seeds} seed(s) per setting; mean +- std over seeds.", "",
             "| setting | batch | method | held-out accuracy (inference) | training-mode "
             "minus inference accuracy | steps to 90 % | epochs to 90 % |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = ("never" if r["steps_to_target"] is None else
                 f"{r['steps_to_target']:.0f} ({r['reached']}/{r['runs']} runs)")
        epochs_to = "-" if r["epochs_to_target"] is None else f"{r['epochs_to_target']:.2f}"
        lines.append(f"| {r['setting']} | {r['batch_size']} | {r['method']} | "
                     f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} % | "
                     f"{100 * r['gap_mean']:+.2f} +- {100 * r['gap_std']:.2f} | {steps} | "
                     f"{epochs_to} |")
    return "\n".join(lines) + "\n"


def plot(rows, runs, batch_sizes, path_accuracy, path_curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, marker in zip(METHODS, "osvD^<"):
        sel = [r for r in rows if r["method"] == method and r["setting"] == "i.i.d."]
        sel.sort(key=lambda r: r["batch_size"])
        ax.errorbar([r["batch_size"] for r in sel], [100 * r["accuracy_mean"] for r in sel],
                    yerr=[100 * r["accuracy_std"] for r in sel], marker=marker, capsize=3,
                    label=method, color=COLORS[method])
        nid = [r for r in rows if r["method"] == method and r["setting"] != "i.i.d."]
        if nid:
            ax.errorbar([nid[0]["batch_size"] * 1.08], [100 * nid[0]["accuracy_mean"]],
                        yerr=[100 * nid[0]["accuracy_std"]], marker=marker, capsize=3,
                        linestyle="none", color=COLORS[method], mfc="white")
    ax.set(xscale="log", xticks=list(batch_sizes), xlabel="batch size",
           ylabel="held-out accuracy, inference mode (%)",
           title="digits MLP: accuracy vs batch size\n(hollow: non-i.i.d., 2 classes/batch)")
    ax.set_xticklabels([str(b) for b in batch_sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_accuracy, dpi=110)
    plt.close(fig)

    shown = [b for b in (min(batch_sizes), max(batch_sizes))]
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, batch in zip(axes[0], shown):
        for method in METHODS:
            sel = [r for r in runs if r["method"] == method and r["batch_size"] == batch
                   and r["iid"]]
            for i, r in enumerate(sel):
                steps, acc = zip(*r["curve"]) if r["curve"] else ((), ())
                epochs = [s / r["steps_per_epoch"] for s in steps]
                ax.plot(epochs, [100 * a for a in acc], alpha=0.8,
                        color=COLORS[method],
                        label=method if i == 0 else None)
        ax.axhline(100 * TARGET, color="gray", linestyle=":")
        ax.set(title=f"batch size {batch}", xlabel="epoch", ylabel="held-out accuracy (%)",
               ylim=(50, 100))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path_curves, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    batch_sizes = (4, 32) if args.quick else (2, 4, 8, 32)
    tf.get_logger().setLevel("ERROR")
    x_train, y_train, x_test, y_test = load_digits()
    data = (x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test)
    settings = [(b, True) for b in batch_sizes] + [(32, False)]
    runs = []
    progress = tf_keras.utils.Progbar(len(settings) * len(METHODS) * seeds, unit_name="run")
    for batch, iid in settings:
        for method in METHODS:
            if method == "Ghost BN" and batch <= GHOST_BATCH:
                continue  # one virtual batch: the same as BN
            for seed in range(seeds):
                runs.append(run(method, batch, iid, seed, epochs, data))
                progress.add(1)
    rows = aggregate(runs)
    os.makedirs(args.out, exist_ok=True)
    name = "small_batch_study" + ("_quick" if args.quick else "")
    table = markdown(rows, seeds, epochs)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"rows": rows, "runs": runs}, f, indent=1)
    plot(rows, runs, batch_sizes, os.path.join(args.out, name + "_accuracy.png"),
         os.path.join(args.out, name + "_curves.png"))
    print("\n" + table)
    print(f"written to {os.path.abspath(args.out)}: {name}.md, .json, _accuracy.png, "
          "_curves.png")
    return rows


if __name__ == "__main__":
    main()
