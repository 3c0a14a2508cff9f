"""`opswap export STUDY --to mlflow|tensorboard`: mirror a study's finished records into a tracking sink."""
from __future__ import annotations

import argparse
from pathlib import Path

from opswap.cli._common import add_study_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from opswap.track import SINKS

    add_study_arguments(parser)
    parser.add_argument("--to", required=True, choices=SINKS, help="the sink")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: the study's [run] tracking_uri, else DIR/mlruns)")
    parser.add_argument("--root", metavar="DIR", help="where file stores go (default: the --results root)")


def main(args: argparse.Namespace) -> int:
    from opswap.run.record import read_records
    from opswap.study.load import load_study
    from opswap.track import FINISHED, export_records

    study = load_study(args.study, args.overrides)
    root = Path(args.results) / study.name
    if not root.is_dir():
        raise FileNotFoundError(f"no results for study {study.name!r}: {str(root)!r} does not exist "
                                f"(run `opswap run {args.study}` first, or pass --results DIR)")
    records = [{k: v for k, v in r.items() if k != "_file"} for r in read_records(root)]
    uri = args.tracking_uri or study.run.tracking_uri
    count = export_records(records, args.to, root=args.root or args.results, study=study.name, tracking_uri=uri)
    skipped = sum(r.get("status") not in FINISHED for r in records)
    where = uri or str(Path(args.root or args.results) / ("mlruns" if args.to == "mlflow" else f"tensorboard/{study.name}"))
    print(f"{study.name}: {count} record{'s' * (count != 1)} exported to {args.to} ({where})"
          + (f"; {skipped} unfinished (pre-empted) left out" if skipped else ""))
    return 0
