"""The cell frame of the predictability analysis: one row per (position, op) cell, Δ and cheap features.

A cell is one candidate at one position under one epoch budget and one variant (init, sparsity,
data share: what `tables.candidate_label` adds after the op). Its Δ is the mean over its finished
seeds of the one Δ of `opswap.analysis.delta` (metric minus the mean of the reference trained the
same way), so it is the number the Δ tables print. Its features are what the records carry
(distillation loss, replace-1 accuracy, params, MACs of the swapped op) joined with the features
file the study's features stage writes beside the weight bank (`bank.features.parquet`: held-out
distillation loss, zero-cost proxies of the substituted network, params and MACs), which also
covers cells that have not run yet. Heavy-tailed features enter the predictors as
sign(v)·log10(1 + |v|) (`crossval.log_columns`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from opswap.analysis.crossval import log_columns
from opswap.analysis.delta import with_delta
from opswap.analysis.tables import labelled
from opswap.atomic import atomic_path

__all__ = ["FEATURES_FILE", "RECORD_FEATURES", "read_features", "write_features", "trial_deltas", "cell_frame",
           "seed_frame", "predictor_features"]

FEATURES_FILE = "bank.features.parquet"
FEATURES_SCHEMA = 1
RECORD_FEATURES = ["replace1_acc", "distill_loss", "op_params_count", "op_macs", "params", "macs"]
# Features whose values span orders of magnitude: predictors see their signed log10.
_HEAVY = ("synflow", "snip", "grad_norm", "fisher", "grasp", "params", "macs", "op_params_count", "op_macs")
# Whole-network params / MACs are the teacher's minus the block plus the op: the op's own counts
# carry the same information shifted by a per-position constant, so only one pair is kept.
_REDUNDANT = {"params": "op_params_count", "macs": "op_macs"}
CELL_KEYS = ["epochs", "variant", "position", "op"]


# -- the features file -------------------------------------------------------------------------
_META_KEY = b"opswap_features"


def read_features(path: str | Path) -> pd.DataFrame | None:
    """The features table stored beside a bank (a results folder or the file), None if absent.

    One row per (position, op); the file's settings and timings are in `frame.attrs["meta"]`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path = path / FEATURES_FILE if path.is_dir() else path
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"null"))
    except (pa.ArrowException, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a features file ({err}); delete it and run the study again "
                         "to recompute it") from None
    if not isinstance(meta, dict) or meta.get("schema") != FEATURES_SCHEMA:
        raise ValueError(f"{str(path)!r} has features schema {meta.get('schema') if isinstance(meta, dict) else None!r};"
                         f" this opswap reads schema {FEATURES_SCHEMA} (delete it to recompute)")
    frame = table.to_pandas()
    if "position" in frame:
        frame["position"] = frame["position"].astype("Int64")
    frame.attrs["meta"] = meta
    return frame


def write_features(path: str | Path, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write the features table (Parquet) with its settings and timings in the file's metadata, atomically.

    Parquet rather than JSON: a results folder's `*.json` files are its trial records.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    payload = json.dumps({"schema": FEATURES_SCHEMA, **_nulls(meta)}, default=_plain)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: payload.encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _nulls(value):
    """NaN / ±inf as None, so the metadata stays valid JSON."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- trials and cells --------------------------------------------------------------------------
def _variant(candidate: str) -> str:
    """What the label says after the op: `dsr 0.9 · random init`, or "" for the plain variant."""
    return candidate.split(" · ", 1)[1] if " · " in candidate else ""


def trial_deltas(frame: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Finished swapped trials with `delta` (the one Δ), `variant`, and numeric record features."""
    data = with_delta(labelled(frame), metric)
    data = data[(data["status"] == "ok") & data[metric].notna() & ~data["is_reference"]
                & data["position"].notna()].copy()
    data["variant"] = data["candidate"].map(_variant)
    data["position"] = data["position"].astype(int)
    data["epochs"] = pd.to_numeric(data["epochs"], errors="coerce").fillna(-1).astype(int)
    for column in [metric, "delta", *RECORD_FEATURES]:
        if column in data:
            data[column] = pd.to_numeric(data[column], errors="coerce").astype("float64")
    return data.reset_index(drop=True)


def cell_frame(frame: pd.DataFrame, features: pd.DataFrame | None = None, *, metric: str = "test_acc",
               pending: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (epochs, variant, position, op) cell: n, mean, std, delta and the features.

    `features` (from `read_features`) joins on (position, op). `pending` — rows of epochs,
    variant, position, op, op_family for cells without a finished trial — adds those cells with
    n = 0 and a missing Δ, so predictors can score them.
    """
    data = trial_deltas(frame, metric)
    record_features = [c for c in RECORD_FEATURES if c in data]
    agg = {"n": (metric, "size"), "mean": (metric, "mean"), "std": (metric, lambda s: s.std(ddof=1)),
           "delta": ("delta", "mean"), "reference_mean": ("reference_mean", "first"),
           "op_family": ("op_family", "first"), "candidate": ("candidate", "first"),
           **{c: (c, "mean") for c in record_features}}
    cells = (data.groupby(CELL_KEYS, sort=True).agg(**agg).reset_index() if len(data) else
             pd.DataFrame(columns=[*CELL_KEYS, *agg]))
    if pending is not None and len(pending):
        extra = pending.copy()
        extra["epochs"] = pd.to_numeric(extra["epochs"], errors="coerce").fillna(-1).astype(int)
        extra["variant"] = extra["variant"].fillna("") if "variant" in extra else ""
        known = set(map(tuple, cells[CELL_KEYS].astype(object).to_numpy())) if len(cells) else set()
        extra = extra[[tuple(r) not in known for r in extra[CELL_KEYS].astype(object).to_numpy()]]
        extra = extra.drop_duplicates(CELL_KEYS).assign(n=0)
        cells = pd.concat([cells, extra[[c for c in extra.columns if c in (*CELL_KEYS, "op_family", "n")]]],
                          ignore_index=True)
    cells["n"] = pd.to_numeric(cells["n"], errors="coerce").fillna(0).astype(int)
    cells["position"] = cells["position"].astype(int)
    if features is not None and len(features):
        own = features.drop(columns=[c for c in ("op_family",) if c in features])
        # The records' copies of bank features cover only finished cells; the file covers all.
        own = own.rename(columns={c: f"{c}__file" for c in own.columns if c in cells and c not in ("position", "op")})
        cells = cells.merge(own.assign(position=own["position"].astype(int)), on=["position", "op"], how="left")
        for column in [c for c in cells.columns if c.endswith("__file")]:
            base = column[: -len("__file")]
            cells[base] = pd.to_numeric(cells[base], errors="coerce").fillna(cells[column])
            cells = cells.drop(columns=column)
    return cells.sort_values(CELL_KEYS).reset_index(drop=True)


def seed_frame(frame: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """One row per finished swapped trial: the cell keys, seed, `metric` and `delta` (for the noise ceiling)."""
    data = trial_deltas(frame, metric)
    return data[[*CELL_KEYS, "op_family", "seed", metric, "delta"]].reset_index(drop=True)


def predictor_features(cells: pd.DataFrame, exclude: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """The cells with log columns added, and the feature names predictors should use.

    A feature is kept when it is numeric and varies over the cells that have a Δ; heavy-tailed
    ones are replaced by their signed log10 (`log_<name>`); whole-network params / MACs are left
    out when the op's own counts are there (the same information).
    """
    skip = {*CELL_KEYS, "op_family", "candidate", "n", "mean", "std", "delta", "reference_mean", "n_trials",
            "seed", *exclude}
    measured = cells[cells["delta"].notna()] if "delta" in cells else cells
    names = []
    for column in cells.columns:
        if column in skip or column.startswith(("seconds", "log_")):
            continue
        values = pd.to_numeric(measured[column], errors="coerce")
        if values.notna().sum() < 2 or values.dropna().nunique() < 2:
            continue
        if column in _REDUNDANT and _REDUNDANT[column] in cells:
            continue
        names.append(column)
    heavy = [c for c in names if any(h in c for h in _HEAVY)]
    out = log_columns(cells, heavy) if heavy else cells.copy()
    for column in names + [f"log_{c}" for c in heavy]:  # NASWOT's −inf (a singular kernel): unknown
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan)
    return out, [f"log_{c}" if c in heavy else c for c in names]
