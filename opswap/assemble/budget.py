"""Budgets for assembling a network: a bound or a [min, max] range on params, MACs or latency,
absolute or as a fraction of the teacher's whole-network total, and their text form for the CLI.

    macs=0.5            at most half the teacher's MACs
    macs=0.3:0.5        between 30 % and 50 % of them (`:0.5`, `0.3:` leave one end open)
    params=1.2M         at most 1.2 million parameters (units K, M, G)
    latency=2.5ms       batch-1 latency at most 2.5 ms (units us, ms, s); latency_batch: throughput batch
    macs=50%            a fraction written as a percentage
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from opswap.assemble.costs import COUNT_METRICS, METRICS, CostTable

__all__ = ["Budget", "BudgetError", "parse_budget", "parse_budgets", "format_cost"]

_ALIASES = {"params": "params", "macs": "macs", "latency": "latency_b1", "latency_b1": "latency_b1",
            "latency_batch": "latency_batch"}
_COUNT_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9}
_TIME_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_ALLOWED = ("budgets look like METRIC=VALUE or METRIC=MIN:MAX, METRIC one of params, macs, latency "
            "(= latency_b1, batch 1), latency_batch (the throughput batch); VALUE a fraction of the "
            "teacher's total (0.5, 50%) or absolute with a unit: params/macs K, M, G (1.2M), latency us, "
            "ms, s (2.5ms). Several budgets: macs=0.5,params=0.6")
_MAX_BARE_FRACTION = 10.0  # a bare number above this is surely an absolute value without its unit


class BudgetError(ValueError):
    """A budget no assignment meets; `reachable` holds {metric: (cheapest, dearest)} absolute costs."""

    def __init__(self, message: str, reachable: Mapping[str, tuple[float, float]] | None = None):
        super().__init__(message)
        self.reachable = dict(reachable or {})

    @property
    def cheapest(self) -> dict[str, float]:
        return {m: lo for m, (lo, _) in self.reachable.items()}


@dataclass(frozen=True)
class Budget:
    """low ≤ cost(metric) ≤ high; both ends fractions of the teacher's total, or both absolute."""

    metric: str
    high: float | None = None
    low: float | None = None
    fraction: bool = True  # False: absolute (a count, or milliseconds)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown budget metric {self.metric!r}; allowed: {', '.join(METRICS)}")
        if self.high is None and self.low is None:
            raise ValueError(f"budget on {self.metric} has neither a maximum nor a minimum")
        for v in (self.high, self.low):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"budget on {self.metric}: bounds must be finite and >= 0, got {v!r}")
        if self.high is not None and self.low is not None and self.low > self.high:
            raise ValueError(f"budget on {self.metric}: minimum {self.low} is above maximum {self.high}")

    def bounds(self, costs: CostTable) -> tuple[float, float]:
        """(low, high) in absolute units (-inf / inf for an open end)."""
        if self.metric not in costs.metrics:
            raise ValueError(f"the cost table has no {self.metric!r} measured (it holds "
                             f"{', '.join(costs.metrics)}); measure costs with latency batch sizes, or "
                             f"budget another metric")
        scale = costs.total[self.metric] if self.fraction else 1.0
        low = -math.inf if self.low is None else self.low * scale
        high = math.inf if self.high is None else self.high * scale
        return low, high

    def __str__(self) -> str:
        def show(v: float) -> str:
            return f"{v:g}" if self.fraction else format_cost(self.metric, v)

        what = "of the teacher" if self.fraction else ""
        if self.low is None:
            text = f"{self.metric} <= {show(self.high)}"
        elif self.high is None:
            text = f"{self.metric} >= {show(self.low)}"
        else:
            text = f"{self.metric} in [{show(self.low)}, {show(self.high)}]"
        return f"{text} {what}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "low": self.low, "high": self.high, "fraction": self.fraction,
                "text": str(self)}


def format_cost(metric: str, value: float) -> str:
    """A cost for people: exact counts with thousands separators, latency in ms."""
    if metric in COUNT_METRICS:
        return f"{int(round(value)):,}"
    return f"{value:.4g} ms"


_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([a-zA-Zµ%]*)\s*$")


def _value(metric: str, text: str, where: str) -> tuple[float, bool]:
    """(value, is_fraction) of one end of a budget."""
    m = _NUMBER.match(text)
    if not m:
        raise ValueError(f"budget {where!r}: cannot read {text!r} as a number with an optional unit. {_ALLOWED}")
    value = float(m.group(1) + (f"e{m.group(2)}" if m.group(2) else ""))
    unit = m.group(3)
    if unit == "%":
        return value / 100.0, True
    if not unit:
        if value > _MAX_BARE_FRACTION:
            example = "150M" if metric in COUNT_METRICS else "2.5ms"
            raise ValueError(f"budget {where!r}: a bare number is a fraction of the teacher's total "
                             f"(macs=0.5 is half its MACs), and {text.strip()} is too large for one; for an "
                             f"absolute value add a unit, e.g. {metric.split('_')[0]}={example}")
        return value, True
    if metric in COUNT_METRICS:
        factor = _COUNT_UNITS.get(unit.lower())
        allowed = "K, M, G"
    else:
        factor = _TIME_UNITS.get(unit.lower() if unit != "µs" else unit)
        allowed = "us, ms, s"
    if factor is None:
        raise ValueError(f"budget {where!r}: unit {unit!r} does not fit {metric}; allowed units: {allowed}, "
                         f"or none (a fraction of the teacher's total)")
    return value * factor, False


def parse_budget(text: str) -> Budget:
    """One budget from text: `macs=0.5`, `macs=0.3:0.5`, `params=1.2M`, `latency=2.5ms`."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"cannot read budget {text!r}: {_ALLOWED}")
    name, _, spec = text.partition("=")
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"budget {text!r}: unknown metric {name.strip()!r}; allowed: "
                         f"{', '.join(_ALIASES)} (latency = latency_b1)")
    metric = _ALIASES[key]
    if ":" in spec:
        lo_text, _, hi_text = spec.partition(":")
        if not lo_text.strip() and not hi_text.strip():
            raise ValueError(f"budget {text!r}: a range needs at least one end, e.g. {key}=0.3:0.5")
        ends = [_value(metric, t, text) if t.strip() else None for t in (lo_text, hi_text)]
        kinds = {e[1] for e in ends if e is not None}
        if len(kinds) > 1:
            raise ValueError(f"budget {text!r}: both ends of a range must be fractions of the teacher "
                             f"(0.3:0.5) or both absolute (100M:150M)")
        low, high = (None if e is None else e[0] for e in ends)
        return Budget(metric, high=high, low=low, fraction=kinds.pop())
    if not spec.strip():
        raise ValueError(f"budget {text!r} has no value. {_ALLOWED}")
    value, fraction = _value(metric, spec, text)
    return Budget(metric, high=value, fraction=fraction)


def parse_budgets(spec: Any) -> list[Budget]:
    """Budgets from text (`"macs=0.5,params=0.6"`), a Budget, a {metric: value} mapping or a list."""
    if isinstance(spec, Budget):
        return [spec]
    if isinstance(spec, str):
        parts = [p.strip() for p in re.split(r"[,;]", spec) if p.strip()]
        if not parts:
            raise ValueError(f"empty budget. {_ALLOWED}")
        return [parse_budget(p) for p in parts]
    if isinstance(spec, Mapping):
        out = []
        for metric, value in spec.items():
            if isinstance(value, (tuple, list)) and len(value) == 2:
                low, high = value
                out.append(Budget(_metric(metric), high=high, low=low))
            elif isinstance(value, (int, float)):
                out.append(Budget(_metric(metric), high=float(value)))
            else:
                out.append(parse_budget(f"{metric}={value}"))
        return _nonempty(out)
    if isinstance(spec, Iterable):
        return _nonempty([b for item in spec for b in parse_budgets(item)])
    raise TypeError(f"cannot read a budget from {spec!r}. {_ALLOWED}")


def _metric(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown budget metric {name!r}; allowed: {', '.join(_ALIASES)}")
    return _ALIASES[key]


def _nonempty(budgets: list[Budget]) -> list[Budget]:
    if not budgets:
        raise ValueError(f"no budget given. {_ALLOWED}")
    return budgets
