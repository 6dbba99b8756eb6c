"""Keras callbacks for BN during training, written once for both flavours: precise
statistics before every evaluation, and a monitor of what each BN layer sees.

* `PreciseBNCore`: recalibrate on a data set every N epochs, before the epoch's
  validation, so the evaluated (and saved) model uses true statistics (as detectron2's
  PreciseBN).
* `BatchNormMonitorCore`: per BN layer and epoch, how far a probe batch's statistics are
  from the moving ones, how many channels have |gamma| near 0, skipped updates, and for
  BatchRenormalization how often r and d hit their clip limits; written to a CSV and a
  JSON-lines file always, and to TensorBoard when it is installed.

`callback_classes(plumbing)` puts them on a flavour's `Callback` base class: tf-keras's
in `keras_bn.callbacks`, Keras 3's (any backend) in `keras_bn.keras3`.
"""

import csv
import importlib.util
import json
import os
import warnings

import numpy as np

from keras_bn import flavour
from keras_bn.calibration.measure import measure_inputs
from keras_bn.calibration.recalibration import recalibrate
from keras_bn.errors import InputError
from keras_bn.flavour import CallbackCore, Flavour, Inputs, Model
from keras_bn.layers.find import distinct_batch_norm_layers, is_ours


def _tensorflow():
    import tensorflow as tf

    return tf


def callback_classes(plumbing: Flavour, module: str) -> tuple[type, type]:
    """`(PreciseBN, BatchNormMonitor)` on the flavour's `Callback` base class, named as
    public classes of `module`."""
    def make(core, name):
        return type(name, (core, plumbing.Callback),
                    {"__module__": module, "__doc__": core.__doc__, "_flavour": plumbing})

    return make(PreciseBNCore, "PreciseBN"), make(BatchNormMonitorCore, "BatchNormMonitor")


def _check_flavour(callback, model):
    """A callback of one flavour on a model of the other is a clear error (Keras would
    call it with the wrong objects, or not at all)."""
    theirs = flavour.of(model)
    if theirs is not callback._flavour:
        public = "keras_bn.keras3" if flavour.is_keras3(model) else "keras_bn.callbacks"
        raise InputError(
            f"{type(callback).__name__} is a {callback._flavour.TITLE} callback; model "
            f"'{model.name}' is a {theirs.TITLE} model. Use {public}."
            f"{type(callback).__name__} for it.")


class PreciseBNCore(CallbackCore):
    """Recalibrates every BN layer on `data` every `every_n_epochs` epochs.

    The moving averages lag behind the weights; precise statistics (the exact mean and
    variance of each layer's inputs over `data`, see `keras_bn.recalibrate`) make the
    validation metrics, checkpoints and early stopping of that epoch judge the model as
    it will be used. Recalibration runs when the epoch's validation begins (so
    validation sees it) or, without validation data, at the epoch's end.

    Args:
      data: What to recalibrate on: a numpy array, a `tf.data.Dataset` or an iterable of
        batches (typically a few thousand training samples, without augmentation).
      every_n_epochs: Recalibrate after every this many epochs (and after the last).
      batch_size, steps, passes: As in `keras_bn.recalibrate`.
      verbose: 1 prints a line per recalibration.

    Attributes:
      history: `(epoch, recalibrate's summary)` per recalibration.
    """

    def __init__(self, data: Inputs, every_n_epochs: int = 1, batch_size: int = 32,
                 steps: int | None = None, passes: int | None = None,
                 verbose: int = 0) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise InputError(f"PreciseBN got every_n_epochs={every_n_epochs}; it must be >= 1.")
        self.data, self.every_n_epochs = data, every_n_epochs
        self.batch_size, self.steps, self.passes = batch_size, steps, passes
        self.verbose = verbose
        #: `(epoch, recalibrate's summary)` of each recalibration.
        self.history: list[tuple[int, list]] = []
        self._epoch: int | None = None
        self._done: set[int] = set()

    def set_model(self, model: Model) -> None:
        _check_flavour(self, model)
        super().set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._epochs = self.params.get("epochs") if self.params else None
        self._done = set()  # epochs count from 0 again in each `fit`

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._epoch is not None:  # validation inside `fit`, not a separate evaluate()
            self._maybe_recalibrate(self._epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._maybe_recalibrate(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._epoch = None

    def _maybe_recalibrate(self, epoch):
        last = self._epochs is not None and epoch + 1 == self._epochs
        if epoch in self._done or not ((epoch + 1) % self.every_n_epochs == 0 or last):
            return
        self._done.add(epoch)
        summary = recalibrate(self.model, self.data, verbose=0, batch_size=self.batch_size,
                              steps=self.steps, passes=self.passes)
        self.history.append((epoch, summary))
        if self.verbose:
            shift = max(row["mean_shift"] for row in summary)
            print(f"PreciseBN: epoch {epoch + 1}: {len(summary)} BN layers recalibrated; "
                  f"largest mean shift {shift:.3f} std")


class BatchNormMonitorCore(CallbackCore):
    """Logs, per BN layer, how its statistics behave during training.

    At the end of every `every_n_epochs`-th epoch the model runs on `probe` (a few
    batches of training inputs) in inference mode while each BN layer's inputs are
    measured; per layer it logs:

    * `mean_drift`: mean over channels of |probe mean - moving mean| / moving std;
    * `variance_ratio`: mean over channels of probe variance / moving variance (1 when the
      moving statistics match the data);
    * `gamma_near_zero`: share of channels with |gamma| < `gamma_threshold` (dead
      channels, or candidates for pruning);
    * `skipped_updates`: keras_bn layers' count of skipped non-finite or empty batches;
    * for keras_bn's BatchRenormalization and tf-keras's `renorm=True`: `r_clipped` and
      `d_clipped`, the share of channels whose r or d would be clipped on the probe at the
      current limits (how much the correction is limited by the schedule).

    Rows go to `<log_path>.csv` and `<log_path>.jsonl` always (written as they come), and
    to TensorBoard scalars `bn/<layer>/<metric>` in `log_dir` when it is given and
    TensorBoard is installed (`pip install tensorboard`, or the `tensorboard` extra).

    Args:
      probe: Inputs to measure with: a numpy array or a list of batches.
      log_path: Path of the logs without extension (`.csv` and `.jsonl` are added).
      log_dir: TensorBoard log folder, or None.
      every_n_epochs: Measure after every this many epochs.
      gamma_threshold: |gamma| below this counts as near zero.
      batch_size: Batch size for a numpy `probe`.

    Attributes:
      rows: Every logged row (dicts).
    """

    COLUMNS = ["epoch", "layer", "mean_drift", "variance_ratio", "gamma_near_zero",
               "skipped_updates", "r_clipped", "d_clipped"]

    def __init__(self, probe: Inputs, log_path: str | os.PathLike = "bn_monitor",
                 log_dir: str | None = None, every_n_epochs: int = 1,
                 gamma_threshold: float = 1e-3, batch_size: int = 64) -> None:
        super().__init__()
        self.probe, self.log_path, self.log_dir = probe, os.fspath(log_path), log_dir
        self.every_n_epochs, self.gamma_threshold = every_n_epochs, gamma_threshold
        self.batch_size, self._writer = batch_size, None
        self.rows: list[dict] = []

    def set_model(self, model: Model) -> None:
        _check_flavour(self, model)
        super().set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        directory = os.path.dirname(os.path.abspath(self.log_path))
        os.makedirs(directory, exist_ok=True)
        with open(self.log_path + ".csv", "w", newline="") as f:
            csv.writer(f).writerow(self.COLUMNS)
        open(self.log_path + ".jsonl", "w").close()
        if self.log_dir:
            if importlib.util.find_spec("tensorboard") is None:
                warnings.warn("BatchNormMonitor: TensorBoard is not installed (pip install "
                              "tensorboard), so nothing is written to log_dir "
                              f"{self.log_dir!r}; the CSV and JSON logs are.", stacklevel=2)
            else:
                self._writer = _tensorflow().summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        layers = list(distinct_batch_norm_layers(self.model))
        measured = measure_inputs(self.model, layers, self.probe, batch_size=self.batch_size)
        rows = [dict(epoch=epoch + 1, layer=name,
                     **_layer_report(layer, measured[name], self.gamma_threshold))
                for name, layer in layers]
        self.rows += rows
        with open(self.log_path + ".csv", "a", newline="") as f:
            writer = csv.DictWriter(f, self.COLUMNS)
            writer.writerows(rows)
        with open(self.log_path + ".jsonl", "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        if self._writer is not None:
            with self._writer.as_default(step=epoch + 1):
                for row in rows:
                    for key in self.COLUMNS[2:]:
                        if row[key] is not None:
                            _tensorflow().summary.scalar(f"bn/{row['layer']}/{key}",
                                                         row[key])
            self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()


def _layer_report(layer, stats, gamma_threshold):
    count, mean, m2 = (np.reshape(v, -1) for v in stats)
    variance = m2 / np.maximum(count - 1, 1)
    moving_mean = np.reshape(layer.moving_mean.numpy(), -1).astype(np.float64)
    moving_variance = np.reshape(layer.moving_variance.numpy(), -1).astype(np.float64)
    moving_std = np.sqrt(moving_variance + layer.epsilon)
    gamma = getattr(layer, "gamma", None)
    report = {
        "mean_drift": float(np.mean(np.abs(mean - moving_mean) / moving_std)),
        "variance_ratio": float(np.mean((variance + layer.epsilon)
                                        / (moving_variance + layer.epsilon))),
        "gamma_near_zero": None if gamma is None else float(
            np.mean(np.abs(gamma.numpy()) < gamma_threshold)),
        "skipped_updates": int(layer.skipped_updates.numpy()) if is_ours(layer) else None,
        "r_clipped": None, "d_clipped": None,
    }
    limits = _renorm_limits(layer)
    if limits is not None:
        (rmin, rmax, dmax), renorm_mean, renorm_std = limits
        r = np.sqrt(variance + layer.epsilon) / renorm_std
        d = (mean - renorm_mean) / renorm_std
        report["r_clipped"] = float(np.mean((r > rmax) | (r < rmin)))
        report["d_clipped"] = float(np.mean(np.abs(d) > dmax))
    return report


def _renorm_limits(layer):
    """((rmin, rmax, dmax), renorm mean, renorm std) of a renormalizing layer, or None."""
    if hasattr(layer, "clip_limits"):  # keras_bn.BatchRenormalization: the schedule now
        rmax, dmax = (float(v) for v in layer.clip_limits())
        limits = (1.0 / rmax, rmax, dmax)
    elif getattr(layer, "renorm", False):  # tf-keras renorm=True: constant clipping
        clipping = layer.renorm_clipping or {}
        rmax = clipping.get("rmax") or np.inf
        dmax = np.inf if clipping.get("dmax") is None else clipping["dmax"]
        rmin = clipping.get("rmin") or 1.0 / rmax
        limits = (rmin, rmax, dmax)
    else:
        return None
    mean = np.reshape(layer.renorm_mean.numpy(), -1).astype(np.float64)
    std = np.reshape(layer.renorm_stddev.numpy(), -1).astype(np.float64)
    return limits, mean, np.maximum(std, np.sqrt(layer.epsilon))
