"""Assembling a network under a budget by mixed-integer linear programming, LANA's phase 2
(Molchanov et al., "LANA: Latency Aware Network Acceleration", ECCV 2022).

One binary x[p, c] per allowed (position, op), `baseline` (the teacher's block) included;
Σ_c x[p, c] = 1 at every position; for every budget, low ≤ teacher − Σ_p base_p + Σ cost[p, c]·x[p, c]
≤ high; maximise Σ score[p, c]·x[p, c]. Solved by `scipy.optimize.milp` (HiGHS) with a zero
relative gap. The k best solutions come one after another: each further one must differ from
every earlier one in ≥ `min_diff` positions, by the no-good cut Σ_{(p, c) ∈ S} x[p, c] ≤ P − min_diff
for each earlier solution S (P positions). Costs are additive (`opswap.assemble.costs`).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from opswap.assemble.budget import BudgetError
from opswap.assemble.costs import BASELINE, CostTable
from opswap.assemble.problem import Problem, Solutions, build_problem
from opswap.assemble.scores import objective_scores

__all__ = ["assemble", "solve"]


def _variables(problem: Problem) -> list[tuple[int, str]]:
    return [(p, op) for p in problem.positions for op in problem.options[p]]


def solve(problem: Problem, weights: Mapping[tuple[int, str], float],
          cuts: Iterable[tuple[Mapping[int, str], int]] = (), *,
          time_limit: float | None = None) -> dict[int, str] | None:
    """The assignment maximising Σ weights within the budgets and the cuts, or None if there is none.

    A cut (S, d) asks for ≥ d positions different from assignment S; `baseline` weighs 0.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    pairs = _variables(problem)
    index = {pair: j for j, pair in enumerate(pairs)}
    n, positions = len(pairs), problem.positions
    c = -np.array([0.0 if op == BASELINE else float(weights[(p, op)]) for p, op in pairs])
    scale = np.abs(c).max()
    if scale > 0:
        c /= scale  # the solver's absolute tolerances then mean the same for any score unit
    rows, lows, highs = [], [], []
    for p in positions:  # one op per position
        row = np.zeros(n)
        row[[index[(p, op)] for op in problem.options[p]]] = 1.0
        rows.append(row), lows.append(1.0), highs.append(1.0)
    for metric, low, high in problem.limits:  # in fractions of the teacher's total: well scaled
        total = problem.costs.total[metric] or 1.0
        constant = total - sum(problem.costs.cost(p, BASELINE, metric) for p in positions)
        rows.append(np.array([problem.costs.cost(p, op, metric) / total for p, op in pairs]))
        lows.append((low - constant) / total), highs.append((high - constant) / total)
    for earlier, min_diff in cuts:
        row = np.zeros(n)
        row[[index[(p, earlier[p])] for p in positions]] = 1.0
        rows.append(row), lows.append(-np.inf), highs.append(len(positions) - min_diff)
    options = {"mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1),
                  constraints=LinearConstraint(np.array(rows), np.array(lows), np.array(highs)), options=options)
    if result.status == 2:  # infeasible
        return None
    if result.status != 0 or result.x is None:
        raise RuntimeError(f"scipy.optimize.milp did not finish: {result.message} (status {result.status})")
    chosen = {}
    for j in np.flatnonzero(result.x > 0.5):
        p, op = pairs[j]
        chosen[p] = op
    return chosen


def assemble(bank: Any, costs: CostTable, budget: Any, objective: str | Mapping | Callable = "replace1",
             k: int = 1, min_diff: int = 1, positions: Iterable[int] | None = None,
             scores: Mapping[tuple[int, str], float] | None = None, *, teacher_acc: float | None = None,
             heldout_loss: Mapping[tuple[int, str], float] | None = None, ops: Iterable[str] | None = None,
             time_limit: float | None = None, **context: Any) -> Solutions:
    """The k best assignments {position: op} within `budget` by summed score, each further one
    differing from all earlier ones in ≥ `min_diff` positions.

    `objective` names a registered objective (`replace1`, `distill_loss`, ...; see
    `opswap.assemble.scores`), or is a {(position, op): score} mapping or a callable; `scores`, when
    given, is used as is (higher better). `bank` may be None when scores are given (the solutions
    then need a bank only for `to_model`). Raises BudgetError, naming the cheapest reachable cost,
    when no assignment meets the budget; returns fewer than k solutions (`complete` False, `note`
    saying why) when no more exist.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (how many solutions) must be an integer >= 1, got {k!r}")
    if scores is not None:
        label = objective if isinstance(objective, str) else "scores"
        table = objective_scores(scores)[1]
    else:
        label, table = objective_scores(objective, bank, teacher_acc=teacher_acc, heldout_loss=heldout_loss,
                                        **context)
    problem = build_problem(costs, budget, bank=bank, scores=table, positions=positions, ops=ops,
                            objective=label, teacher_acc=teacher_acc)
    n_positions = len(problem.positions)
    if not isinstance(min_diff, int) or not 1 <= min_diff <= n_positions:
        raise ValueError(f"min_diff must be an integer in 1..{n_positions} (the number of positions), got {min_diff!r}")
    problem.check_reachable()
    start = time.perf_counter()
    found: list[dict[int, str]] = []
    rejected: list[dict[int, str]] = []  # within the solver's tolerance but not exactly within budget
    while len(found) < k:
        cuts = [(a, min_diff) for a in found] + [(a, 1) for a in rejected]
        assignment = solve(problem, problem.scores, cuts, time_limit=time_limit)
        if assignment is None:
            break
        (found if problem.feasible(assignment) else rejected).append(assignment)
    seconds = time.perf_counter() - start
    if not found:
        reach = problem.reachable()
        raise BudgetError("no assignment meets all of " + ", ".join(str(b) for b in problem.budgets)
                          + " at once (each alone can be met): "
                          + problem.describe_reach(reach, [b.metric for b in problem.budgets]), reach)
    note = "" if len(found) == k else (
        f"only {len(found)} of the {k} solutions asked for exist: no further assignment within the budget "
        f"differs from all earlier ones in >= {min_diff} position(s)")
    return Solutions([problem.solution(a, rank=i + 1) for i, a in enumerate(found)], requested=k, note=note,
                     budgets=problem.budgets, seconds=seconds)
