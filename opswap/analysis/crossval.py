"""Is Δ predictable? Cross-validated predictors of a cell's accuracy change, and the noise ceiling.

One row per (position, op) cell with its measured Δ (points vs the reference trained the same
way, DESIGN.md "One Δ") and cheap features (distillation loss, replace-1 accuracy, zero-cost
proxies, params, MACs). Predictors are fitted on the training fold only and judged out of fold
under leave-one-position-out and leave-one-op-out cross-validation (scikit-learn's
`LeaveOneGroupOut`): MAE, Spearman's ρ with a percentile-bootstrap 95 % interval
(`scipy.stats.bootstrap`, paired, over cells), its p-value, Holm (Holm, Scand. J. Stat. 1979) and
Benjamini–Hochberg (J. R. Stat. Soc. B 1995) adjustments over the predictors of a scheme, the
share of cells whose sign of Δ is right, and a Wilcoxon signed-rank test of the absolute errors
against the best naive baseline of the scheme.

Predictors (names as in the `predictor` column):
- `linear:<f>` — least squares Δ = a + b·f on one feature (sign learned; the caller passes
  heavy-tailed proxies as logs, see `log_columns`); `isotonic:<f>` — isotonic regression on one
  feature, direction from the training fold's Spearman sign, clipped outside its range.
- `ridge` — RidgeCV on the median-imputed, standardised features, position (as a number) and
  one-hot op family and position; `forest` — a random forest on the features, position and
  one-hot op family.
- baselines from the training fold: `family_mean`, `position_mean` (unseen group → the global
  mean), `additive` (global mean + family effect + position effect, an unseen group's effect 0)
  and `global_mean`.
Missing feature values: training rows without the feature are dropped from a single-feature fit;
every held-out missing value is replaced by the training fold's median (inside the pipeline for
ridge / forest), so every predictor is scored on the same cells; the `imputed` column counts them.

Noise ceiling: seed-to-seed rank correlation of the cells (every seed pair; split halves with
the Spearman–Brown correction, Brown 1910 / Spearman 1910), the power of Welch/Student
two-sample t-tests (noncentral t, `scipy.stats.nct`) for minimal detectable Δ and seeds needed,
and Welch's t-test for whether a row's best cell is distinguishable from its runner-up.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

__all__ = ["SCHEMES", "BASELINES", "CrossValidation", "Reliability", "Best", "folds", "default_predictors", "predictor",
           "cross_validate", "adjust_pvalues", "verdict", "log_columns", "reliability",
           "minimal_detectable_delta", "seeds_needed", "best_distinguishable"]

SCHEMES = {"position": "position", "op": "op", "family": "op_family", "cell": "cell"}  # scheme → held-out column
BASELINES = ("global_mean", "family_mean", "position_mean", "additive")  # simplest first: wins ties
_LABELS = {"ridge": "ridge (all features)", "forest": "random forest (all features)",
           "family_mean": "op-family mean", "position_mean": "position mean",
           "additive": "additive op-family + position means", "global_mean": "global mean"}
TABLE_COLUMNS = ["scheme", "predictor", "label", "kind", "feature", "n", "n_folds", "imputed", "mae",
                 "rho", "rho_low", "rho_high", "p_value", "p_holm", "p_bh", "sign_agree", "baseline",
                 "mae_baseline", "p_vs_baseline"]
PREDICTION_COLUMNS = ["scheme", "predictor", "position", "op", "op_family", "held_out", "delta",
                      "predicted", "error", "imputed", "n"]


# -- splits and predictors ---------------------------------------------------------------------
def folds(frame: pd.DataFrame, scheme: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positional indices holding out one position / op / family at a time."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; schemes: {', '.join(SCHEMES)}")
    groups = frame[SCHEMES[scheme]].astype(str).to_numpy()
    return list(LeaveOneGroupOut().split(np.zeros(len(frame)), groups=groups))


def _single(feature: str, make: Callable[[], Any]) -> Callable:
    def fit_predict(train: pd.DataFrame, test: pd.DataFrame, seed: int):
        x, y = train[feature].to_numpy(float), train["delta"].to_numpy(float)
        ok = np.isfinite(x)
        xt = test[feature].to_numpy(float)
        imputed = ~np.isfinite(xt)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0:  # nothing to learn from: the training mean
            return np.full(len(test), y.mean()), imputed
        xt = np.where(imputed, np.median(x[ok]), xt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isotonic: "direction may be suspect" on small folds
            return make().fit(x[ok, None], y[ok]).predict(xt[:, None]), imputed
    return fit_predict


def _linear():
    from sklearn.linear_model import LinearRegression

    return LinearRegression()


def _isotonic():
    return IsotonicRegression(increasing="auto", out_of_bounds="clip")


def _pipeline(kind: str, features: Sequence[str], seed: int) -> Pipeline:
    numeric = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler())
    onehot = OneHotEncoder(handle_unknown="ignore")
    if kind == "ridge":
        columns = ColumnTransformer([("num", numeric, [*features, "position_number"]),
                                     ("cat", onehot, ["op_family", "position_label"])])
        return Pipeline([("x", columns), ("ridge", RidgeCV(alphas=np.logspace(-3, 3, 13)))])
    columns = ColumnTransformer([("num", SimpleImputer(strategy="median", keep_empty_features=True),
                                  [*features, "position_number"]), ("cat", onehot, ["op_family"])])
    return Pipeline([("x", columns), ("forest", RandomForestRegressor(
        n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1))])


def _model(kind: str, features: Sequence[str]) -> Callable:
    def fit_predict(train: pd.DataFrame, test: pd.DataFrame, seed: int):
        prep = lambda f: f.assign(position_number=f["position"].astype(float),
                                  position_label=f["position"].astype(str),
                                  op_family=f["op_family"].astype(str))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-missing features in a fold are kept as zeros
            model = _pipeline(kind, features, seed).fit(prep(train), train["delta"].to_numpy(float))
            predicted = model.predict(prep(test))
        return predicted, test[list(features)].isna().any(axis=1).to_numpy()
    return fit_predict


def _group_means(train: pd.DataFrame, test: pd.DataFrame, column: str) -> np.ndarray:
    means = train.groupby(train[column].astype(str))["delta"].mean()
    return test[column].astype(str).map(means).to_numpy(float)


def _baseline(kind: str) -> Callable:
    def fit_predict(train: pd.DataFrame, test: pd.DataFrame, seed: int):
        overall = train["delta"].mean()
        none = np.zeros(len(test), bool)
        if kind == "global_mean":
            return np.full(len(test), overall), none
        if kind in ("family_mean", "position_mean"):
            means = _group_means(train, test, "op_family" if kind == "family_mean" else "position")
            return np.where(np.isnan(means), overall, means), none
        effects = [np.nan_to_num(_group_means(train, test, c) - overall) for c in ("op_family", "position")]
        return overall + effects[0] + effects[1], none
    return fit_predict


def default_predictors(features: Sequence[str]) -> list[str]:
    """`linear:<f>` and `isotonic:<f>` per feature, `ridge`, `forest`, then the baselines."""
    return [f"{k}:{f}" for f in features for k in ("linear", "isotonic")] + ["ridge", "forest", *BASELINES]


def predictor(name: str, features: Sequence[str]) -> Callable:
    """The fit-and-predict function `(train, test, seed) -> (predicted, imputed)` of a predictor name."""
    return _resolve(name, features)[3]


def _resolve(name: str, features: Sequence[str]) -> tuple[str, str | None, str, Callable]:
    """(kind, feature, label, fit_predict) of a predictor name."""
    if ":" in name:
        kind, feature = name.split(":", 1)
        if kind not in ("linear", "isotonic") or feature not in features:
            raise ValueError(f"unknown predictor {name!r}: single-feature predictors are "
                             f"'linear:<feature>' or 'isotonic:<feature>' with a feature of {list(features)}")
        make = _linear if kind == "linear" else _isotonic
        return "single", feature, f"{kind} in {feature}", _single(feature, make)
    if name in ("ridge", "forest"):
        return "model", None, _LABELS[name], _model(name, features)
    if name in BASELINES:
        return "baseline", None, _LABELS[name], _baseline(name)
    raise ValueError(f"unknown predictor {name!r}; use 'linear:<feature>', 'isotonic:<feature>', "
                     f"'ridge', 'forest' or a baseline ({', '.join(BASELINES)})")


# -- statistics --------------------------------------------------------------------------------
def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's ρ along `axis` (average ranks); NaN where either side is constant."""
    rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis, keepdims=True)
    ry = ry - ry.mean(axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis) / np.sqrt((rx ** 2).sum(axis) * (ry ** 2).sum(axis))


def _bootstrap_interval(data: tuple, statistic: Callable, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile 95 % interval by scipy.stats.bootstrap; degenerate resamples (NaN) left out."""
    if n_boot <= 0 or len(data[0]) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap(data, statistic, paired=len(data) > 1, vectorized=True, n_resamples=n_boot,
                                 method="percentile", rng=np.random.default_rng(seed), batch=200)
    values = np.asarray(result.bootstrap_distribution, float)
    values = values[np.isfinite(values)]
    if len(values) < n_boot / 2:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm (step-down, family-wise) or Benjamini–Hochberg ("bh") adjusted p-values; NaN kept."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    if method == "bh":
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    elif method == "holm":
        values = p[ok]
        order = np.argsort(values)
        m = len(values)
        stepped = np.maximum.accumulate((m - np.arange(m)) * values[order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(stepped, 1.0)
        out[ok] = adjusted
    else:
        raise ValueError(f"method must be 'holm' or 'bh', not {method!r}")
    return out


def _scores(pred: np.ndarray, delta: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    nonzero = delta != 0
    out = {"mae": float(np.mean(np.abs(pred - delta))),
           "sign_agree": float(np.mean(np.sign(pred[nonzero]) == np.sign(delta[nonzero])))
           if nonzero.any() else math.nan,
           "rho": math.nan, "p_value": math.nan, "rho_low": math.nan, "rho_high": math.nan}
    if len(pred) >= 3 and np.ptp(pred) > 0 and np.ptp(delta) > 0:
        result = stats.spearmanr(pred, delta)
        out["rho"], out["p_value"] = float(result.statistic), float(result.pvalue)
        out["rho_low"], out["rho_high"] = _bootstrap_interval((pred, delta), _spearman, n_boot, seed)
    return out


# -- cross-validation --------------------------------------------------------------------------
@dataclass
class CrossValidation:
    """`table`: one row per scheme × predictor; `predictions`: one row per scheme × predictor × cell."""

    table: pd.DataFrame
    predictions: pd.DataFrame

    def most_wrong(self, k: int = 5, *, scheme: str | None = None, predictor: str | None = None) -> pd.DataFrame:
        """The k cells with the largest |predicted − measured| (of one scheme / predictor if given)."""
        p = self.predictions
        if scheme is not None:
            p = p[p["scheme"] == scheme]
        if predictor is not None:
            p = p[p["predictor"] == predictor]
        return p.reindex(p["error"].abs().sort_values(ascending=False).index).head(k).reset_index(drop=True)


def _check_frame(frame: pd.DataFrame, features: Sequence[str], target: str) -> pd.DataFrame:
    need = ["position", "op", "op_family", target, *features]
    missing = [c for c in need if c not in frame]
    if missing:
        raise ValueError(f"the cell frame lacks column(s) {missing}; it needs position, op, op_family, "
                         f"{target!r} and the features {list(features)} (one row per (position, op) cell)")
    data = frame[frame[target].notna()].copy()
    if data.duplicated(["position", "op"]).any():
        raise ValueError("the cell frame has several rows for one (position, op); average the seeds of "
                         "each cell first (one epoch budget and init at a time)")
    for column in features:
        data[column] = pd.to_numeric(data[column], errors="coerce").astype(float)
    data["delta"] = data[target].astype(float)
    data["cell"] = data["position"].astype(str) + ":" + data["op"].astype(str)
    if "n" not in data:
        data["n"] = np.nan
    return data.reset_index(drop=True)


def cross_validate(frame: pd.DataFrame, features: Sequence[str], *, target: str = "delta",
                   schemes: Sequence[str] = ("position", "op"), predictors: Sequence[str] | None = None,
                   seed: int = 0, n_boot: int = 1000) -> CrossValidation:
    """Out-of-fold scores of every predictor under each leave-one-group-out scheme.

    `frame` holds one row per (position, op) cell: position, op, op_family, `target` (Δ in points),
    n (seeds) and the `features`; cells without a target are left out. See the module docstring.
    """
    data = _check_frame(frame, features, target)
    names = list(predictors) if predictors is not None else default_predictors(features)
    resolved = {name: _resolve(name, features) for name in names}
    rows, predictions = [], []
    for scheme in schemes:
        splits = folds(data, scheme)
        if len(splits) < 3:
            raise ValueError(f"leave-one-{scheme}-out needs at least 3 distinct values of "
                             f"{SCHEMES[scheme]!r}; the frame has {len(splits)}")
        held = data[SCHEMES[scheme]].astype(str).to_numpy()
        errors = {}
        for name, (kind, feature, label, fit_predict) in resolved.items():
            pred, imputed = np.full(len(data), np.nan), np.zeros(len(data), bool)
            for train, test in splits:
                assert not set(held[train]) & set(held[test])  # the held-out group never trains
                pred[test], imputed[test] = fit_predict(data.iloc[train], data.iloc[test], seed)
            delta = data["delta"].to_numpy(float)
            errors[name] = np.abs(pred - delta)
            rows.append({"scheme": scheme, "predictor": name, "label": label, "kind": kind, "feature": feature,
                         "n": len(data), "n_folds": len(splits), "imputed": int(imputed.sum()),
                         **_scores(pred, delta, n_boot, seed)})
            predictions.append(pd.DataFrame({
                "scheme": scheme, "predictor": name, "position": data["position"], "op": data["op"],
                "op_family": data["op_family"], "held_out": held, "delta": delta, "predicted": pred,
                "error": pred - delta, "imputed": imputed, "n": data["n"]}))
        _compare_with_baseline(rows, scheme, errors)
    table = pd.DataFrame(rows)
    for scheme in schemes:
        mask = table["scheme"] == scheme
        table.loc[mask, "p_holm"] = adjust_pvalues(table.loc[mask, "p_value"], "holm")
        table.loc[mask, "p_bh"] = adjust_pvalues(table.loc[mask, "p_value"], "bh")
    return CrossValidation(table.reindex(columns=TABLE_COLUMNS),
                           pd.concat(predictions, ignore_index=True).reindex(columns=PREDICTION_COLUMNS))


def _compare_with_baseline(rows: list[dict], scheme: str, errors: dict[str, np.ndarray]) -> None:
    """Best baseline of the scheme by MAE; Wilcoxon signed-rank of |errors| against it."""
    mine = [r for r in rows if r["scheme"] == scheme]
    bases = [r for r in mine if r["kind"] == "baseline"]
    if not bases:
        return
    base = min(bases, key=lambda r: (round(r["mae"], 12), BASELINES.index(r["predictor"])))
    for r in mine:
        r["baseline"], r["mae_baseline"] = base["predictor"], base["mae"]
        diff = errors[r["predictor"]] - errors[base["predictor"]]
        r["p_vs_baseline"] = (float(stats.wilcoxon(diff).pvalue) if np.count_nonzero(diff) >= 1
                              and r is not base else math.nan)


def log_columns(frame: pd.DataFrame, columns: Sequence[str], prefix: str = "log_") -> pd.DataFrame:
    """A copy with sign(v)·log10(1 + |v|) of each column added as `<prefix><column>`."""
    out = frame.copy()
    for c in columns:
        v = pd.to_numeric(out[c], errors="coerce").astype(float)
        out[prefix + c] = np.sign(v) * np.log10(1 + np.abs(v))
    return out


def _scheme_words(scheme: str) -> str:
    return {"position": "leave-one-position-out", "op": "leave-one-op-out",
            "family": "leave-one-family-out", "cell": "leave-one-cell-out"}.get(scheme, f"leave-one-{scheme}-out")


def verdict(cv_table: pd.DataFrame, ceiling: Any = None, *, scheme: str = "position",
            correction: str = "holm", alpha: float = 0.05) -> str:
    """One quotable sentence: the best predictor by MAE under `scheme` against the best baseline."""
    column, word = {"holm": ("p_holm", "Holm"), "bh": ("p_bh", "Benjamini–Hochberg")}[correction]
    table = cv_table[(cv_table["scheme"] == scheme) & cv_table["mae"].notna()]
    models, bases = table[table["kind"] != "baseline"], table[table["kind"] == "baseline"]
    if models.empty or bases.empty:
        return f"Under {_scheme_words(scheme)} CV there is nothing to compare (no predictor or no baseline)."
    best = models.loc[models["mae"].idxmin()]
    base = bases.loc[bases["predictor"] == best["baseline"]].iloc[0] if best["baseline"] in set(
        bases["predictor"]) else bases.loc[bases["mae"].idxmin()]
    rho = ("ρ undefined (constant predictions)" if math.isnan(best["rho"]) else
           f"ρ = {best['rho']:.2f} [{best['rho_low']:.2f}, {best['rho_high']:.2f}], "
           f"{word}-adjusted {_p(best[column])}"
           + ("" if best[column] < alpha else ", not significant"))
    better = best["mae"] < base["mae"]
    significant = better and best["p_vs_baseline"] < alpha
    how = "better than" if significant else "not significantly better than" if better else "no better than"
    text = (f"Under {_scheme_words(scheme)} CV (n = {int(best['n'])} cells) the best predictor, {best['label']}, "
            f"predicts Δ with MAE {best['mae']:.2f} points ({rho}), {how} the {base['label']} "
            f"(MAE {base['mae']:.2f}; Wilcoxon {_p(best['p_vs_baseline'])} on the absolute errors)")
    return text + _ceiling_words(ceiling) + "."


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"


def _ceiling_words(ceiling: Any) -> str:
    if ceiling is None:
        return ""
    if isinstance(ceiling, Reliability):
        ceiling = {"ceiling": ceiling.ceiling, "low": ceiling.ceiling_low, "high": ceiling.ceiling_high}
    if isinstance(ceiling, Mapping):
        value, low, high = ceiling.get("ceiling"), ceiling.get("low", math.nan), ceiling.get("high", math.nan)
    else:
        value, low, high = float(ceiling), math.nan, math.nan
    interval = "" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]"
    return f"; the seed-to-seed noise ceiling is ρ ≈ {value:.2f}{interval}"


# -- noise ceiling -----------------------------------------------------------------------------
@dataclass
class Reliability:
    """Seed-to-seed agreement of cells: pairwise ρ, split-half ρ with Spearman–Brown, the ceiling."""

    pairs: pd.DataFrame  # seed_a, seed_b, rho, n
    pairwise: float  # mean ρ over seed pairs: the reliability of one seed
    split_half: float  # mean ρ between the means of random half-splits of each cell's seeds
    spearman_brown: float  # 2r/(1+r): the reliability of a cell's mean over all its seeds
    low: float
    high: float  # bootstrap 95 % interval (over cells) of spearman_brown
    ceiling: float  # √spearman_brown: the largest ρ a perfect predictor can show against the means
    ceiling_low: float
    ceiling_high: float
    n_cells: int
    n_seeds: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("pairwise", "split_half", "spearman_brown", "low", "high",
                                              "ceiling", "ceiling_low", "ceiling_high", "n_cells", "n_seeds")}


def _brown(r):
    r = np.asarray(r, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * r / (1 + r)


def reliability(frame_per_seed: pd.DataFrame, *, value: str = "test_acc", cell: Sequence[str] = ("position", "op"),
                seed_col: str = "seed", n_splits: int = 50, n_boot: int = 1000, seed: int = 0) -> Reliability:
    """How well do seeds agree on the ranking of cells? (Reference rows, position NaN, are left out.)"""
    cell = list(cell)
    missing = [c for c in [*cell, seed_col, value] if c not in frame_per_seed]
    if missing:
        raise ValueError(f"the per-seed frame lacks column(s) {missing}; it needs {cell + [seed_col, value]}")
    data = frame_per_seed.dropna(subset=[*cell, value])
    if data.duplicated([*cell, seed_col]).any():
        raise ValueError("several rows for one cell and seed; keep one epoch budget and init at a time")
    wide = data.pivot_table(index=cell, columns=seed_col, values=value, aggfunc="first")
    seeds = list(wide.columns)
    pairs = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            both = wide[[a, b]].dropna()
            rho = float(_spearman(both[a].to_numpy(), both[b].to_numpy())) if len(both) >= 3 else math.nan
            pairs.append({"seed_a": a, "seed_b": b, "rho": rho, "n": len(both)})
    pairs = pd.DataFrame(pairs, columns=["seed_a", "seed_b", "rho", "n"])
    values = [row[np.isfinite(row)] for row in wide.to_numpy(float)]
    values = [v for v in values if len(v) >= 2]
    nan = math.nan
    if len(values) < 3:
        return Reliability(pairs, float(pairs["rho"].mean()) if len(pairs) else nan, nan, nan, nan, nan, nan,
                           nan, nan, len(values), len(seeds))
    rng = np.random.default_rng(seed)
    halves = np.empty((n_splits, len(values), 2))  # per split and cell: the two half means
    for s in range(n_splits):
        for c, v in enumerate(values):
            v = rng.permutation(v)
            halves[s, c] = v[: len(v) // 2].mean(), v[len(v) // 2:].mean()

    def split_half(index, axis=-1):  # mean split-half ρ of the cells `index` (vectorised over resamples)
        index = np.asarray(index, int)
        h = halves[:, index]  # (splits, ..., cells, 2)
        return np.nanmean(_spearman(h[..., 0], h[..., 1], axis=-1), axis=0)

    r = float(split_half(np.arange(len(values))))
    low, high = _bootstrap_interval((np.arange(len(values)),), split_half, n_boot, seed)
    sb, sb_low, sb_high = (float(_brown(v)) for v in (r, low, high))
    root = lambda v: math.sqrt(v) if v >= 0 else (nan if math.isnan(v) else 0.0)
    return Reliability(pairs, float(pairs["rho"].mean()), r, sb, sb_low, sb_high, root(sb), root(sb_low),
                       root(sb_high), len(values), len(seeds))


def _power(delta: float, std: float, n: float, n_ref: float, alpha: float, method: str) -> float:
    """Power of the two-sided two-sample test (Student's t with pooled std, or the normal approximation)."""
    se = std * math.sqrt(1 / n + 1 / n_ref)
    if method == "normal":
        z = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(z - delta / se) + stats.norm.cdf(-z - delta / se))
    df = n + n_ref - 2
    t = stats.t.ppf(1 - alpha / 2, df)
    ncp = delta / se
    value = float(stats.nct.sf(t, df, ncp) + stats.nct.cdf(-t, df, ncp))
    if math.isfinite(value):
        return value
    # scipy's noncentral t turns NaN at few degrees of freedom and large ncp (df = 1: a cell of two
    # seeds against a reference of one): the same power as an integral over the chi-square of the std.
    from scipy import integrate

    def given(v: float) -> float:
        edge = t * math.sqrt(v / df)
        return (stats.norm.sf(edge - ncp) + stats.norm.cdf(-edge - ncp)) * stats.chi2.pdf(v, df)

    return float(min(1.0, integrate.quad(given, 0, math.inf, limit=200)[0]))


def _check_test(std: float, alpha: float, power: float, method: str) -> None:
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    if method not in ("t", "normal"):
        raise ValueError(f"method must be 't' (noncentral t) or 'normal', not {method!r}")


def minimal_detectable_delta(std: float, n: int, alpha: float = 0.05, power: float = 0.8, *,
                             n_ref: int | None = None, method: str = "t") -> float:
    """Smallest true Δ a two-sided two-sample t-test (n and n_ref seeds, common std) detects with `power`."""
    _check_test(std, alpha, power, method)
    n_ref = n if n_ref is None else n_ref
    if method == "normal":
        return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * std * math.sqrt(1 / n + 1 / n_ref))
    if n + n_ref < 3:
        raise ValueError(f"a t-test needs n + n_ref >= 3 seeds, got {n} and {n_ref}")
    high = std
    while _power(high, std, n, n_ref, alpha, method) < power:
        high *= 2
    return float(optimize.brentq(lambda d: _power(d, std, n, n_ref, alpha, method) - power, 0.0, high,
                                 xtol=1e-12))


def seeds_needed(std: float, delta: float = 0.5, alpha: float = 0.05, power: float = 0.8, *,
                 method: str = "t", max_n: int = 1_000_000) -> int:
    """Fewest seeds per arm (both arms alike) for which the two-sided t-test detects `delta` with `power`."""
    _check_test(std, alpha, power, method)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    n = 2
    while _power(delta, std, n, n, alpha, method) < power:
        n = n + 1 if n < 64 else int(n * 1.05) + 1
        if n > max_n:
            raise ValueError(f"more than {max_n} seeds per arm would be needed")
    while n > 2 and _power(delta, std, n - 1, n - 1, alpha, method) >= power:  # back off the coarse steps
        n -= 1
    return n


@dataclass(frozen=True)
class Best:
    """The best cell of a row and whether Welch's t-test tells it from the runner-up."""

    best: Any
    runner_up: Any
    best_mean: float
    runner_up_mean: float
    p_value: float
    distinguishable: bool
    label: str  # "▲" when distinguishable, else "tied within noise" (or why no test was possible)


def best_distinguishable(samples: Mapping[Any, Sequence[float]], *, alpha: float = 0.05,
                         higher_is_better: bool = True) -> Best:
    """Best cell by mean, and whether it differs from the runner-up (two-sided Welch t-test at `alpha`)."""
    clean = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for k, v in samples.items()}
    clean = {k: v for k, v in clean.items() if len(v)}
    if not clean:
        raise ValueError("best_distinguishable needs at least one cell with a finite sample")
    order = sorted(clean, key=lambda k: clean[k].mean(), reverse=higher_is_better)
    best = order[0]
    if len(order) == 1:
        return Best(best, None, float(clean[best].mean()), math.nan, math.nan, False, "only one cell")
    a, b = clean[best], clean[order[1]]
    if len(a) < 2 or len(b) < 2:
        return Best(best, order[1], float(a.mean()), float(b.mean()), math.nan, False,
                    "too few seeds to tell")
    if a.std() == 0 and b.std() == 0:
        p = 1.0 if a.mean() == b.mean() else 0.0
    else:
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    ok = p < alpha
    return Best(best, order[1], float(a.mean()), float(b.mean()), p, ok, "▲" if ok else "tied within noise")
