"""An assembly problem — which ops may go where, what each costs and scores, which budgets hold —
and its answer, a `Solution` (one op per position) that can be turned into a network.

Shared by the MILP (`opswap.assemble.milp`) and the baselines at the same budget
(`opswap.assemble.baselines`). `baseline` at a position is the teacher's own block: it costs the
teacher's block and scores 0; a bank's distilled `baseline` entry is never a candidate.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from torch import nn

from opswap.assemble.budget import Budget, BudgetError, format_cost, parse_budgets
from opswap.assemble.costs import BASELINE, COUNT_METRICS, CostTable, network_cost

__all__ = ["Problem", "Solution", "Solutions", "build_problem"]

_REL_TOL = 1e-9  # latency budgets: relative slack for floating-point sums


@dataclass
class Solution:
    """One op per position, with its predicted score and costs (absolute and fraction of the teacher)."""

    assignment: dict[int, str]
    score: float | None
    costs: dict[str, float]
    fractions: dict[str, float]
    objective: str = ""
    rank: int = 1
    label: str = "milp"
    predicted_acc: float | None = None  # teacher accuracy + score, for objective "replace1"

    @property
    def changed(self) -> dict[int, str]:
        """The positions where the teacher's block is replaced."""
        return {p: op for p, op in sorted(self.assignment.items()) if op != BASELINE}

    def to_model(self, teacher: nn.Module, bank: Any, *, check: bool = True) -> nn.Module:
        """A new network: the teacher's weights, with the bank's entry at every changed position."""
        from opswap.ops import create_op
        from opswap.substitution import swap

        if check:
            bank.check_teacher(teacher)
        modules = {}
        for position, op in self.changed.items():
            entry = bank.entry(position, op)
            module = create_op(entry.op, entry.c_in, entry.c_out, entry.stride)
            module.load_state_dict(entry.state_dict)
            modules[position] = module
        return swap(teacher, modules) if modules else copy.deepcopy(teacher)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "rank": self.rank, "objective": self.objective, "score": self.score,
                "predicted_acc": self.predicted_acc,
                "assignment": {str(p): op for p, op in sorted(self.assignment.items())},
                "changed": {str(p): op for p, op in self.changed.items()},
                "costs": dict(self.costs), "fractions": dict(self.fractions)}


class Solutions(list):
    """Solutions, best first; `complete` is False when fewer than `requested` exist, `note` says why."""

    def __init__(self, items: Iterable[Solution] = (), *, requested: int, note: str = "",
                 budgets: Iterable[Budget] = (), seconds: float = 0.0, details: Mapping[str, Any] | None = None):
        super().__init__(items)
        self.requested, self.note, self.budgets, self.seconds = requested, note, list(budgets), seconds
        self.details = dict(details or {})  # method-specific facts (how random picks were drawn, ...)

    @property
    def complete(self) -> bool:
        return len(self) >= self.requested

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "found": len(self), "complete": self.complete, "note": self.note,
                "budgets": [b.to_dict() for b in self.budgets], "seconds": self.seconds, "details": self.details,
                "solutions": [s.to_dict() for s in self]}


@dataclass
class Problem:
    """Positions with their allowed ops (`baseline` first), costs, budgets and (optional) scores."""

    costs: CostTable
    options: dict[int, list[str]]
    budgets: list[Budget]
    scores: dict[tuple[int, str], float] | None = None
    objective: str = ""
    teacher_acc: float | None = None
    limits: list[tuple[str, float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.limits = [(b.metric, *b.bounds(self.costs)) for b in self.budgets]

    @property
    def positions(self) -> list[int]:
        return sorted(self.options)

    def network_cost(self, assignment: Mapping[int, str]) -> dict[str, float]:
        return network_cost(self.costs, assignment)

    def violation(self, assignment: Mapping[int, str]) -> float:
        """Summed distance outside the budgets, each as a fraction of the teacher's total (0: within)."""
        cost = self.network_cost(assignment)
        out = 0.0
        for metric, low, high in self.limits:
            c, total = cost[metric], self.costs.total[metric] or 1.0
            slack = 0.0 if metric in COUNT_METRICS else _REL_TOL * total
            out += (max(0.0, c - high - slack) + max(0.0, low - slack - c)) / total
        return out

    def feasible(self, assignment: Mapping[int, str]) -> bool:
        return self.violation(assignment) == 0.0

    def score(self, assignment: Mapping[int, str]) -> float | None:
        if self.scores is None:
            return None
        return float(sum(self.scores[(p, op)] for p, op in assignment.items() if op != BASELINE))

    def solution(self, assignment: Mapping[int, str], *, rank: int = 1, label: str = "milp") -> Solution:
        assignment = {p: assignment[p] for p in self.positions}
        cost = self.network_cost(assignment)
        score = self.score(assignment)
        acc = (self.teacher_acc + score if self.objective == "replace1" and self.teacher_acc is not None
               and score is not None else None)
        return Solution(assignment, score, cost, {m: v / self.costs.total[m] for m, v in cost.items()},
                        self.objective, rank, label, acc)

    def reachable(self) -> dict[str, tuple[float, float]]:
        """{metric: (cheapest, dearest)} network cost over all assignments (per-position minima / maxima)."""
        out = {}
        for m in self.costs.metrics:
            lo = hi = self.costs.total[m] - sum(self.costs.cost(p, BASELINE, m) for p in self.positions)
            for p, ops in self.options.items():
                values = [self.costs.cost(p, op, m) for op in ops]
                lo, hi = lo + min(values), hi + max(values)
            out[m] = (lo, hi)
        return out

    def check_reachable(self) -> None:
        """Raise BudgetError when some budget, alone, is out of reach."""
        reach = self.reachable()
        bad = [(b, lim) for b, lim in zip(self.budgets, self.limits)
               if reach[lim[0]][0] > lim[2] * (1 + _REL_TOL) or reach[lim[0]][1] < lim[1] * (1 - _REL_TOL)]
        if bad:
            names = "; ".join(str(b) for b, _ in bad)
            raise BudgetError(f"no assignment meets {names}: {self.describe_reach(reach, [b.metric for b, _ in bad])}",
                              reach)

    def describe_reach(self, reach: Mapping[str, tuple[float, float]], metrics: Iterable[str]) -> str:
        parts = []
        for m in dict.fromkeys(metrics):
            lo, hi = reach[m]
            total = self.costs.total[m]
            parts.append(f"the cheapest reachable {m} is {format_cost(m, lo)} ({lo / total:.4g} of the teacher's "
                         f"{format_cost(m, total)}), the dearest {format_cost(m, hi)} ({hi / total:.4g})")
        where = ", ".join(str(p) for p in self.positions)
        return "; ".join(parts) + f" (positions {where}; ops {_describe_options(self.options)})"


def _describe_options(options: Mapping[int, list[str]]) -> str:
    ops = sorted({o for v in options.values() for o in v})
    return ", ".join(ops)


def _check_shapes(costs: CostTable, bank: Any, position: int) -> None:
    """The cost table and the bank must describe the same network at `position`."""
    info = costs.positions_info.get(position)
    if not info:
        return  # a hand-made table: nothing recorded to compare
    for e in bank:
        if e.position == position and (e.c_in, e.c_out, e.stride) != (info["c_in"], info["c_out"], info["stride"]):
            raise ValueError(f"the cost table was measured on another network: at position {position} it has "
                             f"{info['c_in']}→{info['c_out']} channels, stride {info['stride']}, the bank's "
                             f"{e.op} {e.c_in}→{e.c_out}, stride {e.stride}; measure costs for this bank's teacher")


def build_problem(costs: CostTable, budget: Any, *, bank: Any = None,
                  scores: Mapping[tuple[int, str], float] | None = None, positions: Iterable[int] | None = None,
                  ops: Iterable[str] | None = None, objective: str = "",
                  teacher_acc: float | None = None) -> Problem:
    """The ops allowed at each position: the cost table's, within the bank's entries, with a score.

    Pairs of the bank at the chosen positions must have costs; candidates must have scores when
    scores are given (a NaN score, a diverged pair, leaves the pair out).
    """
    from opswap.ops import parse_op

    budgets = parse_budgets(budget)
    wanted = costs.positions if positions is None else sorted({int(p) for p in positions})
    bad = sorted(set(wanted) - set(costs.positions))
    if bad:
        raise ValueError(f"positions {bad} have no costs; the cost table covers positions "
                         f"{', '.join(map(str, costs.positions))}")
    if not wanted:
        raise ValueError("no positions to assemble")
    allowed = None if ops is None else {parse_op(o).name for o in ops}
    options: dict[int, list[str]] = {}
    for p in wanted:
        cands = [o for o in costs.ops_at(p) if o != BASELINE]
        if bank is not None:
            _check_shapes(costs, bank, p)
            held = {o for q, o in bank.keys() if q == p and o != BASELINE}
            uncosted = sorted(held - set(cands))
            if uncosted:
                raise ValueError(f"the cost table has no costs for position {p}, ops {', '.join(uncosted)} of the "
                                 "bank; measure them with measure_costs(teacher, bank)")
            cands = [o for o in cands if o in held]
        if allowed is not None:
            cands = [o for o in cands if o in allowed]
        if scores is not None:
            missing = [o for o in cands if (p, o) not in scores]
            if missing:
                raise ValueError(f"objective {objective or 'scores'!r} has no score for position {p}, ops "
                                 f"{', '.join(missing)}; score them (replace1 needs replace1_accuracy run on the "
                                 f"bank), or leave them out with `ops` / `positions`")
            cands = [o for o in cands if math.isfinite(scores[(p, o)])]
        options[p] = [BASELINE, *cands]
    return Problem(costs, options, budgets, None if scores is None else dict(scores), objective, teacher_acc)
