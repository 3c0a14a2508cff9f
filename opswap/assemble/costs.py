"""What each (position, op) costs, for assembling a network under a budget (LANA, Molchanov et
al., ECCV 2022, phase 2).

Parameters and multiply-accumulates are read off the op itself (`opswap.complexity` on the
position's input shape); latency is measured with `opswap.training.time_blocks` on the op
alone, fed a random tensor of the position's input shape, at batch 1 and at a throughput
batch. The teacher's own block at each position is the `baseline` row. A network's cost is
estimated additively: the teacher's whole-network total, minus the blocks replaced, plus the
ops chosen — exact for parameters and MACs, an estimate for latency (`measured_cost` checks it).

A `CostTable` is saved as JSON beside its weight bank (`bank.costs.json`) with the device it
was measured on, so costs are measured once.
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

__all__ = ["METRICS", "Cost", "CostTable", "measure_costs", "network_cost", "measured_cost", "costs_path",
           "device_name", "stale_reason", "load_or_measure_costs"]

# Budget metrics: counts, and milliseconds per forward of one batch.
METRICS = ("params", "macs", "latency_b1", "latency_batch")
COUNT_METRICS = ("params", "macs")
BASELINE = "baseline"  # at a position: the teacher's own block
_SCHEMA = 1


@dataclass(frozen=True)
class Cost:
    """The cost of one op at one position (latency: median and IQR in ms; None: not measured)."""

    position: int
    op: str
    params: int
    macs: int
    latency_b1: float | None = None
    latency_b1_iqr: float | None = None
    latency_batch: float | None = None
    latency_batch_iqr: float | None = None

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass
class CostTable:
    """Costs of every measured (position, op), the teacher's totals and where they were measured."""

    rows: dict[tuple[int, str], Cost]
    total: dict[str, float | None]  # the teacher's whole network: METRICS plus *_iqr
    device: str = "cpu"
    device_name: str = ""
    batch_sizes: tuple[int, ...] = (1, 256)
    input_shape: tuple[int, ...] = (3, 32, 32)
    model: str | None = None
    teacher_fingerprint: str | None = None
    positions_info: dict[int, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rows, dict):
            self.rows = {(c.position, c.op): c for c in self.rows}
        missing = sorted({p for p, _ in self.rows} - {p for p, o in self.rows if o == BASELINE})
        if missing:
            raise ValueError(f"cost table: positions {missing} have no {BASELINE!r} row (the teacher's block)")
        self.batch_sizes = tuple(self.batch_sizes)
        self.input_shape = tuple(self.input_shape)

    # -- access -------------------------------------------------------------------------
    @property
    def positions(self) -> list[int]:
        return sorted({p for p, _ in self.rows})

    def ops_at(self, position: int) -> list[str]:
        """The ops with a cost at `position`, `baseline` first."""
        others = sorted(o for p, o in self.rows if p == position and o != BASELINE)
        return [BASELINE, *others] if (position, BASELINE) in self.rows else others

    def cost(self, position: int, op: str, metric: str) -> float:
        """One (position, op)'s cost in `metric` (a KeyError names what the table holds)."""
        row = self.rows.get((position, op))
        if row is None:
            raise KeyError(f"the cost table has no row for position {position}, op {op!r}; at position "
                           f"{position} it holds {', '.join(self.ops_at(position)) or 'nothing'}")
        value = row.get(metric)
        if value is None:
            raise KeyError(f"the cost table holds no {metric!r} (measured metrics: {', '.join(self.metrics)})")
        return value

    @property
    def metrics(self) -> list[str]:
        """The metrics measured for the teacher and every row."""
        return [m for m in METRICS if self.total.get(m) is not None
                and all(r.get(m) is not None for r in self.rows.values())]

    def missing(self, pairs: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """The pairs of `pairs` without a row."""
        return [tuple(p) for p in pairs if tuple(p) not in self.rows]

    def to_frame(self):
        """One row per (position, op) with every cost and its fraction of the teacher's total."""
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows.values()]).sort_values(["position", "op"])
        for m in self.metrics:
            frame[f"{m}_fraction"] = frame[m] / self.total[m]
        return frame.reset_index(drop=True)

    # -- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": _SCHEMA, "device": self.device, "device_name": self.device_name,
                "batch_sizes": list(self.batch_sizes), "input_shape": list(self.input_shape),
                "model": self.model, "teacher_fingerprint": self.teacher_fingerprint,
                "settings": self.settings, "total": self.total,
                "positions": {str(p): v for p, v in sorted(self.positions_info.items())},
                "rows": [asdict(self.rows[k]) for k in sorted(self.rows)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        if not isinstance(data, Mapping):
            raise ValueError(f"a cost table is a JSON object with schema, rows, total, ...; got a {type(data).__name__}")
        if data.get("schema") != _SCHEMA:
            raise ValueError(f"cost table schema {data.get('schema')!r}; this opswap reads schema {_SCHEMA}")
        return cls(rows=[Cost(**r) for r in data["rows"]], total=dict(data["total"]), device=data["device"],
                   device_name=data["device_name"], batch_sizes=tuple(data["batch_sizes"]),
                   input_shape=tuple(data["input_shape"]), model=data.get("model"),
                   teacher_fingerprint=data.get("teacher_fingerprint"),
                   positions_info={int(p): v for p, v in data.get("positions", {}).items()},
                   settings=dict(data.get("settings", {})))

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: temp file + rename)."""
        from opswap.atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cost table {str(path)!r} does not exist; measure it with measure_costs")
        return cls.from_dict(json.loads(path.read_text()))


def costs_path(bank_path: str | Path) -> Path:
    """Where a bank's cost table lives: `bank.safetensors` → `bank.costs.json`."""
    bank_path = Path(bank_path)
    return bank_path.with_name(bank_path.stem + ".costs.json")


def device_name(device: str | torch.device) -> str:
    """A human name of the device costs were measured on (GPU model, or CPU model and threads)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def stale_reason(costs: CostTable, teacher: nn.Module, bank: Any, device: str | torch.device) -> str | None:
    """Why a stored cost table cannot serve this teacher, bank and device (None: it can)."""
    from opswap.distill.bank import teacher_fingerprint

    device = torch.device(device)
    if costs.teacher_fingerprint is not None and costs.teacher_fingerprint != teacher_fingerprint(teacher):
        return "it was measured on another teacher"
    if torch.device(costs.device) != device or costs.device_name != device_name(device):
        return f"it was measured on {costs.device} ({costs.device_name}), not {device} ({device_name(device)})"
    missing = costs.missing(bank.keys())
    if missing:
        shown = ", ".join(f"{p}:{o}" for p, o in missing[:5]) + (" …" if len(missing) > 5 else "")
        return f"it lacks {len(missing)} pairs of the bank ({shown})"
    return None


def load_or_measure_costs(teacher: nn.Module, bank: Any, path: str | Path, *, device: str | torch.device = "cpu",
                          save: bool = True, **measure: Any) -> tuple[CostTable, str]:
    """The cost table at `path` when it covers the bank and matches the device, else measured anew.

    Returns (table, what happened); a new table is written to `path` when `save`. `measure` goes
    to `measure_costs` (batch_sizes, min_run_time, model_name).
    """
    path = Path(path)
    why = "no cost table yet"
    if path.is_file():
        try:
            why = stale_reason(CostTable.load(path), teacher, bank, device)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            why = f"it cannot be read ({err})"
        if why is None and "batch_sizes" in measure and tuple(measure["batch_sizes"]) != CostTable.load(path).batch_sizes:
            why = f"it was timed at batch sizes {CostTable.load(path).batch_sizes}, not {tuple(measure['batch_sizes'])}"
        if why is None:
            return CostTable.load(path), f"reused {path}"
    costs = measure_costs(teacher, bank, device=device, **measure)
    if save:
        costs.save(path)
    return costs, f"measured on {device} ({why})" + (f", saved to {path}" if save else "")


# -- measuring ------------------------------------------------------------------------------

def _latency(module: nn.Module, shape: tuple[int, ...], device: torch.device,
             min_run_time: float) -> tuple[float, float]:
    """(median, IQR) in ms of `module(x)` for a random x of `shape`, eval mode, no autograd."""
    from opswap.training import time_blocks

    x = torch.randn(shape, device=device)
    with torch.inference_mode():  # warm-up: lazy initialisation and caches
        times, _ = time_blocks(lambda: module(x), device, warmup=3, repeats=5, min_run_time=min_run_time)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return 1000.0 * statistics.median(times), 1000.0 * (q[2] - q[0])


def _measure(module: nn.Module, shape: tuple[int, ...], position: int, op: str, device: torch.device,
             batch_sizes: tuple[int, ...], min_run_time: float) -> Cost:
    from opswap.substitution import complexity

    module = module.to(device).eval()
    params, macs = complexity(module, (1, *shape))
    lat: dict[str, float] = {}
    for name, b in zip(("latency_b1", "latency_batch"), batch_sizes):
        lat[name], lat[f"{name}_iqr"] = _latency(module, (b, *shape), device, min_run_time)
    return Cost(position, op, int(params), int(macs), **lat)


def _pairs(teacher: nn.Module, bank_or_pairs: Any) -> list[tuple[int, str]]:
    from opswap.distill.bank import WeightBank
    from opswap.distill.engine import valid_pairs
    from opswap.ops import parse_op

    if isinstance(bank_or_pairs, WeightBank):
        return bank_or_pairs.keys()
    if isinstance(bank_or_pairs, str) and bank_or_pairs == "all":
        return valid_pairs(teacher)
    return [(int(p), parse_op(o).name) for p, o in bank_or_pairs]


def measure_costs(teacher: nn.Module, bank_or_pairs: Any = "all", *, device: str | torch.device = "cpu",
                  batch_sizes: tuple[int, ...] = (1, 256), min_run_time: float = 0.2,
                  model_name: str | None = None) -> CostTable:
    """Params, MACs and latency of every (position, op) of a bank (or pair list, or `"all"`).

    Each op is measured alone on the position's input shape; the teacher's block at each position
    is the `baseline` row, and the teacher's whole network gives the totals. `batch_sizes` is
    (batch-1 size, throughput batch) for `latency_b1` and `latency_batch`; `()` skips latency.
    """
    from opswap.distill.bank import teacher_fingerprint
    from opswap.ops import create_op
    from opswap.substitution import positions

    if len(batch_sizes) not in (0, 2) or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be (batch-1 size, throughput batch size), e.g. (1, 256), or () "
                         f"for no latency; got {batch_sizes!r}")
    batch_sizes = tuple(int(b) for b in batch_sizes)
    device = torch.device(device)
    table = {p.index: p for p in positions(teacher)}
    pairs = _pairs(teacher, bank_or_pairs)
    bad = sorted({p for p, _ in pairs} - set(table))
    if bad:
        raise ValueError(f"positions {bad} do not exist; this model has positions 1..{len(table)}")
    input_shape = tuple(getattr(teacher, "input_size", (3, 32, 32)))
    rows: list[Cost] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # op weights do not change dense costs; fixed anyway
        for p in sorted({p for p, _ in pairs}):
            pos = table[p]
            shape = (pos.c_in, pos.resolution, pos.resolution)
            block = copy.deepcopy(teacher.get_submodule(pos.path))
            rows.append(_measure(block, shape, p, BASELINE, device, batch_sizes, min_run_time))
            for op in sorted({o for q, o in pairs if q == p and o != BASELINE}):
                module = create_op(op, pos.c_in, pos.c_out, pos.stride)
                rows.append(_measure(module, shape, p, op, device, batch_sizes, min_run_time))
    whole = _measure(copy.deepcopy(teacher), input_shape, 0, "teacher", device, batch_sizes, min_run_time)
    total = {k: v for k, v in asdict(whole).items() if k not in ("position", "op")}
    info = {p.index: {"c_in": p.c_in, "c_out": p.c_out, "stride": p.stride, "resolution": p.resolution}
            for p in table.values() if p.index in {q for q, _ in pairs}}
    if model_name is None:
        model_name = getattr(bank_or_pairs, "model", None)
    return CostTable(rows=rows, total=total, device=str(device), device_name=device_name(device),
                     batch_sizes=batch_sizes, input_shape=input_shape, model=model_name,
                     teacher_fingerprint=teacher_fingerprint(teacher), positions_info=info,
                     settings={"min_run_time": min_run_time, "torch": torch.__version__,
                               "threads": torch.get_num_threads()})


def network_cost(costs: CostTable, assignment: Mapping[int, str]) -> dict[str, float]:
    """Additive estimate per metric: teacher total − the replaced blocks + the chosen ops."""
    out = {}
    for m in costs.metrics:
        value = costs.total[m]
        for p, op in assignment.items():
            if op != BASELINE:
                value += costs.cost(p, op, m) - costs.cost(p, BASELINE, m)
        out[m] = int(value) if m in COUNT_METRICS else float(value)
    return out


def measured_cost(model: nn.Module, costs: CostTable | None = None, *, device: str | torch.device | None = None,
                  batch_sizes: tuple[int, ...] | None = None, min_run_time: float | None = None) -> dict[str, float]:
    """Params, MACs and latency (median, IQR) of a whole model, measured as the table's totals were."""
    device = torch.device(device if device is not None else (costs.device if costs else "cpu"))
    if batch_sizes is None:
        batch_sizes = costs.batch_sizes if costs else (1, 256)
    if min_run_time is None:
        min_run_time = costs.settings.get("min_run_time", 0.2) if costs else 0.2
    shape = tuple(costs.input_shape if costs else getattr(model, "input_size", (3, 32, 32)))
    cost = _measure(copy.deepcopy(model), shape, 0, "model", device, tuple(batch_sizes), min_run_time)
    return {k: v for k, v in asdict(cost).items() if k not in ("position", "op") and v is not None}
