"""The `kind = "assemble"` study: LANA phase 2 (Molchanov et al., ECCV 2022) as ordinary trials.

Stages: teacher → weight bank over every position × candidate (the bank stage of `stages.py`) →
costs (measured once, kept beside the bank) → the plan: per budget, the MILP's k best
assignments for each objective and the baselines at the same budget (random feasible picks, a
greedy pick, one op everywhere it fits), each with its predicted score and costs and its
measured cost and accuracy before fine-tuning → every pick fine-tuned as a trial per seed and
epoch budget, next to the teacher fine-tuned the same way (the reference of "One Δ").

The plan is `results/<study>/assembly.json`, written once under a claim and reused while the
bank and the study's assembly settings are unchanged; trials are expanded from it, so their ids
are stable and a rerun resumes. Each trial's record gets the plan's predictions (`predicted_*`,
`score_*`, `measured_*`, `assembled_acc`) in its metrics.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from opswap.atomic import write_json
from opswap.study.schema import Problems, Study, _closest

__all__ = ["PLAN_FILE", "BASELINES", "budget_text", "assembly_settings", "bank_pairs", "unreachable_budgets", "check_budgets", "load_plan",
           "assembly_trials", "prepare_plan", "plan_trial_fn", "pick_key"]

log = logging.getLogger("opswap")

PLAN_FILE = "assembly.json"
BASELINES = ("random", "greedy", "uniform")
_SCHEMA = 1
_KEYS = ("budgets", "objective", "k", "min_diff", "random_picks", "baselines", "scores", "score_column")
_BANK_OBJECTIVES = ("replace1", "distill_loss", "train_distill_loss")  # scored from the bank
_OBJECTIVES = (*_BANK_OBJECTIVES, "predicted")  # predicted: Δ per cell from a substitution study's `scores`
# How costs and the picks' whole networks are timed (`opswap.assemble.measure_costs`).
COST_OPTIONS = {"batch_sizes": (1, 256), "min_run_time": 0.2}


# -- the study file's assembly keys ---------------------------------------------------------------

def _number(value: float) -> str:
    return format(value, ".12g")


def budget_text(budget: Any) -> str:
    """One budget (text, mapping or Budget list) as canonical text: `macs=0.5`, `macs=0.3:0.5,params=800K`."""
    from opswap.assemble.budget import parse_budgets

    parts = []
    for b in parse_budgets(budget):
        def end(v):
            if v is None:
                return ""
            if b.fraction:
                return _number(v)
            return f"{_number(v / 1e3)}K" if b.metric in ("params", "macs") else f"{_number(v)}ms"

        value = end(b.high) if b.low is None else f"{end(b.low)}:{end(b.high)}"
        parts.append(f"{b.metric}={value}")
    return ",".join(parts)


def assembly_settings(problems: Problems, f: Any, kind: str, positions: tuple[int, ...]) -> dict[str, Any]:
    """Check the assembly keys of a study file; the `Study` fields they give ({} for other kinds)."""
    from opswap.assemble.budget import BudgetError

    if kind != "assemble":
        for key in _KEYS:
            if getattr(f, key) is not None:
                problems.add(key, f'only an assemble study (kind = "assemble") takes {key}; this one is {kind!r}')
        return {}
    if f.budgets is None:
        problems.add("budgets", 'missing; an assemble study needs budgets, e.g. budgets = ["macs=0.5", "macs=0.7"]')
    items = [] if f.budgets is None else f.budgets if isinstance(f.budgets, list) else [f.budgets]
    budgets: list[str] = []
    for i, item in enumerate(items):
        where = f"budgets[{i}]" if isinstance(f.budgets, list) else "budgets"
        try:
            text = budget_text(item)
        except (BudgetError, ValueError, TypeError) as err:
            problems.add(where, str(err))
            continue
        if text in budgets:
            problems.add(where, f"{text!r} is listed twice; list each budget once")
            continue
        budgets.append(text)
    if f.budgets is not None and not items:
        problems.add("budgets", 'the list is empty; give at least one, e.g. budgets = ["macs=0.5"]')
    objectives = list(f.objective or ["replace1"])
    for name in objectives:
        if name not in _OBJECTIVES:
            problems.add("objective", f"{name!r} is not an objective.{_closest(name, _OBJECTIVES)} "
                                      f"Allowed: {', '.join(_OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        problems.add("objective", f"{objectives} repeats an objective; list each once")
    scores = _check_scores(problems, f, "predicted" in objectives, positions)
    k = 1 if f.k is None else f.k
    if k < 1:
        problems.add("k", f"{k!r} is not allowed; k (solutions per budget and objective) is an integer >= 1")
    min_diff = 1 if f.min_diff is None else f.min_diff
    if positions and not 1 <= min_diff <= len(positions):
        problems.add("min_diff", f"{min_diff!r} is not allowed; each further solution differs in 1.."
                                 f"{len(positions)} positions (the study's positions)")
    picks = 5 if f.random_picks is None else f.random_picks
    if picks < 0:
        problems.add("random_picks", f"{picks!r} is not allowed; random feasible picks per budget, an integer >= 0")
    baselines = list(BASELINES if f.baselines is None else f.baselines)
    for name in baselines:
        if name not in BASELINES:
            problems.add("baselines", f"{name!r} is not a baseline.{_closest(name, BASELINES)} "
                                      f"Allowed: {', '.join(BASELINES)}")
    if "random" in baselines and picks == 0 and f.baselines is not None:
        problems.add("random_picks", 'baselines include "random" but random_picks = 0; give random_picks >= 1')
    if f.init != ["lana"]:
        problems.add("init", f"{f.init!r} is not allowed; an assemble study builds every network from the "
                             'weight bank: init = "lana" (or leave init out)')
    if any(s != 0 for s in f.sparsity):
        problems.add("sparsity", f"{f.sparsity!r} is not allowed; an assemble study trains dense networks "
                                 "(sparsity = [0.0])")
    if f.methods or f.reference is not None:
        problems.add("methods", "an assemble study has no [[methods]] or reference; it compares pick methods")
    return {"budgets": tuple(budgets), "objectives": tuple(dict.fromkeys(objectives)), "k": k,
            "min_diff": min_diff, "random_picks": picks if "random" in baselines else 0,
            "baselines": tuple(b for b in BASELINES if b in baselines and (b != "random" or picks > 0)),
            "scores": scores, "score_column": f.score_column or "best"}


def _check_scores(problems: Problems, f: Any, predicted: bool, positions: tuple[int, ...]) -> str | None:
    """The `scores` file of objective "predicted", read once here so that a bad one is refused before any work."""
    from opswap.assemble.scores import SCORE_COLUMNS, read_cell_scores

    column = f.score_column or "best"
    if column not in SCORE_COLUMNS:
        problems.add("score_column", f"{column!r} is not a score column.{_closest(column, SCORE_COLUMNS)} "
                                     f"Allowed: {', '.join(SCORE_COLUMNS)}")
    if not predicted:
        for key in ("scores", "score_column"):
            if getattr(f, key) is not None:
                problems.add(key, f'only objective "predicted" reads {key}; add "predicted" to objective, '
                                  f"or leave {key} out")
        return None
    if f.scores is None:
        problems.add("scores", 'objective "predicted" needs the Δ of each cell: scores = "scores.csv", written by '
                               "`opswap predict STUDY.toml --all --format csv > scores.csv`")
        return None
    if problems.has("score_column"):
        return f.scores
    try:
        table = read_cell_scores(Path(f.scores).expanduser(), column, what="the scores file")
    except ValueError as err:
        problems.add("scores", f"{err} (relative paths are read from the current directory {str(Path.cwd())!r})"
                     if not Path(f.scores).expanduser().is_file() else str(err))
        return f.scores
    if positions and not any(p in positions and math.isfinite(v) for (p, _), v in table.items()):
        problems.add("scores", f"the scores file {f.scores!r} scores no cell at the study's positions "
                               f"({', '.join(map(str, positions))}); it scores positions "
                               f"{', '.join(map(str, sorted({p for p, _ in table}))) or 'none'}")
    return f.scores


def bank_pairs(study: Study) -> list[tuple[int, str]]:
    """Every (position, candidate) of the study that fits: the bank the assembly chooses from."""
    from opswap.run.spec import model_positions
    from opswap.substitution import valid_ops

    model, _ = model_positions(study.model, study.num_classes)
    names = [c.name for c in study.candidates if c.family != "baseline"]
    return sorted((p, op) for p in study.positions for op in valid_ops(model, p, names))


def unreachable_budgets(study: Study) -> list[tuple[int, str]]:
    """(index, reason) of each budget whose parameter or MAC bound no assignment of the study meets.

    Counted on the untrained model (params and MACs do not depend on weights), so a budget out of
    reach is refused before teacher and bank, not after; latency bounds are measured with the plan.
    Pairs the plan later leaves out (a diverged bank entry) only narrow the range, so nothing
    refused here could have been met.
    """
    if study.kind != "assemble" or not study.positions:
        return []
    return list(_unreachable(study.model, study.num_classes, tuple(study.positions), tuple(bank_pairs(study)),
                             tuple(study.budgets)))


@functools.lru_cache(maxsize=4)
def _unreachable(model_name: str, num_classes: int, positions: tuple[int, ...], pairs: tuple[tuple[int, str], ...],
                 budgets: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    from opswap.assemble.budget import BudgetError, parse_budgets
    from opswap.assemble.costs import COUNT_METRICS, measure_costs
    from opswap.assemble.problem import build_problem
    from opswap.run.spec import model_positions

    counted = [(i, bounds) for i, text in enumerate(budgets)
               if (bounds := [b for b in parse_budgets(text) if b.metric in COUNT_METRICS])]
    if not counted:
        return ()
    model, _ = model_positions(model_name, num_classes)
    costs = measure_costs(model, list(pairs) or [(p, "baseline") for p in positions], batch_sizes=())
    out = []
    for i, bounds in counted:
        try:
            build_problem(costs, bounds, positions=positions).check_reachable()
        except BudgetError as err:
            out.append((i, str(err)))
    return tuple(out)


def check_budgets(study: Study) -> None:
    """Raise StudyError naming each budget of an assemble study that no assignment meets (see
    `unreachable_budgets`); run before any work by `run_study`, `opswap run --dry-run` and the SLURM
    submission, not by every load (status and report need not count costs)."""
    from opswap.study.schema import Problems

    if study.kind != "assemble":
        return
    problems = Problems(study.path)
    for i, reason in unreachable_budgets(study):
        problems.add(f"budgets[{i}]", reason)
    problems.raise_if_any()


# -- the plan ----------------------------------------------------------------------------------

def _plan_settings(study: Study) -> dict[str, Any]:
    settings = {"budgets": list(study.budgets), "objectives": list(study.objectives), "k": study.k,
                "min_diff": study.min_diff, "random_picks": study.random_picks, "baselines": list(study.baselines),
                "positions": list(study.positions), "pairs": [list(p) for p in bank_pairs(study)]}
    if study.scores is not None:  # a changed scores file is a new plan
        settings["scores"] = {"column": study.score_column, "sha256": _file_digest(study.scores)}
    return settings


def _file_digest(path: str) -> str | None:
    from opswap.run.spec import file_identity

    try:
        return file_identity("scores", path)
    except OSError:
        return None


def _bank_key(results_dir: Path) -> str | None:
    path = Path(results_dir) / "bank.key"
    return path.read_text().strip() if path.is_file() else None


def load_plan(study: Study, results_dir: str | Path | None) -> dict | None:
    """The study's plan when it exists and belongs to the current bank and assembly settings."""
    if results_dir is None:
        return None
    path = Path(results_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if plan.get("schema") != _SCHEMA or plan.get("settings") != _plan_settings(study) \
            or plan.get("bank_key") != _bank_key(Path(results_dir)):
        return None
    return plan


def pick_key(budget: str, picked_by: str, objective: str | None, assignment: Iterable) -> str:
    """The plan's key of one pick: budget, method, objective and the replaced positions."""
    changed = ",".join(f"{int(p)}:{op}" for p, op in sorted((int(p), op) for p, op in assignment))
    return f"{budget}|{picked_by}|{objective or '-'}|{changed}"


def assembly_trials(study: Study, results_dir: str | Path | None, *, base: Mapping[str, Any], teacher: str | None,
                    distill: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(settings, label) of every trial: the teacher fine-tuned, and each pick of the plan (if any yet)."""
    import itertools

    plan = load_plan(study, results_dir)
    out = []
    for seed, epochs, fraction in itertools.product(study.seeds, study.epochs, study.data_fraction):
        common = {**base, "seed": seed, "epochs": epochs, "data_fraction": fraction, "teacher": teacher}
        suffix = f"seed={seed} epochs={epochs}" + (f" data={fraction:g}" if fraction < 1 else "")
        out.append(({**common, "position": None, "op": "baseline", "init": "teacher"},
                    f"teacher fine-tuned {suffix}"))
        if plan is None:
            continue
        for budget in study.budgets:
            for pick in plan["budgets"][budget]["picks"]:
                settings = {**common, "position": None, "op": "baseline", "init": "lana", "distill": dict(distill),
                            "assignment": pick["assignment"], "picked_by": pick["picked_by"], "budget": budget,
                            "objective": pick["objective"]}
                by = pick["picked_by"] + (f"/{pick['objective']}" if pick["objective"] else "")
                name = pick["label"] if pick["picked_by"] == "uniform" else by
                out.append((settings, f"{budget} {name} #{pick['rank']} {suffix}"))
    return out


def prepare_plan(study: Study, teacher: str, bank: str, results_dir: str | Path, *, device: str = "cpu",
                 stale_after: float = 120.0) -> Path:
    """Stage 3: costs beside the bank, then the picks per budget with predictions (reused when current)."""
    from opswap.study.claims import build_once

    results_dir = Path(results_dir)
    path = results_dir / PLAN_FILE
    build_once(results_dir / "claims", "assembly-plan", lambda: load_plan(study, results_dir) is not None,
               lambda: write_json(path, _compute_plan(study, teacher, bank, results_dir, device)),
               stale_after=stale_after, doing="computes the assembly plan")
    return path


def _compute_plan(study: Study, teacher_path: str, bank_path: str, results_dir: Path, device: str) -> dict:
    import torch

    from opswap.assemble import (BudgetError, costs_path, greedy_assignment, load_or_measure_costs, measured_cost,
                                 objective_scores, random_assignments, uniform_assignments)
    from opswap.assemble import assemble as solve_milp
    from opswap.assemble.scores import read_cell_scores, unscored_cells
    from opswap.data import load_dataset
    from opswap.distill.apply import load_teacher
    from opswap.distill.bank import WeightBank
    from opswap.distill.heldout import heldout_distill_loss
    from opswap.run.trial import assembled_model
    from opswap.training import evaluate

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    teacher = load_teacher(teacher_path, study.model, study.num_classes)
    bank = WeightBank.load(bank_path)
    data = load_dataset(study.dataset, study.data)
    normalize = bank.settings.get("normalize", "standard")
    costs, note = load_or_measure_costs(teacher, bank, costs_path(bank_path), device=device, model_name=study.model,
                                        **COST_OPTIONS)
    log.info(f"assembly: costs {note}")
    # Scores on the split replace-1 accuracy was measured on (the bank stage: test).
    teacher_acc = evaluate(teacher, data, "test", normalize=normalize)["acc"]
    heldout = heldout_distill_loss(teacher, bank, data, split="test", device=device)
    context = {"teacher_acc": teacher_acc, "heldout_loss": heldout}
    tables = {name: objective_scores(name, bank, **context)[1] for name in _BANK_OBJECTIVES}
    if study.scores is not None:
        cells = read_cell_scores(Path(study.scores).expanduser(), study.score_column, what="the scores file")
        tables["predicted"] = objective_scores(unscored_cells(cells, bank.keys()))[1]
    first = tables[study.objectives[0]]
    measured: dict[str, dict] = {}

    def facts(solution, picked_by: str, objective: str | None, budget: str) -> dict:
        changed = sorted(solution.changed.items())
        key = pick_key(budget, picked_by, objective, changed)
        text = ",".join(f"{p}:{op}" for p, op in changed)
        if text not in measured:  # one measurement per distinct network
            model = assembled_model(teacher, bank, changed)
            acc = evaluate(model, data, "test", normalize=normalize)["acc"]
            measured[text] = {"cost": measured_cost(model, costs), "acc": acc}
        cost = measured[text]["cost"]
        scores = {name: _sum(table, changed) for name, table in tables.items()}
        return {"key": key, "budget": budget, "picked_by": picked_by, "objective": objective,
                "rank": solution.rank, "label": solution.label, "assignment": [[p, op] for p, op in changed],
                "scores": scores,
                "predicted_acc": None if scores["replace1"] is None else teacher_acc + scores["replace1"],
                "predicted": dict(solution.costs), "predicted_fraction": dict(solution.fractions),
                "measured": cost, "measured_fraction": {m: cost[m] / costs.total[m] for m in costs.metrics if m in cost},
                "assembled_acc": measured[text]["acc"]}

    budgets = {}
    for i, budget in enumerate(study.budgets):
        picks, notes = [], []
        try:
            for objective in study.objectives:
                found = solve_milp(bank, costs, budget, objective, k=study.k, min_diff=study.min_diff,
                                   scores=tables[objective])
                picks += [facts(s, "milp", objective, budget) for s in found]
                notes += [f"milp/{objective}: {found.note}"] if found.note else []
                if "greedy" in study.baselines:
                    picks.append(facts(greedy_assignment(tables[objective], costs, budget, bank=bank,
                                                         objective=objective), "greedy", objective, budget))
            if study.random_picks:
                drawn = random_assignments(costs, budget, study.random_picks, seed=i, bank=bank, scores=first)
                picks += [facts(s, "random", None, budget) for s in drawn]
                notes += [f"random ({drawn.details.get('method')}): {drawn.note}"] if drawn.note else []
            if "uniform" in study.baselines:
                uniform = uniform_assignments(costs, budget, bank=bank, scores=first)
                picks += [facts(s, "uniform", None, budget) for s in uniform]
                notes += [f"uniform: {uniform.note}"] if uniform.note else []
        except BudgetError as err:
            raise ValueError(f"study {study.name!r}, budget {budget!r}: {err}") from None
        budgets[budget] = {"picks": picks, "notes": notes}
        log.info(f"assembly: {budget}: {len(picks)} picks" + (f" ({'; '.join(notes)})" if notes else ""))
    log.info(f"assembly: plan of {sum(len(b['picks']) for b in budgets.values())} picks, "
             f"{len(measured)} distinct networks, in {time.perf_counter() - t0:.0f} s")
    return {"schema": _SCHEMA, "settings": _plan_settings(study), "bank_key": _bank_key(results_dir),
            "teacher_acc": teacher_acc, "teacher_costs": dict(costs.total), "costs_file": str(costs_path(bank_path)),
            "costs_note": note, "device": costs.device, "device_name": costs.device_name, "budgets": budgets}


def _sum(table: Mapping[tuple[int, str], float], changed: Iterable[tuple[int, str]]) -> float | None:
    values = [table.get((p, op)) for p, op in changed]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(sum(values))


# -- trials ------------------------------------------------------------------------------------

def plan_trial_fn(plan_file: str | Path, trial_fn=None):
    """The trial function of an assemble study: the usual one, with the plan's predictions added."""
    return functools.partial(_assembly_trial, plan_file=str(plan_file), inner=trial_fn)


def _assembly_trial(spec, *, plan_file: str, inner=None, **kwargs) -> dict:
    from opswap.run.trial import run_trial

    fn = inner or run_trial
    record = fn(spec, **_accepted(fn, kwargs))
    if getattr(spec, "assignment", None) is not None and isinstance(record, dict):
        plan = json.loads(Path(plan_file).read_text())
        pick = _find_pick(plan, spec)
        if pick is not None:
            record.setdefault("metrics", {})
            record["metrics"] = {**(record["metrics"] or {}), **pick_metrics(pick, plan)}
    return record


def _accepted(fn, kwargs: dict) -> dict:
    """The keyword arguments `fn` takes (the runner offers optional ones such as attempt, checkpoint_path)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _find_pick(plan: dict, spec) -> dict | None:
    key = pick_key(spec.budget, spec.picked_by, spec.objective, spec.assignment)
    for pick in plan["budgets"].get(spec.budget, {}).get("picks", []):
        if pick["key"] == key:
            return pick
    return None


def pick_metrics(pick: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """A pick's predictions and measurements as flat record metrics."""
    objective = pick["objective"] or plan["settings"]["objectives"][0]
    out: dict[str, Any] = {"pick_rank": pick["rank"], "pick_label": pick["label"],
                           "predicted_score": pick["scores"].get(objective), "predicted_acc": pick["predicted_acc"],
                           "assembled_acc": pick["assembled_acc"], "teacher_acc": plan["teacher_acc"],
                           "replaced_positions": len(pick["assignment"])}
    out.update({f"score_{k}": v for k, v in pick["scores"].items()})
    out.update({f"predicted_{k}": v for k, v in pick["predicted"].items()})
    out.update({f"predicted_{k}_fraction": v for k, v in pick["predicted_fraction"].items()})
    out.update({f"measured_{k}": v for k, v in pick["measured"].items()})
    out.update({f"measured_{k}_fraction": v for k, v in pick["measured_fraction"].items()})
    out.update({f"teacher_{k}": v for k, v in plan["teacher_costs"].items() if not k.endswith("_iqr")})
    return out

