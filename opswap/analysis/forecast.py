"""Predicted Δ of the cells a partial study has not finished, with intervals from cross-validation.

For each epoch budget and variant, the finished cells train the predictors of
`opswap.analysis.crossval`. A target cell is judged by the cross-validation scheme that matches
what is unknown about it: leave-one-position-out when no finished cell has its position,
leave-one-op-out when none has its op, leave-one-cell-out otherwise. The predictor with the
lowest out-of-fold MAE under that scheme (a naive baseline when nothing beats it) is refitted on
the finished cells — without the target cell itself, so a partly measured cell is predicted from
the others only — and the interval is ± the finite-sample `level` quantile of that predictor's
absolute out-of-fold residuals (a split-conformal interval in the manner of Lei et al., JASA
2018, with CV residuals as the calibration set; exchangeability of cells is assumed, not shown).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from opswap.analysis.cells import CELL_KEYS, predictor_features
from opswap.analysis.crossval import SCHEMES, cross_validate, predictor

__all__ = ["Forecast", "forecast", "residual_quantile", "INTERVAL_METHOD"]

INTERVAL_METHOD = ("± the {level:.0%} quantile of the chosen predictor's absolute out-of-fold residuals "
                   "(split-conformal on cross-validation residuals)")
COLUMNS = [*CELL_KEYS, "op_family", "n", "measured", "predicted", "low", "high", "predictor", "label", "scheme",
           "cv_mae", "n_train", "note"]


@dataclass
class Forecast:
    """`table`: one row per target cell; `choices`: the predictor chosen per (epochs, variant, scheme)."""

    table: pd.DataFrame
    choices: pd.DataFrame
    level: float
    notes: list[str] = field(default_factory=list)

    @property
    def interval_method(self) -> str:
        return INTERVAL_METHOD.format(level=self.level)


def residual_quantile(residuals: np.ndarray, level: float) -> float:
    """The ⌈(n + 1)·level⌉-th smallest |residual| (∞ when n is too small for that level)."""
    r = np.sort(np.abs(np.asarray(residuals, float)[np.isfinite(residuals)]))
    if not len(r):
        return math.nan
    k = math.ceil((len(r) + 1) * level)
    return float(r[k - 1]) if k <= len(r) else math.inf


def _scheme(train: pd.DataFrame, row: pd.Series) -> str:
    if not (train["position"] == row["position"]).any():
        return "position"
    if not (train["op"] == row["op"]).any():
        return "op"
    return "cell"


def _choose(train: pd.DataFrame, features: list[str], scheme: str, seed: int) -> dict | None:
    """The lowest-MAE predictor under `scheme` on the finished cells, with its residual spread."""
    groups = len(train) if scheme == "cell" else train[SCHEMES[scheme]].nunique()
    if groups < 3:
        return None
    cv = cross_validate(train, features, schemes=[scheme], seed=seed, n_boot=0)
    table = cv.table.dropna(subset=["mae"])
    if table.empty:
        return None
    kinds = {"baseline": 1, "single": 0, "model": 0}
    best = table.assign(order=table["kind"].map(kinds)).sort_values(["mae", "order"]).iloc[0]
    residuals = cv.predictions.loc[cv.predictions["predictor"] == best["predictor"], "error"].to_numpy(float)
    return {"predictor": best["predictor"], "label": best["label"], "mae": float(best["mae"]),
            "residuals": residuals, "n": int(best["n"])}


def forecast(cells: pd.DataFrame, targets: pd.DataFrame, *, level: float = 0.9, seed: int = 0) -> Forecast:
    """Predicted Δ with intervals for `targets` (cell keys) from the finished cells of `cells`.

    `cells` is a `cells.cell_frame` (with pending cells added, so their features are known);
    `targets` names the cells to predict (epochs, variant, position, op).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    prepared, features = predictor_features(cells)
    wanted = set(map(tuple, targets[CELL_KEYS].astype(object).to_numpy()))
    rows, choices, notes = [], [], []
    for (epochs, variant), group in prepared.groupby(["epochs", "variant"], sort=True):
        group = group.reset_index(drop=True)
        train = group[group["delta"].notna()].reset_index(drop=True)
        chosen: dict[str, dict | None] = {}
        for _, row in group.iterrows():
            key = tuple(row[CELL_KEYS])
            if key not in wanted:
                continue
            scheme = _scheme(train, row)
            if scheme not in chosen:
                chosen[scheme] = _choose(train, features, scheme, seed) if len(train) >= 3 else None
                if chosen[scheme] is not None:
                    c = chosen[scheme]
                    choices.append({"epochs": epochs, "variant": variant, "scheme": scheme, "predictor": c["predictor"],
                                    "label": c["label"], "cv_mae": c["mae"], "n_train": c["n"],
                                    "half_width": residual_quantile(c["residuals"], level)})
            choice = chosen[scheme]
            out = {**{k: row[k] for k in CELL_KEYS}, "op_family": row["op_family"], "n": int(row["n"]),
                   "measured": row["delta"], "scheme": scheme}
            if choice is None:
                rows.append({**out, "predicted": math.nan, "low": math.nan, "high": math.nan, "predictor": None,
                             "label": None, "cv_mae": math.nan, "n_train": len(train),
                             "note": f"too few finished cells to choose a predictor by leave-one-{scheme}-out CV "
                                     f"({len(train)} finished; it needs 3 {scheme}s)"})
                continue
            others = train[~((train["position"] == row["position"]) & (train["op"] == row["op"]))]
            fit = predictor(choice["predictor"], features)
            value = float(fit(others, group.iloc[[_index(group, row)]], seed)[0][0])
            width = residual_quantile(choice["residuals"], level)
            rows.append({**out, "predicted": value, "low": value - width, "high": value + width,
                         "predictor": choice["predictor"], "label": choice["label"], "cv_mae": choice["mae"],
                         "n_train": len(others), "note": ""})
    if not rows:
        notes.append("no cell to predict")
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Forecast(table, pd.DataFrame(choices), level, notes)


def _index(group: pd.DataFrame, row: pd.Series) -> int:
    match = (group["position"] == row["position"]) & (group["op"] == row["op"])
    return int(np.flatnonzero(match.to_numpy())[0])
