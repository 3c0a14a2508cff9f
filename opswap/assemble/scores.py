"""Per-pair scores that assembly maximises, by objective name (LANA phase 2 scores each
(position, op) once and sums the scores of the chosen ops).

Every score is relative to the teacher and higher is better; `baseline` (the teacher's block)
scores 0 at every position. Built in:

- `replace1`: replace-1 accuracy minus the teacher's accuracy on the same split, i.e. minus the
  replace-1 drop (DESIGN.md "One Δ": the cell minus its reference, measured the same way);
- `distill_loss`: minus the held-out normalised MSE (`opswap.distill.heldout`);
- `train_distill_loss`: minus the bank's own final training loss.

A predictor plugs in with `register_objective("name", provider)`; a provider is called as
`provider(bank, **context)` (context: `teacher_acc`, `heldout_loss` and whatever the caller
passes) and returns {(position, op): score}. A mapping or a callable can also be passed directly.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["register_objective", "list_objectives", "objective_scores", "read_cell_scores", "unscored_cells",
           "SCORE_COLUMNS",
           "ScoreProvider"]

ScoreProvider = Callable[..., Mapping[tuple[int, str], float]]
# Which Δ of `opswap predict --all` output a cell scores by: best = measured where measured, else predicted.
SCORE_COLUMNS = ("best", "predicted_delta", "measured_delta")
_OBJECTIVES: dict[str, tuple[ScoreProvider, bool]] = {}


def register_objective(name: str, provider: ScoreProvider, *, higher_is_better: bool = True,
                       overwrite: bool = False) -> ScoreProvider:
    """Make `provider(bank, **context) -> {(position, op): value}` an objective called `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an objective name must be a non-empty string, got {name!r}")
    if name in _OBJECTIVES and not overwrite:
        raise ValueError(f"an objective named {name!r} is already registered; pass overwrite=True to replace it")
    _OBJECTIVES[name] = (provider, higher_is_better)
    return provider


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def _replace1(bank: Any, *, teacher_acc: float | None = None, **_: Any) -> dict[tuple[int, str], float]:
    if teacher_acc is None:
        raise ValueError("objective 'replace1' scores each pair by its replace-1 accuracy minus the teacher's "
                         "accuracy on the same split: pass teacher_acc (e.g. "
                         "opswap.evaluate(teacher, data)['acc'])")
    return {e.key: e.replace1_acc - teacher_acc for e in bank if e.replace1_acc is not None}


def _heldout(bank: Any, *, heldout_loss: Mapping | None = None, **_: Any) -> dict[tuple[int, str], float]:
    if heldout_loss is None:
        raise ValueError("objective 'distill_loss' ranks pairs by held-out distillation loss: pass "
                         "heldout_loss=opswap.distill.heldout.heldout_distill_loss(teacher, bank, data), or use "
                         "objective 'train_distill_loss' for the bank's own final training loss")
    return dict(heldout_loss)


def _train_loss(bank: Any, **_: Any) -> dict[tuple[int, str], float]:
    return {e.key: e.distill_loss for e in bank}


register_objective("replace1", _replace1)
register_objective("distill_loss", _heldout, higher_is_better=False)
register_objective("train_distill_loss", _train_loss, higher_is_better=False)


def objective_scores(objective: str | Mapping | ScoreProvider, bank: Any = None,
                     **context: Any) -> tuple[str, dict[tuple[int, str], float]]:
    """(objective label, {(position, op): score}) with higher better and `baseline` left out (it is 0).

    Non-finite scores (a diverged pair) are kept as NaN: assembly never chooses such a pair.
    Scores given for `baseline` are ignored: the teacher's own block scores 0 by definition.
    """
    if isinstance(objective, Mapping):
        label, raw, sign = "scores", objective, 1.0
    elif isinstance(objective, str):
        if objective not in _OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; registered: {', '.join(list_objectives())} "
                             "(or pass a {(position, op): score} mapping, or a callable)")
        provider, higher = _OBJECTIVES[objective]
        if bank is None:
            raise ValueError(f"objective {objective!r} reads its scores from a weight bank; pass the bank, "
                             "or pass scores as a mapping")
        label, raw, sign = objective, provider(bank, **context), 1.0 if higher else -1.0
    elif callable(objective):
        label, raw, sign = getattr(objective, "__name__", "callable"), objective(bank, **context), 1.0
    else:
        raise TypeError(f"an objective is a name ({', '.join(list_objectives())}), a mapping or a callable; "
                        f"got {objective!r}")
    from opswap.ops import parse_op

    out: dict[tuple[int, str], float] = {}
    for (position, op), value in raw.items():
        name = parse_op(op).name
        if value is None:
            continue  # unmeasured: reported as missing where the pair is a candidate
        if name == "baseline":
            continue  # the teacher's own block scores 0; a bank's distilled baseline is never chosen
        value = sign * float(value)
        out[(int(position), name)] = value if math.isfinite(value) else math.nan
    return label, out


def read_cell_scores(path: str | Path, column: str = "best", *, what: str = "scores") -> dict[tuple[int, str], float]:
    """{(position, op): Δ} from `opswap predict --all` output (CSV or JSON); one epoch budget only.

    `column` is one of SCORE_COLUMNS; `what` names the file in errors (`--scores`, a study key).
    A cell without a value in that column scores NaN: assembly never chooses it (nor, with
    `unscored_cells`, a bank pair the file does not list).
    """
    import pandas as pd

    if column not in SCORE_COLUMNS:
        raise ValueError(f"{column!r} is not a score column; use one of {', '.join(SCORE_COLUMNS)}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        frame = pd.read_json(file) if file.suffix.lower() == ".json" else pd.read_csv(file)
    except ValueError as err:
        raise ValueError(f"{what} {str(path)!r} is not a CSV or JSON table of cells ({err})") from None
    need = {"position", "op"} | ({"predicted_delta"} if column == "best" else {column})
    if not need <= set(frame.columns):
        raise ValueError(f"{what} {str(path)!r} needs columns {', '.join(sorted(need))}; it has "
                         f"{', '.join(map(str, frame.columns)) or 'none'} (write it with `opswap predict STUDY --all "
                         "--format csv`)")
    if "epochs" in frame and frame["epochs"].nunique() > 1:
        raise ValueError(f"{what} {str(path)!r} holds {frame['epochs'].nunique()} epoch budgets "
                         f"({', '.join(map(str, sorted(frame['epochs'].unique())))}); keep the rows of one")
    if "variant" in frame and frame["variant"].notna().any():
        raise ValueError(f"{what} {str(path)!r} holds variants (sparsity, init); keep the rows of one")
    if column == "best":
        measured = frame["measured_delta"] if "measured_delta" in frame else pd.Series(float("nan"), frame.index)
        value = pd.to_numeric(measured, errors="coerce").fillna(pd.to_numeric(frame["predicted_delta"],
                                                                              errors="coerce"))
    else:
        value = pd.to_numeric(frame[column], errors="coerce")
    positions = pd.to_numeric(frame["position"], errors="coerce")
    if positions.isna().any() or (positions != positions.round()).any() or (positions < 1).any():
        bad = frame["position"][positions.isna() | (positions != positions.round()) | (positions < 1)].iloc[0]
        raise ValueError(f"{what} {str(path)!r} has a position {bad!r} that is not a 1-based integer")
    if frame["op"].isna().any():
        raise ValueError(f"{what} {str(path)!r} has a row without an op")
    keys = list(zip(positions.astype(int), frame["op"].astype(str)))
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what} {str(path)!r} lists a (position, op) cell twice")
    return {k: float(v) if pd.notna(v) else math.nan for k, v in zip(keys, value)}


def unscored_cells(scores: Mapping[tuple[int, str], float], pairs: Any) -> dict[tuple[int, str], float]:
    """`scores` with NaN for each (position, op) of `pairs` (e.g. a bank's keys) it does not score."""
    from opswap.ops import parse_op

    named = {(int(p), parse_op(op).name): v for (p, op), v in scores.items()}
    return {**{(int(p), parse_op(op).name): math.nan for p, op in pairs}, **named}
