"""Predictions for a partial study's pending cells, and which pending trials to run first.

`predict_study` trains on the finished cells of a substitution study and predicts Δ for every cell
that still has pending trials (`opswap.analysis.forecast`); `order_trials` uses it for
`[run] order`: "plan" keeps the expansion's order, "promising" runs the cells with the highest
predicted Δ first, "informative" the least measured and most uncertain first. Reference trials
(the unmodified network) always come first: every Δ needs them. Before any cell has finished,
"promising" ranks by the bank's replace-1 accuracy (the features file) and "informative" runs one
seed of every cell before the second of any.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from opswap.analysis.cells import CELL_KEYS, FEATURES_FILE, cell_frame, read_features
from opswap.analysis.forecast import Forecast, forecast
from opswap.analysis.tables import candidate_label
from opswap.study.execute import trial_state
from opswap.study.expand import Expansion, Trial, expand_study
from opswap.study.schema import Study

__all__ = ["StudyForecast", "predict_study", "order_trials", "ORDERS"]

ORDERS = ("plan", "promising", "informative")
log = logging.getLogger("opswap")


@dataclass
class StudyForecast:
    """The forecast of a study's pending cells and what it was made from."""

    study: str
    forecast: Forecast
    pending_trials: int
    finished_cells: int
    features: str | None  # the features file used, if any


def _cell_key(trial: Trial) -> tuple | None:
    s = trial.settings
    if s.get("position") is None or s.get("op") in (None, "baseline"):
        return None
    label = candidate_label(pd.Series(s))
    return (int(s["epochs"]) if s.get("epochs") is not None else -1,
            label.split(" · ", 1)[1] if " · " in label else "", int(s["position"]), s["op"])


def _pending(study: Study, trials: tuple[Trial, ...] | list[Trial], root: Path) -> list[Trial]:
    return [t for t in trials if trial_state(root, t.trial_id, retries=study.run.retries,
                                             stale_after=study.run.stale_after) not in ("done", "failed")]


def predict_study(study: Study, results_dir: str | Path = "results", *, level: float = 0.9,
                  expansion: Expansion | None = None, all_cells: bool = False) -> StudyForecast:
    """Predicted Δ (with `level` intervals) of every cell of `study` that has pending trials
    (`all_cells`: of every cell, a finished one predicted from the other cells, beside its measured Δ)."""
    from opswap.analysis.results import load_results
    from opswap.ops import parse_op

    root = Path(results_dir) / study.name
    expansion = expansion or expand_study(study, root)
    ids = {t.trial_id for t in expansion.trials}
    frame = load_results(root) if root.is_dir() and any(root.glob("*.json")) else None
    if frame is not None:
        frame = frame[frame["trial_id"].isin(ids)]
    pending = _pending(study, expansion.trials, root)
    keys = sorted({k for t in (expansion.trials if all_cells else pending) if (k := _cell_key(t)) is not None})
    targets = pd.DataFrame(keys, columns=CELL_KEYS)
    targets["op_family"] = [parse_op(o).family for o in targets["op"]]
    features_path = root / FEATURES_FILE
    features = read_features(features_path)
    if frame is not None and len(frame):
        cells = cell_frame(frame, features, pending=targets)
    else:
        cells = cell_frame(_empty_frame(), features, pending=targets)
    result = forecast(cells, targets, level=level)
    finished = int((cells["n"] > 0).sum())
    return StudyForecast(study.name, result, len(pending), finished, str(features_path) if features is not None else None)


def _empty_frame() -> pd.DataFrame:
    from opswap.analysis.results import ID_COLUMNS, METRIC_COLUMNS, SETTING_COLUMNS

    return pd.DataFrame(columns=ID_COLUMNS + SETTING_COLUMNS + METRIC_COLUMNS)


def order_trials(study: Study, expansion: Expansion, results_dir: Path) -> list[Trial]:
    """The study's trials in the order `[run] order` asks for (pending ones first by that rule)."""
    order = study.run.order
    trials = list(expansion.trials)
    if order == "plan" or study.kind != "substitution":
        return trials
    root = Path(results_dir)
    try:
        result = predict_study(study, root.parent, expansion=expansion).forecast.table
    except (ValueError, KeyError) as err:  # ordering is a convenience: never a reason not to run
        log.info(f"order {order}: no forecast ({err}); running in plan order")
        return trials
    scores = {tuple(r[CELL_KEYS]): r for _, r in result.iterrows()}
    features = read_features(root / FEATURES_FILE)
    replace1 = ({(int(p), o): v for p, o, v in zip(features["position"], features["op"], features["replace1_acc"])}
                if features is not None and "replace1_acc" in features else {})
    rank: dict[tuple, int] = {}
    keyed = []
    for i, t in enumerate(trials):
        key = _cell_key(t)
        k = rank[key] = rank.get(key, -1) + 1 if key is not None else 0  # the cell's k-th trial
        row = scores.get(key) if key is not None else None
        predicted = float(row["predicted"]) if row is not None and not math.isnan(row["predicted"]) else math.nan
        if math.isnan(predicted) and key is not None:
            predicted = replace1.get((key[2], key[3]), math.nan)
        width = float(row["high"] - row["low"]) if row is not None and not math.isnan(row["predicted"]) else math.nan
        n = int(row["n"]) if row is not None else 0
        if key is None:
            sort = (0,)
        elif order == "promising":
            sort = (1, -predicted if not math.isnan(predicted) else math.inf, k, i)
        else:
            sort = (1, k, n, -width if not math.isnan(width) else 0.0, i)
        keyed.append((sort, i, t))
    ordered = [t for _, _, t in sorted(keyed, key=lambda x: (x[0], x[1]))]
    first = _pending(study, ordered, root)
    log.info(f"order {order}: " + (", ".join(t.label for t in first[:5]) + (" …" if len(first) > 5 else "")
                                   if first else "nothing pending"))
    return ordered
