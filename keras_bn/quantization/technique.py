"""The record of what one quantization technique did to a model, for the user to read."""

from dataclasses import dataclass, field


@dataclass
class Technique:
    """What one post-training technique did to the folded model (or to the file's
    activation ranges).

    Attributes:
      name: "equalization", "bias_correction" or "ranges (<estimator>)".
      changed: the layers (or tensors) it changed (for equalization, "a -> b" pairs and
        "name (inside)" for a separable convolution's own two kernels).
      skipped: layer (or pair, or tensor) -> why it was left alone.
      detail: a one-line summary of what it measured (largest change).
    """

    name: str
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    def summary(self) -> str:
        """One line: how many changed and left alone, and the detail."""
        return (f"{self.name}: {len(self.changed)} changed, {len(self.skipped)} left "
                f"alone{'; ' + self.detail if self.detail else ''}")
