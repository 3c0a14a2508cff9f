"""Trial records (docs/records.md, schema 1) as tidy pandas DataFrames.

`load_results` gives one row per trial (settings flattened, final metrics, environment and
timing); `load_history` gives one row per trial and epoch. Unreadable or foreign JSON files are
skipped with a warning naming the file, so a study that is still running can be analysed.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from opswap.atomic import atomic_path
from opswap.run.record import read_records

# Columns every results frame has, in this order, even when no record sets them.
ID_COLUMNS = ["trial_id", "study", "status", "error", "attempt"]
SETTING_COLUMNS = [
    "kind", "model", "dataset", "data", "num_classes", "data_fraction", "position", "op",
    "op_family", "op_params", "init", "seed", "epochs", "sparsity", "prune",
]
METRIC_COLUMNS = [
    "test_acc", "test_loss", "best_test_acc", "train_acc", "train_loss", "val_acc",
    "per_class_acc", "params", "macs", "op_params_count", "op_macs", "latency_ms_b1",
    "latency_ms_batch", "latency_batch_size", "measured_sparsity", "layer_sparsity",
    "dense_bytes", "csr_bytes", "distill_loss", "replace1_acc",
]
TAIL_COLUMNS = ["started", "finished", "seconds", "file"]
HISTORY_KEYS = ["trial_id", "study", "status", "kind", "model", "dataset", "position", "op",
                "op_family", "init", "seed", "epochs", "sparsity", "prune", "data_fraction"]
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                   "val_acc", "lr", "seconds", "images_per_s"]

_INTEGER_COLUMNS = ["attempt", "num_classes", "position", "seed", "epochs", "params", "macs",
                    "op_params_count", "op_macs", "latency_batch_size", "dense_bytes",
                    "csr_bytes"]
_FLOAT_COLUMNS = ["data_fraction", "sparsity", "test_acc", "test_loss", "best_test_acc",
                  "train_acc", "train_loss", "val_acc", "latency_ms_b1", "latency_ms_batch",
                  "measured_sparsity", "distill_loss", "replace1_acc", "seconds"]


def _scalar(value):
    """A value fit for a DataFrame cell: dicts as JSON text, NaN-like floats as None."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def op_params_text(params: dict | None) -> str | None:
    """`{"e": 6, "k": 3}` → `"e=6,k=3"`; None stays None."""
    if params is None:
        return None
    if not isinstance(params, dict):
        return str(params)
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def assignment_text(assignment) -> str | None:
    """An assembled network's `[[2, "identity"], [5, "mbconv_e6_k3"]]` → `"2:identity,5:mbconv_e6_k3"`."""
    if assignment is None:
        return None
    return ",".join(f"{p}:{op}" for p, op in assignment) or "teacher"


def _flatten(record: dict) -> dict:
    """One record → one flat row."""
    settings = dict(record.get("settings") or {})
    metrics = dict(record.get("metrics") or {})
    row = {key: record.get(key) for key in ID_COLUMNS}
    for key, value in settings.items():
        if key == "op_params":
            row["op_params"] = op_params_text(value)
        elif key == "assignment":
            row["assignment"] = assignment_text(value)
        elif isinstance(value, dict):
            row.update({f"{key}_{k}": _scalar(v) for k, v in value.items()})
        else:
            row[key] = _scalar(value)
    for key, value in metrics.items():
        name = "measured_sparsity" if key == "sparsity" else key
        if name in row and name not in METRIC_COLUMNS:
            name = f"metric_{key}"
        row[name] = value if key == "per_class_acc" else _scalar(value)
    for key, value in (record.get("env") or {}).items():
        row[f"env_{key}"] = _scalar(value)
    timing = record.get("timing") or {}
    row.update(started=timing.get("started"), finished=timing.get("finished"),
               seconds=timing.get("seconds"), file=record.get("_file"))
    return row


def _typed(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Fill the standard columns, put them first, and give numbers numeric dtypes."""
    for column in columns:
        if column not in frame:
            frame[column] = None
    frame = frame[columns + [c for c in frame.columns if c not in columns]].copy()
    for column in _INTEGER_COLUMNS:
        if column in frame:
            numbers = pd.to_numeric(frame[column], errors="coerce")
            try:
                frame[column] = numbers.round().astype("Int64")
            except (TypeError, ValueError, OverflowError):  # a value past int64 (a hand-written seed): kept as float
                frame[column] = numbers.astype("float64")
    for column in _FLOAT_COLUMNS + HISTORY_COLUMNS[1:]:
        if column in frame and column not in _INTEGER_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def load_results(path: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per trial: ids, flattened settings, final metrics, env_* and timing columns."""
    rows = [_flatten(r) for r in read_records(path)]
    columns = ID_COLUMNS + SETTING_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS
    frame = _typed(pd.DataFrame(rows), columns)
    frame["op"] = frame["op"].where(frame["op"].notna(), "baseline")
    return frame.sort_values(["study", "trial_id"], na_position="last").reset_index(drop=True)


def load_history(path: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per trial and epoch, with the trial's identifying settings."""
    rows = []
    for record in read_records(path):
        settings = record.get("settings") or {}
        keys = {k: _scalar(record.get(k, settings.get(k))) for k in HISTORY_KEYS}
        keys["op"] = keys["op"] or "baseline"
        for epoch in record.get("history") or []:
            rows.append({**keys, **{k: _scalar(v) for k, v in epoch.items()}})
    frame = _typed(pd.DataFrame(rows), HISTORY_KEYS + HISTORY_COLUMNS)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame.sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists (per-class accuracy) as JSON text, so CSV and Parquet hold the same thing."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda v: isinstance(v, list)).any():
            frame[column] = frame[column].map(
                lambda v: json.dumps(v) if isinstance(v, list) else v)
    return frame


def export(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a results/history frame as Parquet (`.parquet`) or CSV (`.csv`)."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"cannot export to {str(path)!r}: use a .parquet or .csv file name")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            _storable(frame).to_parquet(tmp, index=False)
        else:
            _storable(frame).to_csv(tmp, index=False)
    return path


def to_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as Parquet."""
    return export(frame, Path(path).with_suffix(".parquet"))


def to_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV."""
    return export(frame, Path(path).with_suffix(".csv"))
