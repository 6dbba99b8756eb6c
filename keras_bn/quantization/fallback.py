"""Float fallback: the fewest layers kept in float that bring a quantized file's answers
to a target agreement with the float model.

The layers are ranked by what keeping each alone in float wins back
(`keras_bn.quantization.sensitivity.measure` without the "alone" half: one file per
layer), then kept in float most harmful first, one more at a time, until the file's
lowest top-1 agreement on the evaluation rows reaches the target (AIMET's and TFLite's
selective quantization leave the choice to the user; this makes it). Each step is the
format's own file, scored in its runtime.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from keras_bn.errors import VerificationError
from keras_bn.quantization.scoring import lowest_agreement
from keras_bn.quantization.sensitivity import Scorer, measure


@dataclass
class Fallback:
    """What float fallback kept in float, and what it cost.

    Attributes:
      layers: the layers kept in float, most harmful first (empty: the integer file met
        the target by itself).
      agreement_before: the integer file's lowest top-1 agreement.
      agreement: the written file's.
      files_tried: quantized files written and scored to choose.
      size_bytes_integer: the integer file's size (the written file's is the result's).
      latency_ms_integer: the integer file's latency, measured as the result's.
    """

    layers: list[str] = field(default_factory=list)
    agreement_before: float | None = None
    agreement: float | None = None
    files_tried: int = 0
    size_bytes_integer: int | None = None
    latency_ms_integer: float | None = None

    def summary(self, size_bytes: int | None = None, latency_ms: float | None = None) -> str:
        """One line: the layers kept in float and the cost, against the written file's
        `size_bytes` and `latency_ms`."""
        if not self.layers:
            return (f"float fallback: none needed (agreement {self.agreement_before:.2%} "
                    "as integer)")
        cost = []
        if size_bytes and self.size_bytes_integer:
            cost.append(f"size {self.size_bytes_integer / 1024:.1f} -> "
                        f"{size_bytes / 1024:.1f} KiB")
        if latency_ms and self.latency_ms_integer:
            cost.append(f"latency {self.latency_ms_integer:.2f} -> {latency_ms:.2f} ms")
        return (f"float fallback: {len(self.layers)} layer(s) kept in float "
                f"({', '.join(self.layers)}); agreement {self.agreement_before:.2%} -> "
                f"{self.agreement:.2%}" + (f"; {', '.join(cost)}" if cost else "")
                + f" ({self.files_tried} files tried)")


def choose(layers: Sequence[str], score: Scorer, target: float, what: str,
           judge: Scorer | None = None) -> Fallback:
    """The `Fallback` of the fewest most harmful `layers` to keep in float so that the
    file reaches `target` agreement. `score` (see
    `keras_bn.quantization.sensitivity.Scorer`) ranks the layers: the file against the
    model quantized, what each layer's rounding loses; `judge` (default `score`) says
    when the target is met: the file against the model it is scored by (a `reference`
    model's differences from the model quantized are no layer's to win back).

    Raises:
      VerificationError: no number of layers in float reaches the target (the message
        gives the best agreement found).
    """
    tried: set[tuple] = set()

    def counted(scorer: Scorer) -> Scorer:
        def run(kept):
            tried.add(tuple(sorted(kept)))
            return scorer(kept)
        return run

    rank, accept = counted(score), counted(judge or score)
    record = Fallback(agreement_before=lowest_agreement(accept([])))
    if record.agreement_before is not None and record.agreement_before >= target:
        record.agreement, record.files_tried = record.agreement_before, len(tried)
        return record
    _, ranked = measure(layers, rank, alone=False, quantized=rank([]))
    best = record.agreement_before or 0.0
    order = [s.layer for s in ranked]
    for count in range(1, len(order) + 1):
        kept = order[:count]
        agreement = lowest_agreement(ranked[0].all_but if count == 1 and judge is None
                                     else accept(kept))
        best = max(best, agreement or 0.0)
        if agreement is not None and agreement >= target:
            record.layers, record.agreement, record.files_tried = kept, agreement, len(tried)
            return record
    raise VerificationError(
        f"{what}: no float fallback reaches min_agreement {target:.2%}: the best of "
        f"{len(tried)} files agrees {best:.2%} (all {len(order)} layers in float is the float "
        "model's rounding alone). Try a lower minimum, another mode, or more typical "
        "calibration data.")
