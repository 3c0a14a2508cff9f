"""`opswap positions MODEL`: a model's block positions and each candidate's parameter count."""
from __future__ import annotations

import argparse
import sys

from opswap.cli._render import FORMATS, render
from opswap.substitution import positions_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. wrn-40-2, wrn-16-1 (any wrn-<6n+4>-<k>) or tf-cnn "
                        "(no positions: nothing to substitute)")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs")
    parser.add_argument("--ops", default=None,
                        help="comma-separated candidates to show (default: the study's seven)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")


def main(args: argparse.Namespace) -> int:
    candidates = [c.strip() for c in args.ops.split(",") if c.strip()] if args.ops is not None else None
    if candidates == []:
        raise ValueError(f"--ops {args.ops!r} names no op; give a comma-separated list such as mbconv,identity, "
                         "or leave --ops out for the study's seven")
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
