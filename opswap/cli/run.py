"""`opswap run STUDY`: every stage of a study — teacher, bank, trials, summary, report — resumable."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from opswap.cli._common import add_study_arguments, check_writable_dir, report_context
from opswap.study.schema import BACKENDS

log = logging.getLogger("opswap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--workers", type=int, metavar="N", help="parallel trials (default: the study's [run] workers)")
    parser.add_argument("--backend", choices=BACKENDS, help="loky (local processes) or dask (a dask.distributed cluster)")
    parser.add_argument("--address", metavar="A", help="dask scheduler address, e.g. tcp://10.0.0.1:8786")
    parser.add_argument("--retry-failed", action="store_true", help="run failed trials again, with a fresh retry budget")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and skipped pairs; write nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--reports", default="reports", metavar="DIR", help="where the report goes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from opswap.study.expand import expand_study
    from opswap.study.execute import trial_state
    from opswap.study.load import load_study
    from opswap.study.stages import plan, run_study

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    extra = [("run.backend", args.backend)] if args.backend else []
    extra += [("run.address", args.address)] if args.address else []
    study = load_study(args.study, list(args.overrides) + extra)
    root = Path(args.results) / study.name
    if args.dry_run:
        expansion = expand_study(study, root)
        print(plan(study, expansion, root, study.run.retries))
        for t in expansion.trials:
            state = trial_state(root, t.trial_id, retries=study.run.retries, stale_after=study.run.stale_after)
            print(f"{t.trial_id}  {state:<9} {t.label}")
        return 0
    check_writable_dir(root, "the trial records", "--results")
    if not args.no_report:
        check_writable_dir(Path(args.reports) / study.name, "the report", "--reports")
    result = run_study(study, results_dir=args.results, workers=args.workers, retry_failed=args.retry_failed,
                       progress=not args.no_progress)
    if not args.no_report and result.summary_csv:
        from opswap.report import write_report

        try:
            index = write_report(root, Path(args.reports) / study.name, report_context(study, root))
            log.info(f"report: {index}")
        except Exception as err:  # the trials are done; a report can be written later
            log.info(f"report failed ({type(err).__name__}: {err}); retry with: opswap report {study.path}")
    return 1 if result.summary.counts.get("failed") else 0
