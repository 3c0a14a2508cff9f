"""The report's assembly section (LANA phase 2, Molchanov et al., ECCV 2022): is the MILP's pick
better than random, greedy and uniform picks at the same budget, and does the additivity the
method assumes hold — for costs (teacher − replaced blocks + chosen ops) and for scores (the
summed per-pair scores against the assembled networks' accuracy)?

Pure: a results frame in, blocks out. Trials are the records of an assemble study (settings
`picked_by`, `budget`, `objective`, `assignment`; metrics `predicted_*`, `measured_*`,
`score_*`, `assembled_acc`), and the teacher fine-tuned the same way is the reference (DESIGN.md,
"One Δ"). Tests: Welch's t (`scipy.stats.ttest_ind(equal_var=False)`), trials as units (picks ×
seeds); rank agreement: Spearman's ρ with a percentile bootstrap interval (`scipy.stats.bootstrap`),
distinct networks as units.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy import stats

from opswap.report.blocks import Block
from opswap.report.numbers import MISSING, mean_sd as _mean_sd, p_text as _p, welch as _welch

__all__ = ["is_assembly", "assembly_blocks", "pick_table", "welch_table", "cost_error_table", "additivity_table",
           "accuracy_vs_cost", "predicted_vs_actual"]

_COST_METRICS = [("params", "params"), ("macs", "MACs"), ("latency_b1", "latency, batch 1"),
                 ("latency_batch", "latency, throughput batch")]
_SCORES = [("score_replace1", "Σ replace-1 Δ"), ("score_distill_loss", "−Σ held-out distill loss"),
           ("score_train_distill_loss", "−Σ training distill loss"),
           ("score_predicted", "Σ substitution-study Δ (objective predicted)")]


def is_assembly(frame: pd.DataFrame) -> bool:
    """Whether the records hold assembled networks."""
    return "picked_by" in frame and frame["picked_by"].notna().any()


def _picks(frame: pd.DataFrame) -> pd.DataFrame:
    data = frame[(frame["status"] == "ok") & frame["picked_by"].notna() & frame["test_acc"].notna()].copy()
    objective = data["objective"] if "objective" in data else pd.Series(None, index=data.index, dtype=object)
    data["method"] = [f"{p} ({o})" if isinstance(o, str) else p for p, o in zip(data["picked_by"], objective)]
    return data


def _reference(frame: pd.DataFrame) -> pd.DataFrame:
    """The teacher fine-tuned like the picks: unmodified network, init teacher."""
    picked = frame["picked_by"].notna() if "picked_by" in frame else pd.Series(False, index=frame.index)
    return frame[(frame["status"] == "ok") & ~picked & frame["position"].isna() & (frame["init"] == "teacher")
                 & frame["test_acc"].notna()]


def _order(method: str) -> tuple:
    return (["milp", "greedy", "random", "uniform"].index(method.split(" ")[0])
            if method.split(" ")[0] in ("milp", "greedy", "random", "uniform") else 9, method)


def pick_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per epochs × budget × pick method: accuracy mean ± sd (n trials), Δ vs the reference, costs."""
    data, reference = _picks(frame), _reference(frame)
    rows = []
    for (epochs, budget), group in data.groupby(["epochs", "budget"], sort=True):
        ref = reference[reference["epochs"] == epochs]["test_acc"]
        for method in sorted(group["method"].unique(), key=_order):
            part = group[group["method"] == method]
            delta = part["test_acc"].mean() - ref.mean() if len(ref) else math.nan
            rows.append({"epochs": int(epochs), "budget": budget, "picked by": method,
                         "networks": part["assignment"].nunique() if "assignment" in part else len(part),
                         "test acc (%)": _mean_sd(part["test_acc"]),
                         "Δ vs teacher fine-tuned": MISSING if not math.isfinite(delta) else f"{delta:+.2f}",
                         "before fine-tuning (%)": _mean_sd(part.get("assembled_acc", pd.Series(dtype=float))),
                         "predicted score": _mean_sd(part.get("predicted_score", pd.Series(dtype=float)), 3),
                         "measured MACs (× teacher)": _mean_sd(part.get("measured_macs_fraction",
                                                                         pd.Series(dtype=float)), 3)})
    for epochs, ref in reference.groupby("epochs"):
        rows.append({"epochs": int(epochs), "budget": "none (1.0)", "picked by": "teacher fine-tuned",
                     "networks": 1, "test acc (%)": _mean_sd(ref["test_acc"]), "Δ vs teacher fine-tuned": "+0.00",
                     "before fine-tuning (%)": MISSING, "predicted score": MISSING,
                     "measured MACs (× teacher)": "1.000"})
    return pd.DataFrame(rows)


def welch_table(frame: pd.DataFrame) -> pd.DataFrame:
    """MILP picks against each other pick method at the same budget: Δ of means, Welch's t and p."""
    data = _picks(frame)
    rows = []
    for (epochs, budget), group in data.groupby(["epochs", "budget"], sort=True):
        milps = sorted(m for m in group["method"].unique() if m.startswith("milp"))
        for milp in milps:
            a = group[group["method"] == milp]["test_acc"]
            for other in sorted((m for m in group["method"].unique() if m != milp), key=_order):
                b = group[group["method"] == other]["test_acc"]
                t, p = _welch(a, b)
                rows.append({"epochs": int(epochs), "budget": budget, "MILP": milp, "vs": other,
                             "Δ mean (pp)": f"{a.mean() - b.mean():+.2f}", "n MILP": len(a), "n other": len(b),
                             "Welch t": MISSING if not math.isfinite(t) else f"{t:.2f}", "p": _p(p),
                             "MILP better": "yes" if math.isfinite(p) and p < 0.05 and a.mean() > b.mean()
                             else "no"})
    return pd.DataFrame(rows)


def _networks(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct assembled network (and epoch budget): predictions, test acc seed mean."""
    data = _picks(frame)
    if data.empty:
        return data
    columns = [c for c in data.columns if c.startswith(("predicted_", "measured_", "score_", "teacher_"))
               or c == "assembled_acc"]
    agg = {c: "first" for c in columns}
    agg.update(test_acc="mean", trial_id="count")
    networks = data.groupby(["epochs", "assignment"], dropna=False).agg(agg)
    return networks.rename(columns={"trial_id": "trials"}).reset_index()


def cost_error_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The additive estimate (teacher − replaced blocks + chosen ops) against the measured network."""
    networks = _networks(frame)
    if networks.empty:
        return pd.DataFrame()
    networks = networks.drop_duplicates("assignment")
    rows = []
    for metric, name in _COST_METRICS:
        predicted, measured = f"predicted_{metric}", f"measured_{metric}"
        if predicted not in networks or measured not in networks:
            continue
        pair = networks[[predicted, measured]].astype(float).dropna()
        if pair.empty:
            continue
        error = 100.0 * (pair[predicted] - pair[measured]) / pair[measured]
        rows.append({"cost": name, "networks": len(pair), "mean error (%)": f"{error.mean():+.2f}",
                     "mean |error| (%)": f"{error.abs().mean():.2f}", "max |error| (%)": f"{error.abs().max():.2f}",
                     "exact": "yes" if (pair[predicted] == pair[measured]).all() else "no"})
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _rho_with_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """ρ, its p-value and a percentile-bootstrap 95 % interval over paired resamples."""
    rho = _spearman(x, y)
    if len(x) < 3 or not math.isfinite(rho):
        return rho, math.nan, math.nan, math.nan
    p = float(stats.spearmanr(x, y).pvalue)
    if len(x) < 5:
        return rho, p, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap((x, y), _spearman, paired=True, vectorized=False, n_resamples=999,
                                 confidence_level=0.95, method="percentile", random_state=0)
    # Resamples with a constant side have no ρ: the percentiles are taken over the others.
    values = np.asarray(result.bootstrap_distribution, dtype=float)
    if np.isfinite(values).mean() < 0.5:
        return rho, p, math.nan, math.nan
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return rho, p, float(low), float(high)


def additivity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of the summed per-pair scores against the assembled networks' accuracy."""
    networks = _networks(frame)
    rows = []
    targets = [("assembled_acc", "before fine-tuning"), ("test_acc", "after fine-tuning (seed mean)")]
    for score, score_name in _SCORES:
        if score not in networks or networks[score].notna().sum() < 3:
            continue
        for target, target_name in targets:
            if target not in networks:
                continue
            # Before fine-tuning the accuracy does not depend on the epoch budget: count each network once.
            part = networks.drop_duplicates("assignment") if target == "assembled_acc" else networks
            for epochs, group in ([("any", part)] if target == "assembled_acc" else part.groupby("epochs")):
                pair = group[[score, target]].astype(float).dropna()
                rho, p, low, high = _rho_with_interval(pair[score].to_numpy(), pair[target].to_numpy())
                mae = MISSING
                if score == "score_replace1" and target == "assembled_acc" and "predicted_acc" in group:
                    err = (group["predicted_acc"].astype(float) - group["assembled_acc"].astype(float)).dropna()
                    mae = f"{err.abs().mean():.2f} (bias {err.mean():+.2f})" if len(err) else MISSING
                rows.append({"score": score_name, "accuracy": target_name,
                             "epochs": epochs if epochs == "any" else int(epochs), "networks": len(pair),
                             "Spearman ρ": MISSING if not math.isfinite(rho) else f"{rho:.2f}",
                             "95 % interval": MISSING if not math.isfinite(low) else f"[{low:.2f}, {high:.2f}]",
                             "p": _p(p), "|predicted − actual| (pp)": mae})
    return pd.DataFrame(rows)


def _empty(message: str) -> Figure:
    figure = Figure(figsize=(5, 2))
    figure.text(0.5, 0.5, message, ha="center", va="center")
    return figure


def accuracy_vs_cost(frame: pd.DataFrame) -> Figure:
    """Test accuracy against the measured cost (fraction of the teacher), one point per trial."""
    data, reference = _picks(frame), _reference(frame)
    metrics = [(f"measured_{m}_fraction", f"measured {n} (× teacher)") for m, n in _COST_METRICS[1:3]
               if f"measured_{m}_fraction" in data and data[f"measured_{m}_fraction"].notna().any()]
    if data.empty or not metrics:
        return _empty("no assembled trials with measured costs yet")
    figure = Figure(figsize=(5.2 * len(metrics) + 1.5, 4.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics), squeeze=False)).ravel()
    order = sorted(data["method"].unique(), key=_order)
    for ax, (column, label) in zip(axes, metrics):
        sns.scatterplot(data=data, x=column, y="test_acc", hue="method", hue_order=order, style="budget", s=45,
                        alpha=0.8, ax=ax, legend=ax is axes[-1])
        if len(reference):
            ax.axhline(reference["test_acc"].mean(), ls="--", lw=1, color="#555555",
                       label=f"teacher fine-tuned (n={len(reference)})")
        ax.set(xlabel=label, ylabel="test accuracy (%)")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), fontsize=7)
    return figure


def predicted_vs_actual(frame: pd.DataFrame) -> Figure:
    """Teacher accuracy + Σ replace-1 Δ against the accuracy before and after fine-tuning."""
    networks = _networks(frame)
    if networks.empty or "predicted_acc" not in networks or networks["predicted_acc"].notna().sum() < 1:
        return _empty("no replace-1 predictions yet")
    data = _picks(frame)
    method = data.groupby("assignment")["method"].agg(lambda v: sorted(set(v), key=_order)[0])
    networks = networks.assign(method=networks["assignment"].map(method))
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    order = sorted(data["method"].unique(), key=_order)  # the colours of the accuracy-vs-cost figure
    for ax, (target, title) in zip(axes, [("assembled_acc", "before fine-tuning"),
                                          ("test_acc", "after fine-tuning (seed mean)")]):
        part = networks.drop_duplicates("assignment") if target == "assembled_acc" else networks
        sns.scatterplot(data=part, x="predicted_acc", y=target, hue="method", hue_order=order, s=45, alpha=0.8,
                        ax=ax, legend=ax is axes[-1])
        if target == "assembled_acc":
            values = part[["predicted_acc", target]].astype(float).to_numpy().ravel()
            values = values[np.isfinite(values)]
            if len(values):
                ax.plot([values.min(), values.max()], [values.min(), values.max()], ls=":", color="#777777",
                        lw=1, label="y = x")
        ax.set(xlabel="teacher acc + Σ replace-1 Δ (%)", ylabel="accuracy (%)", title=title)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), fontsize=7)
    return figure


def assembly_blocks(frame: pd.DataFrame) -> list[Block]:
    """The blocks of the report's assembly section."""
    block = Block
    data = _picks(frame)
    if data.empty:
        return [block("text", "No assembled trial has finished yet.")]
    out = [block("text", "Each budget's networks were picked by the MILP (the k best summed per-pair scores "
                 "within the budget) and by baselines at the same budget: random feasible picks, a greedy pick, "
                 "and one op everywhere it fits (uniform); each was fine-tuned per seed. Units: trials (picks × "
                 "seeds) for the tests, distinct networks for the rank statistics.")]
    out.append(block("table", pick_table(frame), "test accuracy (%) per budget and pick method, mean ± sd "
                     "(n trials); Δ vs the teacher fine-tuned the same way"))
    welch = welch_table(frame)
    if len(welch):
        out.append(block("table", welch, "MILP against each other pick at the same budget: Welch's t-test "
                         "(scipy.stats.ttest_ind, equal_var=False)"))
    out.append(block("figure", accuracy_vs_cost(frame), "test accuracy against measured cost (fraction of the "
                     "teacher); dashed: the teacher fine-tuned", "assembly-accuracy-vs-cost"))
    costs = cost_error_table(frame)
    if len(costs):
        out.append(block("table", costs, "additive cost estimate against the assembled network measured whole "
                         "(error = (estimate − measured) / measured, over distinct networks)"))
    additivity = additivity_table(frame)
    if len(additivity):
        out.append(block("table", additivity, "do the summed per-pair scores predict the assembled network? "
                         "Spearman ρ, percentile bootstrap 95 % interval (scipy.stats.bootstrap, 999 resamples)"))
        out.append(block("figure", predicted_vs_actual(frame), "predicted accuracy (teacher + Σ replace-1 Δ) "
                         "against the assembled network's accuracy", "assembly-additivity"))
    return out
