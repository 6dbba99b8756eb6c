"""Folding BatchNormalization into neighbouring Conv/Dense layers.

Data flows one way: `plan` (which BN goes where, or why not) -> `rewrite` (the new model,
built once) -> `verify` (both models on the same inputs). The math is in `math`.
"""

from keras_bn.fold.plan import Decision, FoldPlan, plan_model
from keras_bn.fold.rewrite import fold_model, without_batch_norm
from keras_bn.fold.verify import VerificationError, compare, predict, random_inputs


def fold(model, *, verify=True, rtol=1e-5, atol=1e-6, return_plan=False):
    """A new inference model with every foldable BatchNormalization merged into weights.

    Handles `tf_keras.layers.BatchNormalization`, `keras_bn.BatchNormalization` and
    `keras_bn.BatchRenormalization` (whose inference is plain BN). A BN right after a
    Conv1D/2D/3D (any `groups`), DepthwiseConv1D/2D, SeparableConv1D/2D,
    Conv1D/2D/3DTranspose or Dense is merged into that layer's output channels; a BN right
    before a Dense, or before a Conv/DepthwiseConv with 'valid' padding (or a 1x1 kernel),
    into its input channels. A layer without bias gets one. Every BN that cannot be folded
    exactly (an activation between, a producer that also feeds another layer, a channel
    axis mismatch, a call with `training=True`, a shared layer, zero padding after it)
    stays, with the reason in the plan (`fold_plan`).

    The input model, its weights and its files are not changed. A Sequential model comes
    back Sequential, a functional model functional, with the same inputs, layer names and
    outputs (a model output that was a folded BN's is now its producer's); nested models
    are folded inside.

    Args:
      model: A built Sequential or functional tf-keras model.
      verify: Run both models in inference mode on random inputs of the model's input
        shapes (batch 2, unknown dimensions 32) and raise if they differ.
      rtol: Tolerance relative to the output scale (max |output|): 1e-5 is float32's
        rounding over the reordered arithmetic of a folded network.
      atol: Absolute slack added to the tolerance, for outputs near zero.
      return_plan: Also return the FoldPlan (with the measured error filled in).

    Returns:
      The folded `tf_keras.Model`, or `(model, FoldPlan)` with `return_plan=True`.

    Raises:
      ValueError: a subclassed or unbuilt model.
      VerificationError: (a ValueError) the folded model's outputs differ beyond
        `rtol * scale + atol`.
    """
    folded, the_plan = fold_model(model)
    if verify:
        inputs = random_inputs(model)
        the_plan.max_error, the_plan.tolerance = compare(
            predict(model, inputs), predict(folded, inputs), rtol, atol,
            f"folded model '{model.name}'")
    return (folded, the_plan) if return_plan else folded


def fold_plan(model):
    """What `fold` would do to each BN layer of `model`, without building anything.

    Returns:
      A `FoldPlan`: `.decisions` (one `Decision` per BN, nested models included, in graph
      order), `.folded`, `.kept`, `.as_dicts()`, and `str(plan)` is a table.

    Raises:
      ValueError: a subclassed model.
    """
    return plan_model(model)


__all__ = ["fold", "fold_plan", "FoldPlan", "Decision", "VerificationError",
           "without_batch_norm"]
