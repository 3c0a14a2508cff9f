"""Rows of plain values as an aligned text table, CSV or JSON (for the table-printing commands)."""
from __future__ import annotations

import csv
import io
import json

FORMATS = ("table", "csv", "json")


def render(rows: list[dict], fmt: str) -> str:
    """Rows as an aligned text table, CSV or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return ""
    cols = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return buf.getvalue().rstrip("\n")

    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r[c], (int, type(None))) and not isinstance(r[c], bool) for r in rows) for c in cols]
    fmt_row = lambda vals: "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric))
    lines = [fmt_row(cols), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
