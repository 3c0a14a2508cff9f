"""Baselines for an assembled network at the same budget: random feasible picks, a greedy pick
and "one op everywhere" — what the MILP of LANA phase 2 (Molchanov et al., ECCV 2022) has to beat.

- `random_assignments`: n distinct assignments drawn uniformly from the feasible ones. When the
  space is small (≤ 200,000 assignments) all feasible ones are enumerated and n sampled without
  replacement; otherwise uniform draws are rejected until n distinct feasible ones are found. If
  the budget is so tight that rejection fails (under one feasible draw in 2,000·n: a MACs budget of
  half the teacher on WRN-40-2), the rest come from a random walk on the feasible set (one op
  changed per step, moves outside the budget refused), started at the MILP's answer for random
  scores: uniform in the limit, approximately so for n picks; `details["method"]` says which.
- `greedy_assignment`: starts from the teacher and works *downward*: while over budget, it takes
  the single-position swap with the best score change per unit of budget violation removed
  (violation: the summed distance outside the budgets, as fractions of the teacher's totals) —
  a swap at two positions at once only when no single one helps (two budgets pulling apart);
  once within budget, it takes the best score-raising swap that stays within, until none is left.
- `uniform_assignments`: for each op, the op at every position where it fits, baseline elsewhere.
  If that is outside the budget, the op goes to as many positions as fit: positions are taken in
  order of the op's cost saving there (largest saving first, savings summed over the budgeted
  metrics as fractions of the teacher) and the longest prefix of that order within budget is kept.
  An op with no such prefix is skipped (`details["skipped"]` says why).
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Mapping

import numpy as np

from opswap.assemble.budget import BudgetError
from opswap.assemble.costs import BASELINE, COUNT_METRICS, CostTable
from opswap.assemble.milp import solve
from opswap.assemble.problem import _REL_TOL, Problem, Solution, Solutions, build_problem

__all__ = ["random_assignments", "greedy_assignment", "uniform_assignments"]

_ENUMERATE_UP_TO = 200_000
_DRAWS_PER_PICK = 2_000
_CHUNK = 20_000


def _feasible_mask(problem: Problem, idx: np.ndarray) -> np.ndarray:
    """Which rows of `idx` (one column per position: the index into its options) are within budget."""
    ok = np.ones(len(idx), dtype=bool)
    for metric, low, high in problem.limits:
        total = problem.costs.total[metric]
        value = np.full(len(idx), total, dtype=np.float64)
        for j, p in enumerate(problem.positions):
            row = np.array([problem.costs.cost(p, op, metric) for op in problem.options[p]], dtype=np.float64)
            value += row[idx[:, j]] - problem.costs.cost(p, BASELINE, metric)
        slack = 0.0 if metric in COUNT_METRICS else _REL_TOL * total
        ok &= (value >= low - slack) & (value <= high + slack)
    return ok


def _assignment(problem: Problem, row: Iterable[int]) -> dict[int, str]:
    return {p: problem.options[p][i] for p, i in zip(problem.positions, row)}


def random_assignments(costs: CostTable, budget: Any, n: int, seed: int = 0, *, positions: Iterable[int] | None = None,
                       ops: Iterable[str] | None = None, bank: Any = None,
                       scores: Mapping[tuple[int, str], float] | None = None) -> Solutions:
    """n distinct random feasible assignments (fewer when fewer exist; `complete` then False)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    problem = build_problem(costs, budget, bank=bank, scores=scores, positions=positions, ops=ops)
    problem.check_reachable()
    rng = np.random.default_rng(seed)
    sizes = [len(problem.options[p]) for p in problem.positions]
    space = math.prod(sizes)
    start = time.perf_counter()
    picks: list[tuple[int, ...]] = []
    if space <= _ENUMERATE_UP_TO:
        method = "enumerated"
        grid = np.indices(sizes).reshape(len(sizes), -1).T
        feasible = grid[_feasible_mask(problem, grid)]
        chosen = rng.choice(len(feasible), size=min(n, len(feasible)), replace=False)
        picks = [tuple(int(v) for v in feasible[i]) for i in chosen]
    else:
        method, seen, draws = "rejection", set(), 0
        while len(picks) < n and draws < _DRAWS_PER_PICK * n:
            idx = np.stack([rng.integers(0, s, _CHUNK) for s in sizes], axis=1)
            draws += _CHUNK
            for row in idx[_feasible_mask(problem, idx)]:
                key = tuple(int(v) for v in row)
                if key not in seen and len(picks) < n:
                    seen.add(key)
                    picks.append(key)
        if len(picks) < n:
            method = f"rejection for {len(picks)}, then a random walk"
            picks += _walk(problem, n - len(picks), set(picks), rng)
    if not picks:
        raise BudgetError("no assignment meets all of " + ", ".join(str(b) for b in problem.budgets) + " at once: "
                          + problem.describe_reach(problem.reachable(), [b.metric for b in problem.budgets]),
                          problem.reachable())
    out = [problem.solution(_assignment(problem, r), rank=i + 1, label="random") for i, r in enumerate(picks)]
    note = "" if len(out) == n else f"only {len(out)} distinct assignments within the budget exist; {n} were asked for"
    return Solutions(out, requested=n, note=note, budgets=problem.budgets, seconds=time.perf_counter() - start,
                     details={"method": method, "seed": seed, "space": space})


def greedy_assignment(scores: Mapping[tuple[int, str], float], costs: CostTable, budget: Any, *,
                      positions: Iterable[int] | None = None, ops: Iterable[str] | None = None,
                      bank: Any = None, objective: str = "scores") -> Solution:
    """From the teacher downward: best score per unit of violation removed, then best feasible gains."""
    from opswap.assemble.scores import objective_scores

    table = objective_scores(scores)[1]
    problem = build_problem(costs, budget, bank=bank, scores=table, positions=positions, ops=ops,
                            objective=objective)
    problem.check_reachable()
    current = {p: BASELINE for p in problem.positions}

    def moves(a: dict[int, str]):
        for p in problem.positions:
            for op in problem.options[p]:
                if op != a[p]:
                    yield {**a, p: op}

    def pair_moves(a: dict[int, str]):
        for b in moves(a):
            for c in moves(b):
                if sum(c[p] != a[p] for p in a) == 2:
                    yield c

    violation = problem.violation(current)
    while violation > 0:
        best, best_key = None, None
        for candidates in (moves, pair_moves):  # two positions at once only when no single swap helps
            for b in candidates(current):
                removed = violation - problem.violation(b)
                if removed <= 0:
                    continue
                key = ((problem.score(b) - problem.score(current)) / removed, removed)
                if best_key is None or key > best_key:
                    best, best_key = b, key
            if best is not None:
                break
        if best is None:
            raise BudgetError("the greedy baseline found no swap that brings the network closer to "
                              + ", ".join(str(b) for b in problem.budgets) + " (the budgets may conflict): "
                              + problem.describe_reach(problem.reachable(), [b.metric for b in problem.budgets]),
                              problem.reachable())
        current, violation = best, problem.violation(best)
    while True:
        gains = [(problem.score(b) - problem.score(current), b) for b in moves(current) if problem.feasible(b)]
        gain, best = max(gains, key=lambda t: t[0], default=(0.0, None))
        if best is None or gain <= 0:
            break
        current = best
    return problem.solution(current, label="greedy")


def uniform_assignments(costs: CostTable, budget: Any, *, positions: Iterable[int] | None = None,
                        ops: Iterable[str] | None = None, bank: Any = None,
                        scores: Mapping[tuple[int, str], float] | None = None) -> Solutions:
    """For each op: that op everywhere it fits (or at as many positions as the budget allows)."""
    table = None
    if scores is not None:
        from opswap.assemble.scores import objective_scores

        table = objective_scores(scores)[1]
    problem = build_problem(costs, budget, bank=bank, scores=table, positions=positions, ops=ops)
    start = time.perf_counter()
    names = sorted({op for p in problem.positions for op in problem.options[p] if op != BASELINE})
    out, skipped, placed = [], {}, {}
    for op in names:
        fits = [p for p in problem.positions if op in problem.options[p]]

        def saving(p: int) -> float:
            return sum((problem.costs.cost(p, op, m) - problem.costs.cost(p, BASELINE, m)) / problem.costs.total[m]
                       for m, _, _ in problem.limits)

        order = sorted(fits, key=lambda p: (saving(p), p))
        for m in range(len(order), 0, -1):
            a = {p: BASELINE for p in problem.positions} | {p: op for p in order[:m]}
            if problem.feasible(a):
                out.append(problem.solution(a, rank=len(out) + 1, label=f"uniform:{op}"))
                placed[op] = sorted(order[:m])
                break
        else:
            skipped[op] = (f"{op} at any number of its positions {fits} (largest saving first) is outside "
                           + ", ".join(str(b) for b in problem.budgets))
    note = f"skipped: {'; '.join(skipped.values())}" if skipped else ""
    return Solutions(out, requested=len(names), note=note, budgets=problem.budgets,
                     seconds=time.perf_counter() - start, details={"placed": placed, "skipped": skipped})


def _walk(problem: Problem, n: int, seen: set[tuple[int, ...]], rng: np.random.Generator) -> list[tuple[int, ...]]:
    """n new distinct feasible assignments from a Metropolis walk on the feasible set.

    It starts at the MILP's answer for random scores; a step proposes one position's op uniformly
    and moves only if the result is within budget — a symmetric proposal, so the walk's stationary
    distribution is uniform over the feasible assignments it can reach. One pick per 10·P steps.
    """
    weights = {(p, op): float(rng.normal()) for p in problem.positions for op in problem.options[p]}
    start = solve(problem, weights)
    if start is None or not problem.feasible(start):
        return []
    positions = problem.positions
    current = [problem.options[p].index(start[p]) for p in positions]
    thin, out, idle = 10 * len(positions), [], 0
    while len(out) < n and idle < 20 * thin * n:
        for _ in range(thin):
            j = int(rng.integers(len(positions)))
            proposal = current.copy()
            proposal[j] = int(rng.integers(len(problem.options[positions[j]])))
            if problem.feasible(_assignment(problem, proposal)):
                current = proposal
        key = tuple(current)
        if key in seen:
            idle += thin
            continue
        seen.add(key)
        out.append(key)
    return out
