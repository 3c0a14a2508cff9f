"""Is the accuracy change predictable? Rank statistics for the operation-substitution question.

The seed-001 paper (seeds/operation-substitution-wrn) asks whether the accuracy after a swap can
be predicted from the kind of op and its position. Answered per epoch budget: Spearman's ρ and
Kendall's τ (scipy.stats) with p-values and percentile-bootstrap 95 % intervals between the
target (final accuracy, or Δ vs the baseline mean) and each numeric predictor — distillation
loss and replace-1 accuracy from the LANA-style initialisation, params, MACs, position — and
Kruskal–Wallis H with ε² = H/(n − 1) (Tomczak & Tomczak 2014; always in [0, 1], unlike the
η² = (H − k + 1)/(n − k) estimate, which is negative when H < k − 1) for the categorical op family. Unit of analysis:
one point per (position, candidate) cell, the mean over its seeds (`level="cell"`), or one per
trial (`level="trial"`, seeds are then not independent draws of the predictor).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from opswap.analysis.delta import with_delta
from opswap.analysis.tables import labelled

NUMERIC_PREDICTORS = ["distill_loss", "replace1_acc", "params", "macs", "op_params_count",
                      "op_macs", "position"]
CATEGORICAL_PREDICTORS = ["op_family", "position"]
COLUMNS = ["epochs", "target", "predictor", "method", "statistic", "p_value", "ci_low",
           "ci_high", "n", "note"]


def points(frame: pd.DataFrame, target: str = "test_acc", *, level: str = "cell") -> pd.DataFrame:
    """Swapped trials (baseline excluded) with `target` and `delta` (vs the baseline mean)."""
    if level not in ("cell", "trial"):
        raise ValueError(f"level must be 'cell' or 'trial', not {level!r}")
    data = with_delta(labelled(frame), target)  # the tables' Δ (opswap.analysis.delta)
    data = data[(data["status"] == "ok") & data[target].notna()].copy()
    data = data[~data["is_reference"] & data["position"].notna()]
    numeric = [c for c in NUMERIC_PREDICTORS if c in data]
    for column in numeric + [target, "delta"]:
        data[column] = pd.to_numeric(data[column], errors="coerce").astype("float64")
    if level == "trial" or data.empty:
        return data.reset_index(drop=True)
    keys = ["epochs", "model", "row", "candidate"]
    agg = {c: "mean" for c in numeric + [target, "delta"]}
    agg.update(op_family="first", op="first", trial_id="count")
    cells = data.groupby(keys, dropna=False).agg(agg).rename(columns={"trial_id": "n_trials"})
    return cells.reset_index()


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair (average ranks for ties), vectorised over rows."""
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of each row pair, from the pairwise sign matrices."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum((1, 2)) / np.sqrt(np.abs(sx).sum((1, 2)) * np.abs(sy).sum((1, 2)))


def _bootstrap(x: np.ndarray, y: np.ndarray, method: str, n_boot: int, seed: int) -> tuple:
    """Percentile 95 % interval of ρ or τ over paired resamples (degenerate ones dropped)."""
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rows = _spearman_rows if method == "spearman" else _kendall_rows
    chunk = max(1, 2_000_000 // (len(x) ** 2))  # bounds the sign matrices' memory
    values = []
    for start in range(0, n_boot, chunk):
        index = rng.integers(0, len(x), (min(chunk, n_boot - start), len(x)))
        values.append(rows(x[index], y[index]))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    if len(values) < n_boot // 2:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _rank_rows(x, y, n_boot: int, seed: int) -> list[dict]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        note = "n < 3" if len(x) < 3 else "constant values"
        return [dict(method=m, statistic=math.nan, p_value=math.nan, ci_low=math.nan,
                     ci_high=math.nan, n=len(x), note=note) for m in ("spearman", "kendall")]
    rows = []
    for method, func in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        result = func(x, y)
        low, high = _bootstrap(x, y, method, n_boot, seed)
        rows.append(dict(method=method, statistic=float(result.statistic),
                         p_value=float(result.pvalue), ci_low=low, ci_high=high, n=len(x),
                         note=""))
    return rows


def _group_rows(groups: pd.Series, y: pd.Series) -> list[dict]:
    samples = [y[groups == g].to_numpy(float) for g in groups.unique()]
    n, k = len(y), len(samples)
    if k < 2 or n <= k or np.ptp(y.to_numpy(float)) == 0:
        note = "fewer than 2 groups" if k < 2 else "too few points" if n <= k else "constant values"
        return [dict(method="kruskal", statistic=math.nan, p_value=math.nan, ci_low=math.nan,
                     ci_high=math.nan, n=n, note=note)]
    h, p = stats.kruskal(*samples)
    epsilon2 = h / (n - 1)  # = H / ((n² − 1)/(n + 1)): rank epsilon-squared, never negative
    return [dict(method="kruskal", statistic=float(h), p_value=float(p), ci_low=math.nan,
                 ci_high=math.nan, n=n, note=f"{k} groups; ε² = {epsilon2:.3f}")]


def predictability(frame: pd.DataFrame, target: str = "test_acc", *, delta: bool = False,
                   level: str = "cell", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per epoch budget and predictor: ρ/τ with p and bootstrap CI, or Kruskal–Wallis H."""
    data = points(frame, target, level=level)
    y_name = "delta" if delta else target
    rows = []
    for epochs, group in data.groupby("epochs") if not data.empty else []:
        for predictor in NUMERIC_PREDICTORS:
            if predictor not in group or group[predictor].notna().sum() == 0:
                continue
            sub = group[group[predictor].notna() & group[y_name].notna()]
            for row in _rank_rows(sub[predictor], sub[y_name], n_boot, seed):
                rows.append({"epochs": int(epochs), "target": y_name, "predictor": predictor, **row})
        for predictor in CATEGORICAL_PREDICTORS:
            sub = group[group[predictor].notna() & group[y_name].notna()]
            if sub.empty:
                continue
            for row in _group_rows(sub[predictor].astype(str), sub[y_name]):
                rows.append({"epochs": int(epochs), "target": y_name, "predictor": predictor, **row})
    return pd.DataFrame(rows, columns=COLUMNS)


def format_predictability(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Readable text: `ρ = -0.83 [-1.00, -0.40]`, p-values in short scientific form."""
    out = table[["epochs", "target", "predictor", "method", "n"]].copy()
    symbol = {"spearman": "ρ", "kendall": "τ", "kruskal": "H"}
    text = []
    for _, row in table.iterrows():
        if math.isnan(row["statistic"]):
            text.append("—")
            continue
        cell = f"{symbol[row['method']]} = {row['statistic']:.{digits}g}"
        if not math.isnan(row["ci_low"]):
            cell += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        text.append(cell)
    out["statistic"] = text
    out["p"] = ["—" if math.isnan(p) else "< 1e-16" if p < 1e-16 else f"{p:.2g}"
                for p in table["p_value"]]
    out["note"] = table["note"].to_numpy()
    return out.reset_index(drop=True)
