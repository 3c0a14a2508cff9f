"""`opswap worker STUDY`: claim and run the study's pending trials until none is left or time is up."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from opswap.cli._common import add_study_arguments, check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--until", type=float, metavar="SECONDS",
                        help="start no trial that would not finish within SECONDS of the worker's start "
                             "(judged from the study's finished trials)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for trials other runners hold (and take them over if their runner dies)")
    parser.add_argument("--margin", type=float, default=1.25, metavar="X",
                        help="a trial must fit in the time left with its expected duration times X")
    parser.add_argument("--threads", type=int, metavar="N", help="intra-op threads per trial (default: the CPUs "
                        "of this process, shared by the GPU slots)")
    parser.add_argument("--poll", type=float, default=5.0, metavar="S", help="with --wait, look again every S seconds")


def main(args: argparse.Namespace) -> int:
    from opswap.study.load import load_study
    from opswap.study.worker import run_worker

    if args.until is not None and not 0 < args.until < math.inf:
        raise ValueError(f"--until must be a positive number of seconds, got {args.until:g}")
    if not 1 <= args.margin < math.inf:
        raise ValueError(f"--margin must be a number >= 1, got {args.margin:g}")
    if not 0 < args.poll < math.inf:
        raise ValueError(f"--poll must be a positive number of seconds, got {args.poll:g}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    study = load_study(args.study, args.overrides)
    check_writable_dir(Path(args.results) / study.name, "the trial records", "--results")
    summary = run_worker(study, results_dir=args.results, until=args.until, wait=args.wait, margin=args.margin,
                         threads=args.threads, poll=args.poll)
    print(summary.line())
    return 1 if summary.counts.get("failed") else 0
