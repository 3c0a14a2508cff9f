"""The report's pruning section: what each pruning method buys — accuracy against measured
latency and stored bytes — beside the same network left dense.

A *variant* is one pruning method at one sparsity (DSR 0.9, channel 0.5, N:M 2:4, ...); its
*dense counterpart* is the same network trained the same way with nothing pruned: the same
model, dataset, data share, epochs, and (substitution studies) position, op and init. Each
variant is compared with it:

- accuracy: mean ± sd (n) over seeds, Δ vs dense, Welch's t-test (trials as units);
- latency of the deployed form (`deployed_ms_b1`: the form `to_sparse_inference` chose per
  layer by measurement; the masked model's `latency_ms_b1` when none was deployed), with its
  speed-up over dense measured *inside each trial* (the same trained network timed dense and
  deployed, one after the other: `dense_ms_b1 / deployed_ms_b1`), which is free of the drift
  between trials, and at the throughput batch;
- stored bytes of the deployed form (`deployed_bytes`; CSR bytes, else dense bytes, without a
  deployed form) against the dense network's 4 bytes per weight.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from opswap.report.blocks import Block
from opswap.report.numbers import MISSING, mean_sd, p_text, welch

__all__ = ["is_pruning", "pruning_frame", "pruning_table", "pruning_blocks", "accuracy_vs_cost"]

def _pruned(frame: pd.DataFrame) -> pd.Series:
    prune = frame["prune"].fillna("none") if "prune" in frame else pd.Series("none", index=frame.index)
    sparsity = pd.to_numeric(frame.get("sparsity", 0.0), errors="coerce").fillna(0.0)
    return (prune != "none") & (sparsity > 0)


def is_pruning(frame: pd.DataFrame) -> bool:
    """Whether any finished trial is a pruned variant."""
    return bool(len(frame)) and bool((_pruned(frame) & (frame["status"] == "ok")).any())


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def pruning_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished trials with `variant`, `context`, deployed latency and stored-bytes columns."""
    data = frame[(frame["status"] == "ok") & frame["test_acc"].notna()].copy()
    if "kind" in data:
        data = data[data["kind"].fillna("train") != "traditional"]
    pruned = _pruned(data)
    sparsity = pd.to_numeric(data.get("sparsity", 0.0), errors="coerce").fillna(0.0)
    prune = data["prune"].fillna("none") if "prune" in data else pd.Series("none", index=data.index)
    data["variant"] = np.where(pruned, [f"{p} {s:g}" for p, s in zip(prune, sparsity)], "dense")
    if "method" in data:  # a methods study names its variants (two channel modes at 0.5 stay apart)
        named = data["method"].notna() & pruned
        data.loc[named, "variant"] = data.loc[named, "method"].astype(str)
    data["method_kind"] = np.where(pruned, prune, "dense")
    data["context"] = [_context(row) for _, row in data.iterrows()]
    dense_b1, dense_batch = _column(data, "latency_ms_b1"), _column(data, "latency_ms_batch")
    deployed_b1, deployed_batch = _column(data, "deployed_ms_b1"), _column(data, "deployed_ms_batch")
    data["latency_b1"] = deployed_b1.where(deployed_b1.notna(), dense_b1)
    data["latency_batch"] = deployed_batch.where(deployed_batch.notna(), dense_batch)
    in_trial = _column(data, "dense_ms_b1") / deployed_b1
    data["speedup_b1"] = np.where(pruned, in_trial, np.where(dense_b1.notna(), 1.0, np.nan))
    in_trial = _column(data, "dense_ms_batch") / deployed_batch
    data["speedup_batch"] = np.where(pruned, in_trial, np.where(dense_batch.notna(), 1.0, np.nan))
    dense_bytes = _column(data, "dense_bytes")
    stored = _column(data, "deployed_bytes")
    stored = stored.where(stored.notna(), _column(data, "csr_bytes"))
    data["stored_bytes"] = np.where(pruned, stored.where(stored.notna(), dense_bytes), dense_bytes)
    # The smallest form the weights can be kept in (CSR for unstructured masks, values + positions
    # for N:M, the smaller dense net for channels), whether or not it is the fastest to run.
    forms = pd.concat({name: _column(data, column) for name, column in
                       (("deployed", "deployed_bytes"), ("csr", "csr_bytes"), ("n:m", "nm_bytes"),
                        ("channels removed", "structured_bytes"), ("dense", "dense_bytes"))}, axis=1)
    data["smallest_bytes"] = forms.min(axis=1, skipna=True)
    known = forms.notna().any(axis=1)
    data["smallest_form"] = np.where(known, forms.fillna(np.inf).idxmin(axis=1), None) if len(forms) else None
    data["dense_bytes_of_net"] = dense_bytes
    return data


def _context(row: pd.Series) -> str:
    """`wrn-16-2 · npz · position 3 · bottleneck_e2 · lana · 10 epochs` (what the variants share)."""
    words = [str(row[k]) for k in ("model", "dataset") if _set(row.get(k))]
    if _set(row.get("data_fraction")) and row["data_fraction"] < 1:
        words.append(f"{row['data_fraction']:g} data")
    if _set(row.get("position")):
        words.append(f"position {int(row['position'])}")
    if _set(row.get("op")) and row["op"] != "baseline":
        words.append(str(row["op"]))
    if _set(row.get("init")) and _set(row.get("position")):
        words.append(str(row["init"]))
    if _set(row.get("epochs")):
        words.append(f"{int(row['epochs'])} epochs")
    return " · ".join(words)


def _set(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _order(variant: str) -> tuple:
    if variant == "dense":
        return (0, "", 0.0)
    method, _, level = variant.rpartition(" ")
    try:
        return (1, method, float(level))
    except ValueError:  # a method's own name, e.g. "nm 2:4"
        return (1, variant, 0.0)


def pruning_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, variant): accuracy, Δ and Welch's test vs dense, latency, speed-up, bytes."""
    data = pruning_frame(frame)
    rows = []
    for context, group in data.groupby("context", sort=True):
        if not _pruned(group).any():
            continue
        dense = group[group["variant"] == "dense"]
        for variant in sorted(group["variant"].unique(), key=_order):
            part = group[group["variant"] == variant]
            acc = part["test_acc"]
            t, p = welch(acc, dense["test_acc"]) if variant != "dense" else (math.nan, math.nan)
            delta = acc.mean() - dense["test_acc"].mean() if len(dense) and variant != "dense" else math.nan
            ratio = (part["stored_bytes"] / part["dense_bytes_of_net"]).mean()
            rows.append({
                "network": context, "variant": variant, "n": len(part),
                "test acc (%)": mean_sd(acc),
                "Δ vs dense (pts)": MISSING if not math.isfinite(delta) else f"{delta:+.2f}",
                "Welch t": MISSING if not math.isfinite(t) else f"{t:+.2f}", "p": p_text(p),
                "latency b1 (ms)": mean_sd(part["latency_b1"], 3),
                "latency batch (ms)": mean_sd(part["latency_batch"], 1),
                "speed-up b1": mean_sd(part["speedup_b1"], unit="×", n=False),
                "speed-up batch": mean_sd(part["speedup_batch"], unit="×", n=False),
                "stored": _bytes(part["stored_bytes"].mean()),
                "bytes vs dense": MISSING if not math.isfinite(ratio) else f"{ratio:.2f}×",
                "smallest storage vs dense": _smallest(part),
            })
    return pd.DataFrame(rows)


def _smallest(part: pd.DataFrame) -> str:
    ratio = (part["smallest_bytes"] / part["dense_bytes_of_net"]).mean()
    if not math.isfinite(ratio):
        return MISSING
    forms = part["smallest_form"].dropna().unique() if part["smallest_form"].notna().any() else []
    return f"{ratio:.2f}×" + (f" ({', '.join(sorted(map(str, forms)))})" if len(forms) else "")


def _bytes(value: float) -> str:
    if not math.isfinite(value):
        return MISSING
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def accuracy_vs_cost(frame: pd.DataFrame) -> Figure:
    """Accuracy (mean ± sd over seeds) against deployed latency and against stored bytes, per variant."""
    data = pruning_frame(frame)
    data = data[data["context"].isin(data.loc[_pruned(data), "context"])]
    contexts = sorted(data["context"].unique())
    figure = Figure(figsize=(10, 3.6 * max(1, len(contexts))), layout="constrained")
    axes = figure.subplots(max(1, len(contexts)), 2, squeeze=False)
    methods = sorted(set(data["method_kind"]) - {"dense"})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for row, context in zip(axes, contexts):
        group = data[data["context"] == context]
        batch = _column(group, "latency_batch_size").dropna()
        size = f"batch {int(batch.iloc[0])}" if len(batch) else "throughput batch"
        for ax, x, label in ((row[0], "latency_batch", f"latency, {size} (ms, deployed form)"),
                             (row[1], "stored_bytes", "stored bytes")):
            for variant in sorted(group["variant"].unique(), key=_order):
                part = group[group["variant"] == variant]
                xs, ys = pd.to_numeric(part[x], errors="coerce"), part["test_acc"]
                if xs.notna().sum() == 0:
                    continue
                method = part["method_kind"].iloc[0]
                style = dict(color="black", marker="s") if method == "dense" else \
                    dict(color=colours[method], marker="o")
                ax.errorbar(xs.mean(), ys.mean(), xerr=xs.std(ddof=1) if len(part) > 1 else None,
                            yerr=ys.std(ddof=1) if len(part) > 1 else None, capsize=3, ls="none", **style)
                ax.annotate(f"{variant} (n={len(part)})", (xs.mean(), ys.mean()), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
            ax.set(xlabel=label, ylabel="test accuracy (%)", title=context)
            if x == "stored_bytes":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
    return figure


def pruning_blocks(frame: pd.DataFrame) -> list[Block]:
    """The blocks of the report's pruning section."""
    table = pruning_table(frame)
    if table.empty:
        return [Block("text", "No pruned variant has finished yet.")]
    missing = table["Δ vs dense (pts)"].eq(MISSING) & table["variant"].ne("dense")
    out = [Block("text",
                 "Each pruning method at each sparsity against the same network left dense (same model, "
                 "data, epochs and, in substitution studies, position, op and init). Accuracy is mean ± sd "
                 "over seeds with Welch's t-test against dense (scipy.stats.ttest_ind, equal_var=False; "
                 "trials as units). Latency is that of the deployed form — per layer the fastest of dense, "
                 "CSR and the structured form, measured on the device — and the speed-up is measured inside "
                 "each trial (the trained network timed dense, then deployed). Stored bytes are those of "
                 "the deployed form; dense weights take 4 bytes each. The smallest storage is the least of the "
                 "forms the weights can be kept in (CSR, N:M values with positions, the net with channels "
                 "removed), whether or not it runs fastest.")]
    if missing.any():
        out.append(Block("text", f"{int(missing.sum())} variant(s) have no dense counterpart in this study "
                                 "(add sparsity = 0 or prune = \"none\" to compare them)."))
    out.append(Block("table", table, "pruned variants vs dense: accuracy, latency, speed-up and storage"))
    out.append(Block("figure", accuracy_vs_cost(frame), "test accuracy against measured latency at the "
                     "throughput batch (left; steadier than batch 1) and stored bytes (right); mean ± sd over "
                     "seeds, dense as a black square", "pruning"))
    return out
