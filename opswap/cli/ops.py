"""`opswap ops`: the candidate-operation registry as a table."""
from __future__ import annotations

import argparse

from opswap.cli._render import FORMATS, render
from opswap.ops import DEFAULT_CANDIDATES, ops_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")


def main(args: argparse.Namespace) -> int:
    print(render(ops_table(), args.format))
    if args.format == "table":
        print(f"\nParameters go in the name (mbconv_e3_k5, conv_bn_e4) or in a study's candidate table."
              f"\nThe study's seven candidates: {', '.join(DEFAULT_CANDIDATES)}")
    return 0
