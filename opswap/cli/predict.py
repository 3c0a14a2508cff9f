"""`opswap predict STUDY`: predicted Δ, with intervals, of the cells a partial study has not finished."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from opswap.cli._common import add_study_arguments
from opswap.cli._render import FORMATS, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--level", type=float, default=0.9, metavar="L",
                        help="coverage of the prediction intervals, in (0, 1)")
    parser.add_argument("--all", dest="all_cells", action="store_true",
                        help="every cell, not only the pending ones: a finished cell is predicted from the "
                             "others, beside its measured Δ (e.g. for `opswap assemble --objective predicted`)")


def _number(value, digits: int = 2):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def rows_of(table) -> list[dict]:
    """The forecast as plain rows (what every format prints)."""
    rows = []
    for _, r in table.iterrows():
        rows.append({"epochs": int(r["epochs"]), "variant": r["variant"] or None, "position": int(r["position"]),
                     "op": r["op"], "seeds_done": int(r["n"]), "measured_delta": _number(r["measured"]),
                     "predicted_delta": _number(r["predicted"]), "low": _number(r["low"]),
                     "high": _number(r["high"]), "predictor": r["predictor"], "cv": r["scheme"],
                     "cv_mae": _number(r["cv_mae"]), "trained_on": int(r["n_train"])})
    if rows and all(r["variant"] is None for r in rows):
        for r in rows:
            del r["variant"]
    return rows


def main(args: argparse.Namespace) -> int:
    from opswap.study.load import load_study
    from opswap.study.order import predict_study

    if not 0 < args.level < 1:
        raise ValueError(f"--level must lie in (0, 1), got {args.level}")
    study = load_study(args.study, args.overrides)
    if study.kind != "substitution":
        raise ValueError(f"{args.study}: opswap predict predicts the cells of a substitution study; "
                         f"this is a {study.kind} study")
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise ValueError(f"--results {str(results)!r} is a file, not a results folder")
    if not (results / study.name).is_dir():
        raise FileNotFoundError(f"no results for study {study.name!r}: {str(results / study.name)!r} does not "
                                f"exist, so there is nothing to predict from (run `opswap run {args.study}` "
                                "first, or pass --results DIR)")
    result = predict_study(study, results, level=args.level, all_cells=args.all_cells)
    rows = rows_of(result.forecast.table.sort_values(["epochs", "predicted"], ascending=[True, False]))
    if args.format == "table":
        f = result.forecast
        print(f"{study.name}: {result.pending_trials} pending trials in {len(f.table)} cells; "
              f"{result.finished_cells} cells finished (at least one seed)"
              + (f"; features {result.features}" if result.features else "; no features file (run the study's "
                 "features stage: opswap run)"))
        for _, c in f.choices.iterrows():
            print(f"  {c['epochs']} epochs, leave-one-{c['scheme']}-out CV on {c['n_train']} finished cells: best "
                  f"{c['label']} (MAE {c['cv_mae']:.2f} points); interval ±{c['half_width']:.2f}")
        print(f"  interval: {f.interval_method}; a partly measured cell is predicted from the other cells only")
        notes = sorted({r for r in f.table["note"] if r})
        for note in notes + f.notes:
            print(f"  note: {note}", file=sys.stderr)
        print()
        rows = [{k: f"{v:.2f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(render(rows, args.format))
    return 0
