"""BN-aware post-training quantization: what is done to a folded model before a converter
quantizes it (TFLite's or onnxruntime's), so that its integer file keeps more of the
float model's answers.

The techniques (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"), each in its own module, each run on the calibration data's
statistics and recorded in a `Technique`:

- "equalization" (`equalization.equalize`): cross-layer equalization of consecutive
  layers, an exact rescaling of channels (the float model computes the same);
- "bias_correction" (`bias_correction.correct_biases`): removes from each bias the
  mean shift that int8 weights put on its channel.

The activation ranges the converter then calibrates can be re-estimated too
(`keras_bn.quantization.ranges`); its record joins these. The options that choose them
are `keras_bn.quantization.options.QuantizationOptions`.

Reference:
  Markus Nagel, Mart van Baalen, Tijmen Blankevoort, Max Welling. Data-Free
  Quantization Through Weight Equalization and Bias Correction. ICCV 2019.
  https://arxiv.org/abs/1906.04721
"""

from collections.abc import Sequence

from keras_bn.errors import InputError
from keras_bn.flavour import Inputs, Model
from keras_bn.quantization import bias_correction, equalization
from keras_bn.quantization.technique import Technique


def apply(model: Model, rows: Inputs, names: Sequence[str]) -> tuple[Model, list[Technique]]:
    """`(new model, [Technique])`: `model` (a folded model) after each technique of
    `names` in order, measured on the calibration `rows` (one array per input).
    The model is not changed."""
    run = {"equalization": equalization.equalize,
           "bias_correction": bias_correction.correct_biases}
    records = []
    for name in names:
        if name not in run:
            raise InputError(f"Unknown post-training technique {name!r}; use {tuple(run)}.")
        model, record = run[name](model, rows)
        records.append(record)
    return model, records
