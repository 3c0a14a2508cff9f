"""`opswap ops` and `opswap positions MODEL`: the registry and a model's positions as tables."""
from __future__ import annotations

import argparse
import json
import sys

from opswap.models import build_model
from opswap.ops import DEFAULT_CANDIDATES, create_op, get_op, list_ops, parse_op
from opswap.substitution import count_params, positions

FORMATS = ("table", "csv", "json")


def ops_table() -> list[dict]:
    """One row per registered op: name, parameters with defaults, default canonical name, doc."""
    rows = []
    for name in list_ops():
        info = get_op(name)
        rows.append({
            "op": name,
            "params": ", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "-",
            "default": parse_op(name).name,
            "shape": "c_in=c_out, stride 1 only" if info.same_shape_only else "any",
            "description": info.doc,
        })
    return rows


def positions_table(model_name: str, num_classes: int = 10, candidates: list[str] | None = None) -> list[dict]:
    """One row per position: shape contract, the block's params/MACs, each candidate's params."""
    model = build_model(model_name, num_classes)
    names = [parse_op(c).name for c in (candidates or DEFAULT_CANDIDATES)]
    rows = []
    for p in positions(model):
        row = {"pos": p.index, "path": p.path, "c_in": p.c_in, "c_out": p.c_out, "stride": p.stride,
               "input": f"{p.resolution}x{p.resolution}", "identity_valid": p.identity_valid,
               "params": p.params, "macs": p.macs}
        for name in names:
            fits = not get_op(parse_op(name).family).same_shape_only or p.identity_valid
            row[name] = count_params(create_op(name, p.c_in, p.c_out, p.stride)) if fits else None
        rows.append(row)
    return rows


def render(rows: list[dict], fmt: str) -> str:
    """Rows as an aligned text table, CSV or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return ""
    cols = list(rows[0])
    if fmt == "csv":
        import csv
        import io

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


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def ops_main(args: argparse.Namespace) -> int:
    print(render(ops_table(), args.format))
    if args.format == "table":
        print(f"\nParameters go in the name (mbconv_e3_k5, conv_bn_e4) or in a study's candidate table."
              f"\nThe study's seven candidates: {', '.join(DEFAULT_CANDIDATES)}")
    return 0


def add_positions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. wrn-40-2, wrn-16-1 (any wrn-<6n+4>-<k>)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--ops", default=None,
                        help="comma-separated candidates to show (default: the study's seven)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def positions_main(args: argparse.Namespace) -> int:
    candidates = [c.strip() for c in args.ops.split(",") if c.strip()] if args.ops else None
    rows = positions_table(args.model, args.num_classes, candidates)
    if not rows:
        print(f"{args.model} has no block positions (nothing to substitute; its layers can still be "
              "made sparse).", file=sys.stderr)
        return 0
    print(render(rows, args.format))
    if args.format == "table":
        print("\nparams/macs: the block now at the position; per-candidate columns: parameters "
              "(BN affine included); – = does not fit (shape changes).")
    return 0
