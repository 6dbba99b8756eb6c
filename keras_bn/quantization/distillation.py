"""Fine-tuning a quantization-aware model toward the float model's answers: distillation
from unlabelled inputs (Hinton et al. 2015), or the task loss from labels, with rows held
out and the best epoch kept.

A few hundred rows overfit within a few epochs, and the learning rate decides whether
fine-tuning helps or hurts, so every epoch is judged on rows it did not train on by the
figure users judge an integer file by: top-1 agreement of the simulated int8 model with
the float model. The weights of the best epoch are the ones kept, and an epoch replaces
the starting weights only if it beats them beyond chance on those rows (`beats`): on a
few dozen held-out rows the best of several epochs is ahead by a row or two by luck
alone, and such a lead did not hold on fresh rows (`benchmarks.qat_study`).
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from keras_bn import flavour
from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model
from keras_bn.folding.graph import Graph
from keras_bn.layers.activation_quantizer import ActivationQuantizer
from keras_bn.verification import model_inputs, predict


@dataclasses.dataclass
class Distillation:
    """What `distill` did.

    Attributes:
      epochs: one `{"epoch", "loss", "agreement", "error", "fixed", "broken"}` per
        epoch (epoch 0: before training; agreement: held-out top-1 agreement with the
        float model, the lowest over outputs with a class axis, None where no output
        has one; error: the largest held-out mean squared error from its outputs;
        fixed and broken: the held-out rows it answers right that the start answered
        wrong, and the reverse, a row being right when every output with a class axis
        agrees, None without one). Epochs are ranked by agreement, then error; one
        that does not beat the start beyond chance (`beats`) is never kept.
      best_epoch: the epoch whose weights the model keeps (0: none beat the start
        beyond chance).
      significance: the chance an epoch's lead over the start may have of being luck
        (`beats`).
      held_out: how many rows judged the epochs.
      trained_on: how many rows it trained on.
      loss: which loss it trained with, in words.
      judged_by: what `agreement` measures: top-1 agreement with the float model, or
        accuracy on the held-out labels when no float model was given.
    """

    epochs: list = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    held_out: int = 0
    trained_on: int = 0
    significance: float = 0.05
    loss: str = ""
    judged_by: str = "top-1 agreement with the float model"

    @property
    def before(self):
        """Held-out agreement before fine-tuning."""
        return self.epochs[0]["agreement"] if self.epochs else None

    @property
    def after(self):
        """Held-out agreement of the weights kept."""
        return self.epochs[self.best_epoch]["agreement"] if self.epochs else None

    def summary(self) -> str:
        """One line: the loss, the rows, the agreement before and after."""
        if self.before is None:
            return (f"{self.loss}; {self.trained_on} rows, best of {len(self.epochs) - 1} "
                    f"epochs by held-out error: epoch {self.best_epoch}")
        kept = (f"epoch {self.best_epoch} of {len(self.epochs) - 1} kept" if self.best_epoch
                else f"none of {len(self.epochs) - 1} epochs beat the start beyond chance "
                f"(p < {self.significance:g}): start kept")
        return (f"{self.loss}; trained on {self.trained_on} rows, judged on {self.held_out} "
                f"held-out rows: {self.judged_by} {self.before:.2%} "
                f"before, {self.after:.2%} after ({kept})")


def distill(aware: Model, teacher: Model, data: Inputs, *, labels: Inputs | None = None,
            epochs: int = 10, learning_rate: float = 3e-5, batch_size: int = 32,
            temperature: float = 2.0, held_out: float = 0.2,
            augment: Callable[[list, np.random.Generator], list] | None = None, seed: int = 0,
            significance: float = 0.05, verbose: int = 1) -> Distillation:
    """Fine-tunes the quantization-aware model `aware` to give `teacher`'s answers.

    Without `labels` it distills (Hinton et al. 2015): an output that ends in a softmax
    learns the teacher's probabilities softened by `temperature` from the simulated
    int8 logits (the tensor the softmax reads; the teacher's logits are taken as the
    log of its probabilities, which is the same up to a constant the softmax ignores),
    by KL divergence scaled by `temperature ** 2`; any other output the teacher's values
    by mean squared error. With integer `labels` (one classifier output: a softmax's
    probabilities, or logits), it trains the task loss, sparse categorical
    cross-entropy.

    A fraction `held_out` of the rows (at random, `seed`) is not trained on: after each
    epoch the model's held-out top-1 agreement with the teacher (the simulated int8
    forward in inference mode) is measured, and at the end `aware` keeps the weights of
    the best epoch that beats the starting weights beyond chance on those rows (a sign
    test on the rows it fixes and breaks, one-sided p below `significance`; `beats`),
    or else the starting weights: fine-tuning never leaves it worse on those rows, nor
    trades the start for a lead of a row or two that the next rows would not show.
    `aware` is trained in place, as `fit` trains a model.

    Example:

    ```python
    qat = keras_bn.quantization.quantize_aware(model, unlabelled[:500])
    report = keras_bn.quantization.distill(qat, model, unlabelled, epochs=10)
    print(report.summary())
    ```

    Args:
      aware: A model `quantize_aware` made (calibrated).
      teacher: The float model whose answers it learns (None with `labels`).
      data: Rows: an array, a list with one array per input, or a dict by input name.
      labels: Optional integer class labels, one per row.
      epochs: Passes over the training rows.
      learning_rate: Adam's; fine-tuning needs small steps (3e-5 helped where 2e-4 hurt
        in a trial on a trained net).
      batch_size: Rows per step.
      temperature: Of the softened probabilities (1: the probabilities themselves).
      held_out: The fraction of rows that judges the epochs (0: keep the last epoch).
      augment: Optional `augment(rows, rng) -> rows` applied to the training rows (a
        list with one array per input) before each epoch, with a `numpy` Generator; it
        may return other rows, or another number of them (noise, flips, mixup). When
        distilling, the teacher answers the augmented rows anew each epoch; with
        `labels`, the augmented rows keep their rows' labels, so `augment` must return
        as many rows, each still of its label.
      seed: Of the held-out split and of `augment`'s generator.
      significance: How likely by chance an epoch's lead over the start may be and still
        replace it (one-sided p of the sign test; 1: any lead, however small).
      verbose: 1 shows a progress bar with the loss and held-out agreement per epoch.

    Returns:
      A `Distillation` record.

    Raises:
      keras_bn.errors.InputError: rows that do not fit the model, labels that do not
        match the rows or the outputs, a bad number of epochs, fraction or temperature.
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise InputError(f"distill of '{aware.name}': epochs={epochs!r}; give a number >= 1.")
    if not 0 <= held_out < 1:
        raise InputError(f"distill of '{aware.name}': held_out={held_out!r}; give a fraction "
                         "in [0, 1) (0.2: a fifth of the rows judges the epochs).")
    if temperature <= 0:
        raise InputError(f"distill of '{aware.name}': temperature={temperature!r}; give a "
                         "positive number (2 to 4 is usual).")
    if not 0 < significance <= 1:
        raise InputError(f"distill of '{aware.name}': significance={significance!r}; give a "
                         "probability in (0, 1] (0.05: a lead that luck gives once in 20).")
    if teacher is None and labels is None:
        raise InputError(f"distill of '{aware.name}': give the float model to learn from, "
                         "or labels.")
    rows = model_inputs(aware, data, "distillation data")
    count = len(rows[0])
    if labels is not None and len(np.asarray(labels)) != count:
        raise InputError(f"distill of '{aware.name}': {len(np.asarray(labels))} labels "
                         f"for {count} rows; give one label per row.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(count)
    hold = int(round(held_out * count))
    if held_out and not 0 < hold < count:
        raise InputError(f"distill of '{aware.name}': {count} rows cannot be split into "
                         f"training and held-out rows at held_out={held_out}; give more.")
    judge, train = order[:hold], order[hold:]
    pick = lambda arrays, index: [a[index] for a in arrays]  # noqa: E731
    held = pick(rows, judge)
    if not hold:
        reference = None
    elif teacher is not None:
        reference = predict(teacher, held)
    else:  # labels only: judged by held-out accuracy
        assert labels is not None  # distill refused neither teacher nor labels
        reference = [np.eye(int(np.max(labels)) + 1)[np.asarray(labels)[judge]]]
    student, teach, losses, weights, described = _objective(
        aware, teacher, labels if labels is None else np.asarray(labels)[train],
        temperature, labels)
    plumbing = flavour.of(aware)
    keras = plumbing.keras
    student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses,
                    loss_weights=weights)
    record = Distillation(held_out=hold, trained_on=len(train), loss=described,
                          significance=significance,
                          judged_by="top-1 agreement with the float model"
                          if teacher is not None else "accuracy on the held-out labels")
    start = _score(aware, held, reference)
    record.epochs.append({"epoch": 0, "loss": None, **start.figures(start)})
    best, kept = start.rank, aware.get_weights()
    bar = plumbing.Progbar(epochs, verbose=verbose, unit_name="epoch")
    train_rows = pick(rows, train)
    targets = teach(train_rows)
    for epoch in range(1, epochs + 1):
        inputs = train_rows
        if augment is not None:
            inputs = model_inputs(aware, augment(list(train_rows), rng), "augmented rows")
            if teacher is not None:  # the teacher's answers to the rows trained on
                targets = teach(inputs)
            elif len(inputs[0]) != len(train_rows[0]):
                raise InputError(f"distill of '{aware.name}': augment returned "
                                 f"{len(inputs[0])} rows for {len(train_rows[0])}; with "
                                 "labels it must keep each row (and its label).")
        history = student.fit(inputs, targets, batch_size=batch_size, epochs=1, verbose=0,
                              shuffle=True)
        loss = float(history.history["loss"][-1])
        score = _score(aware, held, reference)
        record.epochs.append({"epoch": epoch, "loss": loss, **score.figures(start)})
        if not hold or (score.rank > best and beats(score, start, significance)):
            best, kept = score.rank, aware.get_weights()
            record.best_epoch = epoch
        bar.update(epoch, [("loss", loss)] + ([("held-out agreement", score.agreement)]
                                              if score.agreement is not None else []))
    aware.set_weights(kept)
    return record


def _softmax_layers(model):
    """For each output of `model`, the softmax layer that makes it (through its fixed
    ActivationQuantizer), or None."""
    from keras_bn.quantization.aware import is_softmax

    graph = Graph(model)
    found = []
    for ref in graph.outputs:
        node = graph.nodes[ref.layer]
        if isinstance(node.layer, ActivationQuantizer) and node.calls:
            node = graph.nodes[node.calls[ref.call].args[0].layer]
        found.append(node.layer if is_softmax(node.layer) else None)
    return found


def _objective(aware, teacher, train_labels, temperature, labels):
    """`(student model, teach, losses, loss weights, description)` that `fit` trains: the
    student shares `aware`'s layers; `teach(rows)` gives the targets of training rows
    (the teacher's answers, or the labels)."""
    plumbing = flavour.of(aware)
    keras = plumbing.keras
    softmaxes = _softmax_layers(aware)
    if labels is not None:
        shape = tuple(aware.outputs[0].shape)
        if len(aware.outputs) != 1 or len(shape) < 2 or (shape[-1] or 0) < 2:
            raise InputError(f"distill of '{aware.name}': labels train a model with one "
                             f"classifier output (output shapes "
                             f"{[tuple(o.shape) for o in aware.outputs]}); distill from the "
                             "float model instead (no labels).")
        logits = softmaxes[0] is None  # a classifier without a softmax gives logits
        fixed = np.asarray(train_labels)
        return (aware, lambda rows: fixed,
                keras.losses.SparseCategoricalCrossentropy(from_logits=logits), None,
                "task loss (sparse categorical cross-entropy" +
                (" on logits" if logits else "") + ") on the labels")
    outputs, losses, weights = [], [], []
    for output, softmax in zip(aware.outputs, softmaxes):
        if softmax is None:
            outputs.append(output)
            losses.append(keras.losses.MeanSquaredError())
            weights.append(1.0)
            continue
        logits = plumbing.call_input(aware, softmax)
        outputs.append(keras.layers.Activation("softmax")(
            keras.layers.Rescaling(1.0 / temperature)(logits)))
        losses.append(keras.losses.KLDivergence())
        weights.append(float(temperature) ** 2)
    student = keras.Model(aware.inputs, outputs)

    def teach(rows):
        return [np.asarray(target, np.float32) if softmax is None else
                _softened(target, temperature)
                for softmax, target in zip(softmaxes, predict(teacher, rows))]

    kinds = sorted({"KL divergence at temperature {:g}".format(temperature) if s is not None
                    else "mean squared error" for s in softmaxes})
    return student, teach, losses, weights, "distilled from the float model (" + \
        ", ".join(kinds) + ")"


def _softened(probabilities, temperature):
    """Probabilities softened by `temperature`: the softmax of their log divided by it
    (float32; a zero probability counts as 1e-30)."""
    log_p = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-30, None)) / temperature
    log_p -= log_p.max(axis=-1, keepdims=True)
    return (np.exp(log_p) / np.exp(log_p).sum(-1, keepdims=True)).astype("f4")


@dataclasses.dataclass
class HeldOutScore:
    """A model's answers to the held-out rows against the reference: `agreement` (the
    lowest top-1 agreement over outputs with a class axis, None without one), `error`
    (the largest mean squared error over the outputs), and per row `right` (every
    output with a class axis agrees; None without one) and `errors` (the row's squared
    error summed over the outputs' means). All None without held-out rows."""

    agreement: float | None = None
    error: float | None = None
    right: np.ndarray | None = None
    errors: np.ndarray | None = None

    @property
    def rank(self):
        """What makes an epoch better: higher agreement, then lower error."""
        return (-1.0 if self.agreement is None else self.agreement, -(self.error or 0.0))

    def changed(self, start: "HeldOutScore") -> tuple[int, int] | None:
        """`(fixed, broken)`: the rows right here and wrong in `start`, and the
        reverse; None without a class axis."""
        if self.right is None or start.right is None:
            return None
        return (int(np.sum(self.right & ~start.right)),
                int(np.sum(start.right & ~self.right)))

    def figures(self, start: "HeldOutScore") -> dict:
        """The record's entries: agreement, error, and the rows fixed and broken
        against `start`."""
        fixed, broken = self.changed(start) or (None, None)
        return {"agreement": self.agreement, "error": self.error, "fixed": fixed,
                "broken": broken}


def _score(model: Model, rows: list, reference: list | None) -> HeldOutScore:
    """The `HeldOutScore` of `model` (inference) against `reference` outputs on `rows`."""
    if reference is None:
        return HeldOutScore()
    agreements, errors, right, row_errors = [], [], None, 0.0
    for got, want in zip(predict(model, rows), reference):
        got, want = np.asarray(got), np.asarray(want)
        squared = (got - want).reshape(len(got), -1) ** 2
        errors.append(float(np.mean(squared)))
        row_errors = row_errors + squared.mean(axis=1)
        if got.ndim >= 2 and got.shape[-1] >= 2:
            same = np.argmax(got, -1) == np.argmax(want, -1)
            agreements.append(float(np.mean(same)))
            same = same.reshape(len(got), -1).all(axis=1)
            right = same if right is None else right & same
    return HeldOutScore(min(agreements) if agreements else None, max(errors), right,
                        np.asarray(row_errors, np.float64))


def beats(score: HeldOutScore, start: HeldOutScore, significance: float = 0.05) -> bool:
    """Whether `score` beats `start` on the same held-out rows beyond chance.

    With a class axis: the sign test on the rows that changed (Dixon & Mood 1946;
    McNemar's exact test): of the `fixed + broken` rows one of the two answers right,
    `fixed` or more would go to `score` with probability `p` if each row were a fair
    coin; it beats the start when `p < significance`. Otherwise (no class axis): the
    one-sided paired t-test of the rows' squared errors, normal approximation
    (z > the normal quantile of `1 - significance`). With `significance` 1 any lead
    beats the start.
    """
    if significance >= 1:
        return True
    changed = score.changed(start)
    if changed is not None:
        fixed, broken = changed
        return sign_test(fixed, fixed + broken) < significance
    if score.errors is None or start.errors is None or len(score.errors) < 2:
        return False
    gain = start.errors - score.errors
    spread = float(np.std(gain, ddof=1))
    if spread == 0:
        return float(np.mean(gain)) > 0
    z = float(np.mean(gain)) / (spread / math.sqrt(len(gain)))
    return 0.5 * math.erfc(z / math.sqrt(2)) < significance


def sign_test(successes: int, trials: int) -> float:
    """One-sided p of the sign test: the chance of `successes` or more heads in
    `trials` tosses of a fair coin (1 for no trials)."""
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2 ** trials
