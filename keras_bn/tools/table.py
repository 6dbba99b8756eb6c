"""Plain-text tables for the terminal (fold plans, BN summaries, export results)."""

from keras_bn.tools.terminal import escaped


def aligned(rows, rule=False):
    """`rows` (lists of strings, the first being the header) as left-aligned columns,
    with a dashed line under the header when `rule`. Cells come from files (layer and
    class names): their control characters are printed as escapes (`terminal.escaped`)."""
    rows = [[escaped(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
