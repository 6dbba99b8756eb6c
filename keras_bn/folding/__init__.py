"""Folding BatchNormalization into neighbouring Conv/Dense layers.

Data flows one way: `plan.plan_model` (which BN goes where, or why not) ->
`rewrite.rewrite(model, plan)` (the new model, built once) -> the check of both models on
the same inputs (`keras_bn.verification`). `graph` reads the model's config, `kinds` is
the registry of layer classes that absorb a BN, `math` the pure numpy per layer kind.
"""

from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model
from keras_bn.folding.plan import Decision, FoldPlan, plan_model
from keras_bn.folding.rewrite import rewrite, without_batch_norm
from keras_bn.layers.find import batch_norm_places
from keras_bn.verification import check_outputs, default_rtol, predict, verification_batches


def fold(model: Model, *, verify: bool = True, samples: Inputs | None = None,
         rtol: float | None = None, atol: float = 1e-6,
         return_plan: bool = False) -> Model | tuple[Model, FoldPlan]:
    """A new inference model with every foldable BatchNormalization merged into weights.

    Works on tf-keras and Keras 3 models (any backend) alike. Handles the built-in
    BatchNormalization of either (Keras 3's `renorm=True` included),
    `keras_bn.BatchNormalization`, `keras_bn.BatchRenormalization` and their
    `keras_bn.keras3` twins (whose inference is plain BN). A BN right after a
    Conv1D/2D/3D (any `groups`), DepthwiseConv1D/2D, SeparableConv1D/2D,
    Conv1D/2D/3DTranspose or Dense is merged into that layer's output channels; a BN right
    before a Dense, or before a Conv/DepthwiseConv/SeparableConv with 'valid' padding (or
    a kernel of size 1), into its input channels. BNs in a row compose into one first. A
    layer without bias gets one. Every BN that cannot be folded exactly (an activation
    between, a producer that also feeds another layer, a channel axis mismatch, a call
    that may train, a shared layer, zero padding after it, a layer kind not supported)
    stays, with the reason in the plan (`fold_plan`).

    The input model, its weights and its files are not changed (the verification run
    restores any variable a `training=True` call inside the model updates). A Sequential
    model comes back Sequential, a functional model functional, with the same inputs,
    layer names and outputs; nested models are folded inside. A functional subclass
    (keras-hub's `Backbone` and `Task`, nested at any depth) comes back as the plain
    functional model of its graph (`keras.Model`, not its own class, whose constructor
    takes other arguments), with the same inputs, outputs and layer names. A BN inside a
    custom layer stays, with the reason "inside custom layer '<name>'". New layers are
    matched to the originals by graph position, never by name. A model holding Lambda
    layers is rebuilt with their (already loaded) code.

    Args:
      model: A built Sequential or functional model, or a functional subclass (tf-keras
        or Keras 3).
      verify: Run both models in inference mode on `samples` (or, without them, on a
        random batch of 2 in the model's input range, see `random_inputs`) and raise if
        they differ by more than the tolerance: `rtol * scale + atol`, and where the
        error exceeds that, plus `NOISE_MULTIPLE` (8) times the model's own float32
        rounding noise on the same inputs (measured then: the original in float32
        against the same weights in float64; a deep
        network whose BN statistics do not fit the inputs can move by more than 1e-5
        of its scale from rounding alone, and a fold cannot be held to better).
      samples: Inputs to verify on (typical rows of the user's data): an array, a list
        with one array per input, or a dict by input name.
      rtol: Tolerance relative to the output scale (max |output|), on top of the noise.
        None: 1e-5 for a float32 model, 10 units in the last place of the compute dtype
        under mixed precision (float16: 9.8e-3); see `default_rtol`.
      atol: Absolute slack added to the tolerance, for outputs near zero.
      return_plan: Also return the FoldPlan that was executed (with the measured error).

    Returns:
      The folded model, of the input's flavour and class, or `(model, FoldPlan)` with
      `return_plan=True`.

    Raises:
      ValueError: a subclassed or unbuilt model, or `samples` that do not fit its inputs
        (`keras_bn.InputError`, naming the input, the shape and what it takes).
      VerificationError: (a ValueError) the folded model's outputs differ beyond the
        tolerance; the message gives the error, the floor and the measured noise.
    """
    if not model.built:
        raise InputError(f"Model '{model.name}' is not built: call it on data or give it an "
                         "Input shape first, so its BN statistics exist.")
    the_plan = plan_model(model)
    folded = rewrite(model, the_plan)
    _check_kept(model, folded, the_plan)
    if verify:
        batches, described = verification_batches(model, samples)
        the_plan.verdict = check_outputs(
            model, lambda inputs: predict(folded, inputs), batches,
            default_rtol(model) if rtol is None else rtol, atol,
            f"folded model '{model.name}'", inputs=described)
    return (folded, the_plan) if return_plan else folded


def _check_kept(model, folded, plan):
    """The BN layers left in `folded` are exactly the plan's `kept` (else a bug), each in
    its place: its path, cut after the custom layer that holds it (a custom layer rebuilt
    from its config may name its sublayers anew)."""
    kept = {d.path for d in plan.kept}
    want = sorted(place for path, place, _ in batch_norm_places(model) if path in kept)
    left = sorted(place for _, place, _ in batch_norm_places(folded))
    if left != want:  # pragma: no cover - would be a bug in plan or rewrite
        raise AssertionError(f"keras_bn bug: the folded model keeps BN layers {left}, the "
                             f"plan says {want}. Please report it.")


def fold_plan(model: Model) -> FoldPlan:
    """What `fold` would do to each BN layer of `model`, without building anything.

    Returns:
      A `FoldPlan`: `.decisions` (one `Decision` per BN, nested models included, in graph
      order), `.folded`, `.kept`, `.as_dicts()`, and `str(plan)` is a table.

    Raises:
      ValueError: a subclassed model.
    """
    return plan_model(model)


__all__ = ["fold", "fold_plan", "FoldPlan", "Decision", "without_batch_norm"]
