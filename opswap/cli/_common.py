"""Checks and options shared by several subcommands."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def check_writable_dir(path: str | os.PathLike, what: str, flag: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, not a folder for {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable; {what} cannot be written "
                         "there (choose another folder)")


def check_data(dataset: str, data: str | None, num_classes: int | None = None, *, neural: bool = True,
               flag: str = "--num-classes", val_fraction: float = 0.0) -> int:
    """The class count of `dataset` (or `num_classes`, which must match it), refusing, before any work,
    a dataset that cannot be read, whose images the models cannot take, or from which a validation
    share `val_fraction` > 0 would hold out nothing (every class a single training image)."""
    from opswap.data import check_dataset
    from opswap.models import check_image_size

    info = check_dataset(dataset, data)
    if info.num_classes < 2:
        raise ValueError(f"dataset {dataset!r} has {info.num_classes} class; a classifier needs at least 2")
    if val_fraction > 0 and info.largest_class == 1:
        raise ValueError(f"--val-fraction {val_fraction} holds out no image: every class of dataset {dataset!r} "
                         "has a single training image, which stays in training (leave --val-fraction out)")
    if neural:
        check_image_size(info.image_size, f"--data {data}" if data else f"dataset {dataset!r}")
    if num_classes is not None and num_classes != info.num_classes:
        raise ValueError(f"{flag} {num_classes}: dataset {dataset!r} has {info.num_classes} classes "
                         f"(leave {flag} out to take the dataset's)")
    return info.num_classes


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The study file, the results root and --set overrides."""
    parser.add_argument("study", help="the study file (TOML), e.g. studies/quickstart.toml")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="results root; records go to DIR/<study>/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key (dotted, TOML value), e.g. --set epochs=[1] --set train.lr=0.05")


def report_context(study, results_dir: Path):
    """What the report must know of a study: its expected trials, skipped pairs, reference, teacher."""
    from opswap.analysis.results import load_results
    from opswap.report import ReportContext
    from opswap.study.expand import expand_study

    path = Path(study.path)
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    teacher_dir = Path(results_dir) / "teacher"
    teacher = load_results(teacher_dir) if teacher_dir.is_dir() and any(teacher_dir.glob("*.json")) else None
    try:
        expansion = expand_study(study, results_dir)
    except ValueError as err:  # the report is still written for a study it cannot expand
        return ReportContext(study=study.name, note=f"expected trials unknown ({err})", study_file=str(path),
                             study_text=text, overrides=study.overrides, teacher=teacher)
    return ReportContext(study=study.name, expected=frozenset(t.trial_id for t in expansion.trials),
                         skipped=frozenset((s.position, s.op) for s in expansion.skipped),
                         reference=study.reference, note="", study_file=str(path), study_text=text,
                         overrides=study.overrides, teacher=teacher, correction=study.predict.correction)
