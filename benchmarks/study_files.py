"""The results files of a study: OUT/STEM.json (its rows), OUT/STEM.md (its table) and,
where it plots, OUT/STEM.png, each written whole (`keras_bn.files.output.atomic_path`):
a run stopped halfway leaves the last run's files as they were.

`--replot` reads the rows back from OUT/STEM.json and rewrites only the table and plot.
"""

import json
import os
from collections.abc import Callable

from keras_bn.files.output import atomic_path


def study_rows(out: str, stem: str, run: Callable[[], list], replot: bool = False) -> list:
    """The study's rows: with `replot`, the ones OUT/STEM.json holds; otherwise `run()`'s,
    written there (numbers numpy gives are written as floats)."""
    path = os.path.join(out, f"{stem}.json")
    if replot:
        with open(path) as f:
            return json.load(f)
    rows = run()
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(rows, f, indent=1, default=float)
    return rows


def publish(out: str, stem: str, rows: list, table: Callable[[list], str],
            plot: Callable[[list, str], None] | None = None) -> str:
    """Writes `table(rows)` to OUT/STEM.md and, given `plot(rows, path)`, the figure to
    OUT/STEM.png; returns the table."""
    text = table(rows)
    with atomic_path(os.path.join(out, f"{stem}.md")) as tmp, open(tmp, "w") as f:
        f.write(text)
    if plot is not None:
        with atomic_path(os.path.join(out, f"{stem}.png")) as tmp:
            plot(rows, tmp)
    return text
