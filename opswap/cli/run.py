"""`opswap run STUDY`: every stage of a study — teacher, bank, trials, summary, report — resumable.

With `--backend slurm` (or `backend = "slurm"`) the trials run in a SLURM job array of workers
(`opswap.study.slurm`); `--wait` waits for it and then writes the summary and the report, which
otherwise a later `opswap report` writes.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from opswap.cli._common import add_study_arguments, check_writable_dir, report_context
from opswap.study.schema import BACKENDS

log = logging.getLogger("opswap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--workers", type=int, metavar="N", help="parallel trials (default: the study's [run] workers; "
                        "with slurm: array tasks, default [run.slurm] array)")
    parser.add_argument("--backend", choices=BACKENDS, help="loky (local processes), dask (a dask.distributed cluster) "
                        "or slurm (a job array of workers, submitted with submitit)")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the array to end, then write the summary "
                        "and the report (without it: print the job id and return)")
    parser.add_argument("--address", metavar="A", help="dask scheduler address, e.g. tcp://10.0.0.1:8786")
    parser.add_argument("--retry-failed", action="store_true", help="run failed trials again, with a fresh retry budget")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and skipped pairs; write nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--reports", default="reports", metavar="DIR", help="where the report goes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--order", choices=("plan", "promising", "informative"),
                        help="which pending trials run first (default: the study's [run] order): as planned, "
                             "highest predicted Δ first, or least measured and most uncertain first")


def main(args: argparse.Namespace) -> int:
    from opswap.study.expand import expand_study
    from opswap.study.execute import trial_state
    from opswap.study.assembly import check_budgets
    from opswap.study.load import load_study
    from opswap.study.schema import StudyError
    from opswap.study.stages import plan, run_study

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    extra = [("run.backend", args.backend)] if args.backend else []
    extra += [("run.address", args.address)] if args.address else []
    extra += [("run.order", args.order)] if args.order else []
    try:
        study = load_study(args.study, list(args.overrides) + extra)
        check_budgets(study)  # an assemble budget out of reach (run_study checks again, from a cache)
    except StudyError as err:
        raise StudyError(str(err).replace(" in the study:", " in the study; nothing was run:", 1)) from None
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
    if study.run.backend == "slurm":
        return _slurm(args, study, root)
    from opswap.study.execute import check_scheduler

    check_scheduler(study.run.backend, study.run.address)  # before the teacher trains for hours
    result = run_study(study, results_dir=args.results, workers=args.workers, retry_failed=args.retry_failed,
                       progress=not args.no_progress)
    if not args.no_report and result.summary_csv:
        _report(args, study, root)
    return 1 if result.summary.counts.get("failed") else 0


def _report(args: argparse.Namespace, study, root: Path) -> None:
    from opswap.report import write_report

    try:
        index = write_report(root, Path(args.reports) / study.name, report_context(study, root))
        log.info(f"report: {index}")
    except Exception as err:  # the trials are done; a report can be written later
        log.info(f"report failed ({type(err).__name__}: {err}); retry with: opswap report {study.path}")


def _slurm(args: argparse.Namespace, study, root: Path) -> int:
    """Submit the array of workers; with --wait, wait for it and write the summary and report."""
    from opswap.study.expand import expand_study
    from opswap.study.slurm import submit_study, wait_for
    from opswap.study.stages import plan, study_status, write_summary

    expansion = expand_study(study, root)
    log.info(plan(study, expansion, root, study.run.retries))
    submission = submit_study(study, args.results, array=args.workers)
    print(f"submitted job array {submission.array_id} ({len(submission.job_ids)} tasks"
          + (f", after prepare job {submission.prepare_id}" if submission.prepare_id else "") + ")")
    if not args.wait:
        print(f"follow it with: opswap status {study.path} --results {args.results}\n"
              f"report when done: opswap report {study.path} --results {args.results}")
        return 0
    for result in wait_for(submission):
        log.info(result.line() if hasattr(result, "line") else result)
    csv = write_summary(study, expansion, root)
    status = study_status(study, args.results)
    c = status.counts
    log.info(f"{study.name}: {c['done']} done, {c['failed']} failed, {c['pending'] + c['preempted']} left"
             + (f"; summary {csv}" if csv else ""))
    if not args.no_report and csv:
        _report(args, study, root)
    return 1 if c["failed"] else 0
