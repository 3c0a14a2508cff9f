"""`opswap report STUDY`: write a study's HTML and Markdown report (also for a partial study)."""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from opswap.cli._common import check_writable_dir, report_context
from opswap.report import ReportContext, write_report
from opswap.run.record import record_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study file (TOML) or a results directory of trial records")
    parser.add_argument("--results", default="results", metavar="DIR", help="results root holding <study>/")
    parser.add_argument("--reports", default="reports", metavar="DIR",
                        help="reports root; the report goes to DIR/<study>/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides the study was run with (opswap run --set ...), so the "
                             "report knows its trials")


def _context(path: Path, results: Path, overrides: list[str]) -> tuple[Path, ReportContext]:
    """The results folder and report context of a study file (or of a bare results folder)."""
    if path.is_dir():
        # refuses a results root that holds studies rather than records
        if not record_files(path) and not any((path / d).is_dir() for d in ("claims", "logs", "teacher")):
            raise ValueError(f"{str(path)!r} holds no trial records (<trial id>.json) and is no study's results "
                             "folder, so its report would be empty: give a study's results folder "
                             "(results/<study>) or its study file (.toml)")
        return path, ReportContext(study=path.resolve().name)
    if not path.is_file():
        what = "no such file or folder" if not path.exists() else "not a file or folder"
        raise FileNotFoundError(f"{str(path)!r}: {what}; give a study file (.toml) or a study's results folder "
                                "(results/<study>)")
    from opswap.study.load import load_study
    from opswap.study.schema import StudyError

    try:
        study = load_study(path, overrides)
    except StudyError as err:
        # A study that no longer validates (a dataset moved, say) still gets its report.
        try:
            name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            raise err from None
        if not isinstance(name, str) or not name:
            raise err from None
        note = "expected trials unknown (the study file does not validate: " + str(err).splitlines()[-1].strip() + ")"
        return results / name, ReportContext(study=name, note=note, study_file=str(path),
                                             study_text=path.read_text(encoding="utf-8"), overrides=tuple(overrides))
    return results / study.name, report_context(study, results / study.name)


def main(args: argparse.Namespace) -> int:
    path = Path(args.study)
    results_dir, context = _context(path, Path(args.results), list(args.set))
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results for study {context.study!r}: {str(results_dir)!r} does not exist "
                                f"(run `opswap run {path}` first, or pass --results DIR)")
    target = Path(args.reports) / context.study
    check_writable_dir(target, "the report", "--reports")
    index = write_report(results_dir, target, context)
    print(f"report: {index}\n        {index.with_name('README.md')}")
    return 0
