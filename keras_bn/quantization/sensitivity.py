"""Per-layer quantization sensitivity: which layers lose the float model's answers.

For every layer a quantized file holds, two files are scored against the Keras model on
the evaluation rows: the layer alone quantized (every other layer in float), and every
layer but it quantized (it alone in float). The first says what the layer costs on its
own; the second what keeping it in float wins back, interactions included; the report is
sorted by the second, which is what float fallback (`keras_bn.quantization.fallback`)
spends. The files are the format's own (TFLite's converter with `denylisted_nodes`, as
its QuantizationDebugger's selective quantization does; onnxruntime's `quantize_static`
with `nodes_to_exclude`), from one calibration, run in their runtimes
(`keras_bn.export.selective`); AIMET's quant analyzer measures the same two views.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from keras_bn.flavour import Inputs, Model
from keras_bn.quantization.scoring import OutputScore, lowest_agreement

#: `score(layers kept in float) -> [OutputScore]`: a file of the model quantized but for
#: those layers, scored on the evaluation rows.
Scorer = Callable[[Sequence[str]], list[OutputScore]]


def lowest_sqnr(scores: Sequence[OutputScore]) -> float:
    """The lowest SQNR (dB) over the outputs."""
    return min(s.sqnr_db for s in scores)


def _agreement(scores):
    value = lowest_agreement(scores)
    return "-" if value is None else f"{value:.2%}"


@dataclass
class LayerSensitivity:
    """One layer's share of the quantization error.

    Attributes:
      layer: the Keras layer's name.
      alone: scores of the file with only this layer quantized (None where only the
        fallback's ranking was measured).
      all_but: scores of the file with every layer but this one quantized.
    """

    layer: str
    alone: list[OutputScore] | None
    all_but: list[OutputScore]

    def gain_db(self, quantized: Sequence[OutputScore]) -> float:
        """SQNR won back by keeping this layer in float, against the fully `quantized`."""
        return lowest_sqnr(self.all_but) - lowest_sqnr(quantized)


@dataclass
class SensitivityReport:
    """Which layers of a quantized file lose the answers, most harmful first.

    Attributes:
      format: "tflite" or "onnx".
      mode: the quantization mode.
      evaluated_on: which rows the files were scored on.
      quantized: scores of the file with every layer quantized.
      layers: a `LayerSensitivity` per layer, sorted by harm (the SQNR won back by
        keeping the layer in float, largest first).
    """

    format: str
    mode: str
    evaluated_on: str
    quantized: list[OutputScore]
    layers: list[LayerSensitivity] = field(default_factory=list)

    def table(self) -> str:
        """The report as an aligned text table."""
        from keras_bn.tools.table import aligned

        rows = [("layer", "alone quantized: agreement", "SQNR", "all but it: agreement",
                 "SQNR", "won back")]
        for s in self.layers:
            alone = s.alone or []
            rows.append((s.layer, _agreement(alone) if alone else "-",
                         f"{lowest_sqnr(alone):.1f} dB" if alone else "-",
                         _agreement(s.all_but), f"{lowest_sqnr(s.all_but):.1f} dB",
                         f"{s.gain_db(self.quantized):+.1f} dB"))
        head = (f"{self.format} {self.mode}, every layer quantized: agreement "
                f"{_agreement(self.quantized)}, SQNR {lowest_sqnr(self.quantized):.1f} dB "
                f"on {self.evaluated_on}")
        return head + "\n" + aligned(rows)

    def as_dicts(self) -> list[dict]:
        """One dict per layer (JSON-ready), most harmful first."""
        return [{"layer": s.layer,
                 "alone_agreement": lowest_agreement(s.alone) if s.alone else None,
                 "alone_sqnr_db": lowest_sqnr(s.alone) if s.alone else None,
                 "all_but_agreement": lowest_agreement(s.all_but),
                 "all_but_sqnr_db": lowest_sqnr(s.all_but),
                 "won_back_db": s.gain_db(self.quantized)} for s in self.layers]

    def plot(self, path: str | os.PathLike) -> None:
        """A bar chart of the report (SQNR with each layer alone quantized, and with all
        but it), most harmful layer on top, written to `path` (png, svg, pdf)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = self.layers[::-1]
        y = range(len(layers))
        figure, axis = plt.subplots(figsize=(7, 1.8 + 0.28 * len(layers)))
        axis.barh([i + 0.2 for i in y], [lowest_sqnr(s.all_but) for s in layers], 0.4,
                  label="every layer but it quantized")
        axis.barh([i - 0.2 for i in y],
                  [lowest_sqnr(s.alone) if s.alone else 0 for s in layers], 0.4,
                  label="it alone quantized")
        axis.axvline(lowest_sqnr(self.quantized), color="k", lw=1,
                     label="every layer quantized")
        axis.set_yticks(list(y), [s.layer for s in layers])
        values = [lowest_sqnr(s.all_but) for s in layers] + [
            lowest_sqnr(s.alone) for s in layers if s.alone]
        finite = [v for v in values if np.isfinite(v)]
        if finite:  # the differences, not the distance from 0 dB
            axis.set_xlim(min(finite) - 3, max(finite) + 3)
        axis.set_xlabel("SQNR against the float model (dB; higher is closer)")
        axis.set_title(f"{self.format} {self.mode}: per-layer sensitivity")
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45 / figure.get_figheight()),
                    ncol=3, fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
        plt.close(figure)


def measure(layers: Sequence[str], score: Scorer, *, alone: bool = True,
            quantized: list[OutputScore] | None = None) -> tuple:
    """`(quantized scores, [LayerSensitivity] most harmful first)` of the `layers` a file
    holds, from `score` (see `Scorer`): 1 + 2 files per layer (1 + 1 without `alone`;
    the 1 not when the fully `quantized` file's scores are given)."""
    quantized = score([]) if quantized is None else quantized
    found = []
    for layer in layers:
        others = [other for other in layers if other != layer]
        found.append(LayerSensitivity(layer, score(others) if alone else None,
                                      score([layer])))
    found.sort(key=lambda s: (-lowest_sqnr(s.all_but),
                              lowest_sqnr(s.alone) if s.alone else 0.0))
    return quantized, found


def sensitivity(model: Model, calibration: Inputs | None, *, evaluation: Inputs | None = None,
                mode: str = "int8", fmt: str = "tflite", ranges: str = "minmax",
                equalization: bool = False,
                bias_correction: bool | None = None) -> SensitivityReport:
    """Which layers of `model`'s quantized file lose its answers, most harmful first.

    The model is folded and prepared as the exporter prepares it (the same techniques,
    calibration and ranges as `QuantizationOptions` with these arguments); then, for
    every layer the file holds, the file with that layer alone quantized and the file
    with every layer but it quantized are written by the format's own quantizer from the
    one calibration and scored against the Keras model on the evaluation rows (top-1
    agreement, SQNR), in their runtime. Costs 1 + 2 x layers quantized files.

    Example:

    ```python
    report = keras_bn.quantization.sensitivity(model, x_calibration, evaluation=x_held_out)
    print(report.table())
    report.plot("sensitivity.png")
    ```

    Args:
      model: A built tf-keras or Keras 3 model (TensorFlow backend); it is not changed.
      calibration: Calibration inputs (as `QuantizationOptions.calibration`).
      evaluation: Rows to score on; by default a held-out fifth of `calibration`.
      mode: "int8" (both formats), "int8-io" (TFLite) or "int16x8" (ONNX).
      fmt: "tflite" or "onnx".
      ranges, equalization, bias_correction: as `QuantizationOptions`.

    Returns:
      A `SensitivityReport` (`.table()`, `.plot(path)`, `.as_dicts()`).

    Raises:
      keras_bn.InputError: a mode the format cannot quantize layer by layer, or data
        that does not fit the model.
    """
    from keras_bn.export import selective
    from keras_bn.quantization.options import QuantizationOptions

    options = QuantizationOptions(mode, calibration=calibration, evaluation=evaluation,
                                  ranges=ranges, equalization=equalization,
                                  bias_correction=bias_correction)
    with selective.open_file(model, fmt, options) as file:
        quantized, layers = measure(file.layers, file.score)
        return SensitivityReport(fmt, mode, file.ready.scored_on, quantized, layers)
