"""Figures of a study (seaborn on matplotlib `Figure` objects, no pyplot state, Agg-rendered).

The accuracy heatmap (the seeds' tables as colour), learning curves (figures 2–5 of the
dynamic-pruning paper, seeds/dynamic-pruning-cnn), predictor scatter plots for the
predictability question, the method-comparison grouped bars of its figure 6 — on measured,
normalised criteria (see `tables.method_table`: 1 = best among the methods shown, higher is
better for every bar) — and accuracy against sparsity for pruned variants.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from opswap.analysis.predict import NUMERIC_PREDICTORS, points, predictability
from opswap.analysis.tables import FAMILY_ORDER, labelled, method_table, sort_key, summary

CURVES = [("train_acc", "train accuracy (%)"), ("test_acc", "test accuracy (%)"),
          ("train_loss", "train loss"), ("test_loss", "test loss")]


def _empty(message: str) -> Figure:
    figure = Figure(figsize=(5, 2))
    figure.text(0.5, 0.5, message, ha="center", va="center")
    return figure


def accuracy_heatmap(frame: pd.DataFrame, metric: str = "test_acc") -> Figure:
    """Position × candidate per epoch budget: colour = Δ vs baseline, text = mean (n)."""
    long = summary(frame, metric)
    long = long[~long["is_reference"] & ~long["row"].str.endswith("baseline")]
    if long.empty or long["n"].sum() == 0:
        return _empty("no finished swapped trials")
    budgets = sorted(long["epochs"].dropna().unique())
    widest = long["candidate"].nunique()
    figure = Figure(figsize=(1.3 + (1.4 * widest + 1.5) * len(budgets),
                             2.2 + 0.55 * long["row"].nunique()), layout="constrained")  # room for the labels
    axes = np.atleast_1d(figure.subplots(1, len(budgets), squeeze=False)[0])
    has_delta = long["delta"].notna().any()
    limit = max(float(np.nanmax(np.abs(long["delta"]))) if has_delta else 0.0, 1e-9)
    rows = sorted(long["row"].unique(), key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else r))
    columns = sorted(long["candidate"].unique(), key=sort_key)
    for ax, epochs in zip(axes, budgets):
        part = long[long["epochs"] == epochs]
        value = part.pivot(index="row", columns="candidate", values="delta" if has_delta else "mean")
        text = part.assign(t=[("—" if n == 0 else f"{m:.2f}\n({n})")  # as the tables print it
                              for m, n in zip(part["mean"], part["n"])])
        text = text.pivot(index="row", columns="candidate", values="t").reindex(index=rows, columns=columns)
        value = value.reindex(index=rows, columns=columns).astype(float)
        with warnings.catch_warnings():  # seaborn 0.13 calls a deprecated cmap.set_bad
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            _heatmap(value, text, ax, has_delta, limit, metric)
        ax.set_facecolor("#dddddd")  # missing cells show as grey
        ax.set(title=f"{int(epochs)} epoch" + ("" if epochs == 1 else "s"), xlabel="candidate",
               ylabel="position")
        ax.tick_params(axis="x", labelrotation=35)
    return figure


def _heatmap(value: pd.DataFrame, text: pd.DataFrame, ax, has_delta: bool, limit: float,
             metric: str) -> None:
    """One seaborn heatmap: diverging around 0 for Δ, sequential for plain means."""
    options = dict(cmap="RdBu", center=0, vmin=-limit, vmax=limit) if has_delta else \
        dict(cmap="viridis")
    sns.heatmap(value, ax=ax, annot=text.astype(object).fillna(""), fmt="", linewidths=0.5,
                linecolor="white", annot_kws={"fontsize": 8},
                cbar_kws={"label": f"Δ {metric} vs baseline" if has_delta else metric}, **options)


def learning_curves(history: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Train/test accuracy and loss per epoch; mean over seeds with a ±1 sd band."""
    if history.empty:
        return _empty("no history yet")
    history = labelled(history.assign(status="ok"))
    history["series"] = [c if r == "baseline" else f"p{r} {c}"
                         for r, c in zip(history["row"], history["candidate"])]
    if history["epochs"].nunique() > 1:
        history["series"] += " (" + history["epochs"].astype(str) + " ep)"
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    axes = figure.subplots(2, 2).ravel()
    order = sorted(history["series"].unique(), key=lambda s: (s != "baseline", s))
    for ax, (column, label) in zip(axes, CURVES):
        data = history[history[column].notna()]
        if data.empty:
            ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
            continue
        sns.lineplot(data=data, x="epoch", y=column, hue="series", hue_order=order,
                     errorbar="sd", marker="o", markersize=3, ax=ax, legend=ax is axes[0])
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes[0].get_legend() is not None:
        sns.move_legend(axes[0], "lower right", fontsize=7, title=None)
    if title:
        figure.suptitle(title)
    return figure


COUNT_PREDICTORS = ("params", "macs", "op_params_count", "op_macs")


def _count_axis(ax, values: pd.Series) -> None:
    """Counts as 12k / 1.5M with few ticks (long integers overlap); log scale over > 20×."""
    low, high = values.min(), values.max()
    if low > 0 and high / low > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(numticks=4))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def _integer_axis(ax, values: pd.Series) -> None:
    """Positions are categories with an order: a tick at each position present, integer labels."""
    ticks = sorted({int(v) for v in values.dropna()})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)


def predictor_scatter(frame: pd.DataFrame, target: str = "test_acc", *,
                      level: str = "cell") -> Figure:
    """Target against each available predictor, coloured by op family, ρ and p in the title.

    One legend for all panels (beside them); counts get short engineering labels, position
    integer ticks.
    """
    data = points(frame, target, level=level)
    predictors = [p for p in NUMERIC_PREDICTORS if p in data and data[p].notna().sum() >= 2
                  and data[p].nunique() > 1]
    if data.empty or not predictors:
        return _empty("no predictor varies yet")
    table = predictability(frame, target, level=level, n_boot=0)
    columns = min(3, len(predictors))
    rows = math.ceil(len(predictors) / columns)
    figure = Figure(figsize=(4.2 * columns + 1.6, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    data = data.assign(epochs=data["epochs"].astype(str) + " ep")
    families = [f for f in FAMILY_ORDER if f in set(data["op_family"])] + \
        sorted(set(data["op_family"]) - set(FAMILY_ORDER))
    handles, labels = [], []
    for ax, predictor in zip(axes, predictors):
        sns.scatterplot(data=data, x=predictor, y=target, hue="op_family", hue_order=families, style="epochs",
                        ax=ax, legend=ax is axes[0], s=40)
        rho = table[(table["predictor"] == predictor) & (table["method"] == "spearman")]
        parts = [f"{r.epochs} ep: ρ={r.statistic:.2f} (p{_p_text(r.p_value)}, n={r.n})"
                 for r in rho.itertuples()
                 if not math.isnan(r.statistic)]
        ax.set_title("; ".join(parts) or "ρ: n/a", fontsize=8)
        if predictor in COUNT_PREDICTORS:
            _count_axis(ax, data[predictor])
        elif predictor == "position":
            _integer_axis(ax, data[predictor])
        if ax.get_legend() is not None:
            handles, labels = ax.get_legend_handles_labels()
            ax.get_legend().remove()
    for ax in axes[len(predictors):]:
        ax.set_visible(False)
    if handles:
        labels = [{"op_family": "op family", "epochs": "budget"}.get(t, t) for t in labels]
        figure.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return figure


def _p_text(p: float) -> str:
    return "<1e-16" if p < 1e-16 else f"={p:.2g}"


def method_comparison(frame: pd.DataFrame) -> Figure:
    """Grouped bars per measured criterion: one bar per method, score 1 = best shown."""
    table = method_table(frame)
    if table.empty or table["method"].nunique() < 1:
        return _empty("no finished trials")
    table = table.assign(measure=table["criterion"] + "\n" + table["measure"])
    figure = Figure(figsize=(max(8, 1.3 * table["measure"].nunique()), 4.5), layout="constrained")
    ax = figure.subplots()
    sns.barplot(data=table, x="measure", y="score", hue="method", ax=ax)
    missing = table[table["score"].isna()].groupby("measure", sort=False)["method"].agg(list)
    methods = table["method"].nunique()
    notes = [f"{m.split(chr(10))[1]}: " + ("all" if len(v) == methods else ", ".join(v))
             for m, v in missing.items()]
    if notes:
        figure.supxlabel("not measured — " + "; ".join(notes), fontsize=7, color="#555555")
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="score (1 = best shown; higher is better)")
    ax.tick_params(axis="x", labelsize=8)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), fontsize=8)
    return figure


def accuracy_vs_sparsity(frame: pd.DataFrame, metric: str = "test_acc") -> Figure:
    """Accuracy against target sparsity per pruning method; the dense mean as a dashed line."""
    data = labelled(frame)
    data = data[(data["status"] == "ok") & data[metric].notna()].copy()
    data["sparsity"] = data["sparsity"].fillna(0.0).astype(float)
    sparse = data[(data["sparsity"] > 0) & (data["prune"].fillna("none") != "none")]
    if sparse.empty:
        return _empty("no pruned variants")
    sparse = sparse.assign(op=sparse["op"].fillna("baseline"))
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    sns.lineplot(data=sparse, x="sparsity", y=metric, hue="prune", style="op", marker="o",
                 errorbar="sd", ax=ax)
    dense = data[(data["sparsity"] == 0) & data["model"].isin(sparse["model"])
                 & data["op"].fillna("baseline").isin(sparse["op"])]
    for i, (op, group) in enumerate(dense.groupby(dense["op"].fillna("baseline"))):
        ax.axhline(group[metric].mean(), ls="--", lw=1, color=f"C{7 + i % 3}",
                   label=f"dense {op} (n={len(group)})")
    ax.legend(fontsize=8)
    ax.set(xlabel="target sparsity", ylabel=metric.replace("_", " "), xlim=(-0.02, 1.0))
    return figure


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as a PNG file."""
    path = Path(path)
    path.write_bytes(png_bytes(figure, dpi))
    return path


def predicted_vs_measured(predictions: pd.DataFrame, best: dict[str, str], *, title: str = "") -> Figure:
    """Out-of-fold predicted against measured Δ, one panel per CV scheme (its best predictor)."""
    panels = [(scheme, name) for scheme, name in best.items()
              if ((predictions["scheme"] == scheme) & (predictions["predictor"] == name)).any()]
    if not panels:
        return _empty("no cross-validated predictions")
    figure = Figure(figsize=(4.4 * len(panels) + 1.6, 4.0), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    words = {"position": "leave-one-position-out", "op": "leave-one-op-out", "cell": "leave-one-cell-out",
             "family": "leave-one-family-out"}
    families = [f for f in FAMILY_ORDER if f in set(predictions["op_family"])] + \
        sorted(set(predictions["op_family"]) - set(FAMILY_ORDER))
    handles, labels = [], []
    for ax, (scheme, name) in zip(axes, panels):
        part = predictions[(predictions["scheme"] == scheme) & (predictions["predictor"] == name)]
        part = part.assign(position=part["position"].astype(int).astype(str))
        sns.scatterplot(data=part, x="delta", y="predicted", hue="op_family", hue_order=families,
                        style="position", s=50, ax=ax, legend=ax is axes[0])
        values = np.concatenate([part["delta"].to_numpy(float), part["predicted"].to_numpy(float)])
        values = values[np.isfinite(values)]
        low, high = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], ls="--", lw=1, color="#777777")
        ax.set(xlim=(low - pad, high + pad), ylim=(low - pad, high + pad), xlabel="measured Δ (points)",
               ylabel="predicted Δ (points, out of fold)")
        ax.set_title(f"{words.get(scheme, scheme)}: {name}", fontsize=8)
        if ax.get_legend() is not None:
            handles, labels = ax.get_legend_handles_labels()
            ax.get_legend().remove()
    if handles:
        labels = [{"op_family": "op family"}.get(t, t) for t in labels]
        figure.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
