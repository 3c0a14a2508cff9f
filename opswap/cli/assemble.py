"""`opswap assemble BANK`: the best networks within a budget from a LANA weight bank (phase 2, MILP).

Costs are measured once and kept beside the bank (`bank.costs.json`), reused while they cover the
bank and were measured on this device; teacher accuracy and held-out losses are computed as the
objective needs. A budget no assignment meets exits 2, naming the cheapest reachable cost, and
writes nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from opswap.assemble.scores import SCORE_COLUMNS, read_cell_scores, unscored_cells
from opswap.cli._render import FORMATS, render
from opswap.cli._common import check_data
from opswap.data import DATASETS

log = logging.getLogger("opswap")
_OBJECTIVES = ("replace1", "distill_loss", "train_distill_loss", "predicted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("bank", metavar="BANK", help="the weight bank (.safetensors) written by `opswap distill` or a study")
    p("--teacher", required=True, metavar="CKPT", help="the teacher checkpoint (safetensors) the bank was distilled from")
    p("--model", required=True, metavar="M", help="the teacher's model name, e.g. wrn-16-2")
    p("--dataset", required=True, choices=DATASETS, help="the dataset (for teacher accuracy and held-out losses)")
    p("--data", metavar="PATH", help="dataset root or file, where the dataset needs one")
    p("--budget", action="append", required=True, metavar="METRIC=VALUE",
      help="a budget, e.g. macs=0.5 (half the teacher's MACs), params=1.2M, latency=2.5ms, macs=0.3:0.5; "
           "repeat for several budgets that must all hold")
    p("--objective", choices=_OBJECTIVES, default="replace1",
      help="per-pair score to maximise: replace1 (replace-1 accuracy minus the teacher's), distill_loss "
           "(held-out normalised MSE, lower is better), train_distill_loss (the bank's own final loss), "
           "predicted (Δ accuracy per cell from --scores, e.g. `opswap predict STUDY --all --format csv`)")
    p("--scores", metavar="FILE", help="objective predicted: a CSV or JSON of cells (position, op, predicted_delta "
                                        "and/or measured_delta), as `opswap predict --format csv|json` writes")
    p("--score-column", choices=SCORE_COLUMNS, default="best",
      help="objective predicted: which Δ to use; best = measured_delta where measured, else predicted_delta")
    p("-k", type=int, default=3, help="how many solutions, best first")
    p("--min-diff", type=int, default=1, metavar="N", help="each further solution differs from all earlier "
                                                            "ones in at least N positions")
    p("--format", choices=FORMATS, default="table", help="output: an aligned table, CSV or JSON")
    p("--costs", metavar="FILE", help="the cost table (JSON); default: beside the bank, BANK.costs.json")
    p("--device", default="cpu", help="device the costs (latency) are measured on: cpu, cuda, cuda:1, ...")
    p("--latency-batch", type=int, default=256, metavar="B",
      help="throughput batch size of latency_batch (latency_b1 is batch 1); 0: do not time latency")
    p("--split", choices=("test", "val"), default="test",
      help="split of teacher accuracy and held-out losses; must be the one replace-1 accuracy was measured on")
    p("--val-fraction", type=float, default=0.0, help="hold out this fraction of train as 'val' (for --split val)")


def _rows(solutions, costs) -> list[dict]:
    from opswap.assemble import format_cost

    rows = []
    for s in solutions:
        row = {"rank": s.rank,
               "assignment": " ".join(f"{p}:{op}" for p, op in s.changed.items()) or "(the teacher)",
               "score": None if s.score is None else round(s.score, 4),
               "predicted_acc": None if s.predicted_acc is None else round(s.predicted_acc, 2)}
        for metric in costs.metrics:
            row[metric] = format_cost(metric, s.costs[metric]) if metric in ("latency_b1", "latency_batch") \
                else int(s.costs[metric])
            row[f"{metric}_frac"] = round(s.fractions[metric], 4)
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> int:
    from opswap.assemble import assemble, costs_path, load_or_measure_costs, parse_budgets
    from opswap.data import load_dataset
    from opswap.distill.apply import load_teacher
    from opswap.distill.bank import WeightBank
    from opswap.run.trial import check_safetensors

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if args.min_diff < 1:
        raise ValueError(f"--min-diff must be >= 1, got {args.min_diff}")
    budgets = parse_budgets(list(args.budget))  # a malformed budget is refused before any work
    if (args.objective == "predicted") != (args.scores is not None):
        raise ValueError("--objective predicted reads its scores from --scores FILE (and --scores needs "
                         "--objective predicted)")
    scores = read_cell_scores(args.scores, args.score_column, what="--scores") if args.scores else None
    from opswap.training import resolve_device

    resolve_device(args.device)  # a device this machine lacks is refused before any work
    if args.costs:
        _check_costs_file(Path(args.costs))
    check_safetensors(args.teacher, "--teacher")
    check_data(args.dataset, args.data, val_fraction=args.val_fraction)
    bank = WeightBank.load(args.bank)
    data = load_dataset(args.dataset, args.data, val_fraction=args.val_fraction)
    teacher = load_teacher(args.teacher, args.model, data.num_classes)
    bank.check_teacher(teacher)
    path = Path(args.costs) if args.costs else costs_path(args.bank)
    if args.latency_batch < 0:
        raise ValueError(f"--latency-batch must be >= 0 (0: no latency), got {args.latency_batch}")
    batch_sizes = (1, args.latency_batch) if args.latency_batch else ()
    costs, note = load_or_measure_costs(teacher, bank, path, device=args.device, save=False, model_name=args.model,
                                        batch_sizes=batch_sizes)
    log.info(f"costs: {note}")
    context = {}
    normalize = bank.settings.get("normalize", "standard")
    if args.objective == "replace1":
        from opswap.training import evaluate

        if all(e.replace1_acc is None for e in bank):
            raise ValueError(f"the bank {args.bank} has no replace-1 accuracies; measure them with "
                             "`opswap distill --replace1 --resume`, or use --objective distill_loss")
        context["teacher_acc"] = evaluate(teacher, data, args.split, normalize=normalize)["acc"]
        log.info(f"teacher accuracy ({args.split}): {context['teacher_acc']:.2f} %")
    elif args.objective == "distill_loss":
        from opswap.distill.heldout import heldout_distill_loss

        context["heldout_loss"] = heldout_distill_loss(teacher, bank, data, split=args.split, device=args.device)
    objective = unscored_cells(scores, bank.keys()) if scores is not None else args.objective
    solutions = assemble(bank, costs, budgets, objective, k=args.k, min_diff=args.min_diff, **context)
    if not note.startswith("reused"):
        costs.save(path)  # only once the budget is known to be reachable: a refused call writes nothing
        log.info(f"costs saved to {path}")
    totals = ", ".join(f"{m} {format_total(costs, m)}" for m in costs.metrics)
    log.info(f"teacher: {totals}; budget: {'; '.join(str(b) for b in budgets)}; objective {args.objective}")
    if solutions.note:
        log.info(solutions.note)
    if args.format == "json":
        print(json.dumps({"teacher": dict(costs.total), "device": costs.device_name, **solutions.to_dict()}, indent=2))
    else:
        print(render(_rows(solutions, costs), args.format))
    return 0


def _check_costs_file(path: Path) -> None:
    """--costs names a cost table or a new file: anything else is left alone, not overwritten."""
    from opswap.assemble import CostTable

    if path.is_dir():
        raise ValueError(f"--costs {str(path)!r} is a folder; give a file path, e.g. {str(path / 'costs.json')!r}")
    if path.exists():
        try:
            CostTable.load(path)
        except (ValueError, KeyError, TypeError, OSError) as err:
            why = f"no key {err}" if isinstance(err, KeyError) else str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"--costs {str(path)!r} exists and is not a cost table ({why}); it is left "
                             "as it is: give a new path, or the cost table's") from None
    elif not path.parent.is_dir():
        raise ValueError(f"--costs {str(path)!r}: the folder {str(path.parent)!r} does not exist")


def format_total(costs, metric: str) -> str:
    from opswap.assemble import format_cost

    return format_cost(metric, costs.total[metric])


