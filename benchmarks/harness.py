"""Side-by-side timing: interleaved contenders, CPU and wall time, medians and ratios.

Pure Python (no TensorFlow) so the logic is unit-tested on its own.
"""

import json
import os
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Per-run seconds of one contender: wall clock and CPU time of this process."""

    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)

    @property
    def wall_median(self):
        return statistics.median(self.wall)

    @property
    def cpu_median(self):
        return statistics.median(self.cpu)


def interleave(contenders, repeats, warmup=1, inner=1, clock=time.perf_counter,
               cpu_clock=time.process_time):
    """Runs `contenders` (name -> zero-argument callable) A B A B ..., `repeats` rounds.

    Each contender first runs `warmup` times untimed (tracing, caches); each timed sample
    runs it `inner` times and records seconds per call. Interleaving spreads the machine's
    drift (other load, frequency) over every contender alike.

    Returns:
      dict name -> Timing.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing() for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            wall0, cpu0 = clock(), cpu_clock()
            for _ in range(inner):
                fn()
            timings[name].wall.append((clock() - wall0) / inner)
            timings[name].cpu.append((cpu_clock() - cpu0) / inner)
    return timings


@dataclass
class Row:
    """One line of the results: `subject` measured against `baseline` in one case."""

    case: str
    subject: str
    baseline: str
    subject_time: Timing
    baseline_time: Timing
    target: float = None
    #: False for `--quick` rows: small shapes and few repeats measure that the case runs,
    #: not how fast, so the full run's target is shown but not judged.
    judged: bool = True

    @property
    def cpu_ratio(self):
        return self.subject_time.cpu_median / self.baseline_time.cpu_median

    @property
    def wall_ratio(self):
        return self.subject_time.wall_median / self.baseline_time.wall_median

    @property
    def met(self):
        """Whether the target holds, judged on CPU time (the stable measure here)."""
        if self.target is None or not self.judged:
            return None
        return self.cpu_ratio <= self.target

    def as_dict(self):
        return {
            "case": self.case, "subject": self.subject, "baseline": self.baseline,
            "subject_cpu_ms": 1e3 * self.subject_time.cpu_median,
            "baseline_cpu_ms": 1e3 * self.baseline_time.cpu_median,
            "subject_wall_ms": 1e3 * self.subject_time.wall_median,
            "baseline_wall_ms": 1e3 * self.baseline_time.wall_median,
            "cpu_ratio": self.cpu_ratio, "wall_ratio": self.wall_ratio,
            "target": self.target, "met": self.met,
        }


COLUMNS = ["case", "subject / baseline", "CPU ms", "CPU ratio", "wall ms", "wall ratio",
           "target"]


def _cells(row):
    d = row.as_dict()
    target = "" if row.target is None else f"<= {row.target:.2f} " + (
        "not judged (--quick)" if not row.judged else "met" if row.met else "MISSED")
    return [row.case, f"{row.subject} / {row.baseline}",
            f"{d['subject_cpu_ms']:.2f} / {d['baseline_cpu_ms']:.2f}", f"{row.cpu_ratio:.3f}",
            f"{d['subject_wall_ms']:.2f} / {d['baseline_wall_ms']:.2f}",
            f"{row.wall_ratio:.3f}", target]


def markdown_table(rows):
    """The rows as a GitHub Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows):
    """The rows as aligned plain text, for the terminal."""
    table = [COLUMNS] + [_cells(row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def write_results(rows, path, meta):
    """Writes `{"meta": ..., "rows": [...]}` as JSON."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": [row.as_dict() for row in rows]}, f, indent=2)
    os.replace(tmp, path)
