"""The papers' tables, measured: position × candidate, mean ± std over seeds with n.

Layout of Tables 2–3 of the operation-substitution study (seeds/operation-substitution-wrn):
one table per epoch budget, the baseline as its own row, the best candidate per position marked
only when Welch's t-test tells it from the runner-up, and each cell tested against the baseline with Welch's t-test (scipy.stats.ttest_ind,
equal_var=False), which needs n ≥ 2 on both sides. Also a Δ-vs-baseline table, a complexity
table and the seed-000 method comparison on measured criteria. Pure: pandas in, pandas out.
"""
from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from opswap.analysis.delta import reference_values

MISSING = "—"
BEST = "▲"
NOT_TESTABLE = "°"
LEGEND = (f"mean ± std (n) over seeds. {BEST} best at its position and distinguishable from the runner-up "
          "(Welch's t-test, p < 0.05); when the top two are within noise nothing is marked and the line under "
          "the table says \"tied within noise\". Welch's t-test against the "
          "baseline: * p < 0.05, ** p < 0.01, *** p < 0.001; "
          f"{NOT_TESTABLE} not testable (needs n ≥ 2 on both sides). {MISSING} no finished trial; "
          "empty: not part of the study (e.g. identity where the shape changes).")
FAMILY_ORDER = ["baseline", "identity", "mbconv", "conv_bn", "resnet", "bottleneck"]
DEFAULT_INITS = (None, "lana", "teacher")


def _is_set(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) \
        and value is not pd.NA


def candidate_label(row: pd.Series, *, with_data_fraction: bool = True) -> str:
    """The op and what varies about it: `bottleneck_e2 · dsr 0.9 · random init`."""
    op = row.get("op") if _is_set(row.get("op")) else "baseline"
    label = [op]
    if op == "baseline" and row.get("init") == "scratch":
        label.append("scratch")  # trained from scratch, not fine-tuned from the teacher
    prune, sparsity = row.get("prune"), row.get("sparsity")
    if _is_set(prune) and prune != "none" and _is_set(sparsity) and sparsity > 0:
        label.append(f"{prune} {sparsity:g}")
    init = row.get("init") if _is_set(row.get("init")) else None
    if op != "baseline" and init not in DEFAULT_INITS:
        label.append(f"{init} init")
    fraction = row.get("data_fraction")
    if with_data_fraction and _is_set(fraction) and fraction < 1:
        label.append(f"{fraction:g} data")
    return " · ".join(label)


def _row_label(position, network: str, several_networks: bool) -> str:
    name = "baseline" if not _is_set(position) else str(int(position))
    return f"{network} · {name}" if several_networks else name


# What makes two trials' networks different ones, compared only within themselves: the
# architecture, and what it was trained on (the dataset, its files, its class count).
NETWORK_KEYS = ("model", "dataset", "data", "num_classes")


def network_names(frame: pd.DataFrame) -> pd.Series:
    """Per trial, its network's name: the model, plus whatever tells it from the others shown.

    `wrn-16-2` when every trial is on one dataset; `wrn-16-2 · cifar10` and `wrn-16-2 · cifar100`
    when the same model was trained on two; the data path or class count is added only when
    that is what differs. Trials of different networks are never pooled into one cell.
    """
    keys = [k for k in NETWORK_KEYS if k in frame]
    parts = frame[keys].astype(object).apply(lambda column: column.map(lambda v: str(v) if _is_set(v) else "None"))
    names = parts["model"].copy()
    for key in keys[1:]:
        # Add a part where trials that share the name so far differ in it.
        varies = parts.groupby(names)[key].transform("nunique") > 1
        shown = parts[key]
        if key == "data":  # the file or folder name, unless two differing paths share it
            base = shown.map(lambda v: Path(v).name if v != "None" else v)
            clash = base.groupby(names).transform("nunique") < shown.groupby(names).transform("nunique")
            shown = base.where(~clash, shown)
        if key == "num_classes":
            shown = shown + " classes"
        names = names.where(~varies, names + " · " + shown)
    return names


def labelled(frame: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Trials with `row` (position, "baseline" or "methods") and `candidate` label columns.

    Traditional trials are kept only in a methods study, where every trial names its method;
    there `reference` names the method the others are compared with (none by default).
    """
    named = frame["method"].notna() if "method" in frame else pd.Series(False, frame.index)
    keep = named | (frame["kind"].fillna("train") != "traditional")
    frame, named = frame[keep].copy(), named[keep]
    networks = network_names(frame) if len(frame) else pd.Series([], index=frame.index, dtype=object)
    several = networks[~named].nunique() > 1
    frame["unit"] = np.where(named, "methods", networks)  # compared within itself (opswap.analysis.delta)
    frame["row"] = ["methods" if n else _row_label(p, u, several)
                    for n, p, u in zip(named, frame["position"], frame["unit"])]
    frame["candidate"] = [
        " · ".join([r["method"]] + ([f"{r['data_fraction']:g} data"]
                                    if _is_set(r["data_fraction"]) and r["data_fraction"] < 1 else []))
        if n else candidate_label(r) for n, (_, r) in zip(named, frame.iterrows())]
    # The reference is the unmodified dense network (any data fraction: cells are compared with
    # the reference trained on the same fraction, see `summary`).
    op = frame["op"].where(frame["op"].notna(), "baseline") if "op" in frame else "baseline"
    dense = pd.to_numeric(frame.get("sparsity", 0.0), errors="coerce").fillna(0.0) == 0
    frame["is_reference"] = ~named & (op == "baseline") & frame["position"].isna() & dense
    if reference is not None and "method" in frame:
        frame["is_reference"] |= named & (frame["method"] == reference)
    return frame


class PooledSettingsWarning(UserWarning):
    """A table cell pools finished trials that were run with different settings."""


# Settings that change a trial's result but not its cell label: trials differing in one of
# these are not seeds of one cell. (Evaluation batch size, compile and distillation chunking
# change how fast a trial runs, not what it learns.)
_NOT_RESULT = {"train_eval_batch_size", "train_compile", "distill_max_pairs_at_once"}


def _result_settings(frame: pd.DataFrame) -> list[str]:
    """The flattened [train] / [distill] settings columns (`load_results`), the teacher, the
    validation share, and the precision that ran."""
    from dataclasses import fields

    from opswap.distill.engine import DistillConfig
    from opswap.training import TrainConfig

    names = {f"train_{f.name}" for f in fields(TrainConfig)} | {f"distill_{f.name}" for f in fields(DistillConfig)}
    names = (names - _NOT_RESULT) | {"teacher", "val_fraction", "precision"}
    return [c for c in frame.columns if c in names]


def _setting_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value.item() if isinstance(value, np.generic) else value)


def pooled_settings(frame: pd.DataFrame, reference: str | None = None) -> list[str]:
    """Sentences naming the table cells whose finished trials differ in a setting other than the seed.

    A study's trials of one cell differ only by seed; a folder holding records of several
    studies (or of one study whose settings changed) can pool other trials into a cell, and its
    mean ± std would then be no seed spread. Empty when every cell is homogeneous.
    """
    data = labelled(frame, reference)
    data = data[data["status"] == "ok"]
    columns = _result_settings(data)
    if data.empty or not columns:
        return []
    differing: dict[str, set] = {}
    cells = []
    for (epochs, row, candidate), cell in data.groupby([data["epochs"].fillna(-1), "row", "candidate"], sort=True):
        if len(cell) < 2:
            continue
        # Set values only: a setting a record lacks (written before it existed, e.g. precision)
        # is not taken for another value of it; the same on every pandas version.
        given = {c: {_setting_text(v) for v in cell[c] if _is_set(v)} for c in columns}
        varied = [c for c in columns if len(given[c]) > 1]
        if varied:
            for c in varied:
                differing.setdefault(c, set()).update(given[c])
            where = "baseline" if row.endswith("baseline") else row if row == "methods" else f"position {row}"
            cells.append(f"{where} {candidate}" + (f" at {int(epochs)} epochs" if epochs != -1 else ""))
    if not cells:
        return []
    what = "; ".join(f"{c} ({', '.join(sorted(v)[:4])}{', …' if len(v) > 4 else ''})"
                     for c, v in sorted(differing.items()))
    shown = ", ".join(cells[:3]) + (f" and {len(cells) - 3} more" if len(cells) > 3 else "")
    return [f"{len(cells)} cell{'s' if len(cells) != 1 else ''} pool{'s' if len(cells) == 1 else ''} "
            f"trials run with different settings — {what} — so their mean ± std is not a spread "
            f"over seeds alone: {shown}. Report one study (opswap report STUDY.toml) or select "
            "the trials of one setting."]


def sort_key(candidate: str) -> tuple:
    """Candidates in the papers' order: baseline, identity, mbconv, conv_bn, resnet, bottleneck."""
    op = candidate.split(" · ")[0]
    family = next((i for i, f in enumerate(FAMILY_ORDER) if op.startswith(f)), len(FAMILY_ORDER))
    return family, op, candidate


def _row_key(row: str) -> tuple:
    last = row.split(" · ")[-1]
    return row.rsplit(" · ", 1)[0] if " · " in row else "", last != "baseline", \
        int(last) if last.isdigit() else 0


def _marks(p_value: float) -> str:
    if math.isnan(p_value):
        return NOT_TESTABLE
    return "***" if p_value < 1e-3 else "**" if p_value < 1e-2 else "*" if p_value < 0.05 else ""


def summary(frame: pd.DataFrame, metric: str = "test_acc", *,
            higher_is_better: bool = True, reference: str | None = None) -> pd.DataFrame:
    """Long table: one row per (epochs, row, candidate) with n, mean, std, Δ, CI, p and marks.

    The reference is the unmodified network, or in a methods study the method named `reference`.
    """
    data = labelled(frame, reference)
    for sentence in pooled_settings(frame, reference):
        warnings.warn(sentence, PooledSettingsWarning, stacklevel=2)
    refs = reference_values(data, metric)
    out = []
    samples_of: dict[int, np.ndarray] = {}  # result row → its finished values (for the best mark)
    for epochs, group in data.groupby(data["epochs"].fillna(-1), sort=True):
        ok = group[(group["status"] == "ok") & group[metric].notna()]
        for model in group["unit"].unique():
            in_model = ok[ok["unit"] == model]
            cells = group[group["unit"] == model]
            for (row, candidate), cell in cells.groupby(["row", "candidate"], sort=False):
                reference = refs[cell.index[0]]  # the one Δ definition (opswap.analysis.delta)
                values = in_model.loc[(in_model["row"] == row)
                                      & (in_model["candidate"] == candidate), metric]
                values = values.to_numpy(float)
                is_reference = bool(cell["is_reference"].all())
                p, low, high = math.nan, math.nan, math.nan
                if not is_reference and len(values) >= 2 and len(reference) >= 2:
                    with warnings.catch_warnings():  # identical values (std 0): p is still defined
                        warnings.simplefilter("ignore", RuntimeWarning)
                        test = stats.ttest_ind(values, reference, equal_var=False)
                    p = float(test.pvalue)
                    if math.isnan(p) and np.ptp(values) == 0 and np.ptp(reference) == 0 \
                            and values[0] == reference[0]:
                        p, low, high = 1.0, 0.0, 0.0  # one value in every seed on both sides: Δ is exactly 0
                    elif not math.isnan(p):
                        low, high = test.confidence_interval(0.95)
                samples_of[len(out)] = values
                out.append({
                    "epochs": None if epochs == -1 else int(epochs), "model": model,
                    "row": row, "candidate": candidate, "is_reference": is_reference,
                    "n": len(values), "mean": values.mean() if len(values) else math.nan,
                    "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                    "n_failed": int(cell["status"].isin(["failed", "diverged"]).sum()),
                    "n_reference": len(reference),
                    "delta": (values.mean() - reference.mean()
                              if len(values) and len(reference) else math.nan),
                    "ci_low": float(low), "ci_high": float(high), "p_value": p,
                    "marks": "" if is_reference or not len(values) or not len(reference)
                             else _marks(p),
                })
    columns = ["epochs", "model", "row", "candidate", "is_reference", "n", "mean", "std",
               "n_failed", "n_reference", "delta", "ci_low", "ci_high", "p_value", "marks", "best",
               "best_note"]
    result = pd.DataFrame(out, columns=columns[:-2])
    result["best"], result["best_note"] = False, ""
    for _, group in result[result["n"] > 0].groupby(["epochs", "model", "row"], dropna=False):
        if len(group) < 2:
            continue
        from opswap.analysis.crossval import best_distinguishable

        samples = {i: samples_of[i] for i in group.index}
        best = best_distinguishable(samples, higher_is_better=higher_is_better)
        # ▲ only where the best is told apart from the runner-up (Welch); otherwise say why not.
        result.loc[best.best, "best"] = best.distinguishable
        name = result.loc[best.best, "candidate"]
        runner = result.loc[best.runner_up, "candidate"] if best.runner_up is not None else ""
        p = "" if math.isnan(best.p_value) else f" (Welch p = {best.p_value:.2g})"
        result.loc[best.best, "best_note"] = (
            f"best {name} {BEST}, ahead of {runner}{p}" if best.distinguishable else
            f"{name} and {runner} tied within noise{p}" if best.label == "tied within noise" else
            f"{name} ahead of {runner} by mean, {best.label} (n < 2 on a side): tied within noise")
    return result[columns]


def best_sentences(long: pd.DataFrame) -> list[str]:
    """Per row of one budget's `summary`: the best cell and whether it is told from the runner-up."""
    lines = []
    for row, group in long[long["best_note"] != ""].groupby("row", sort=False):
        where = "baseline row" if row.endswith("baseline") else row if row == "methods" else f"position {row}"
        lines.append(f"{where}: {group.iloc[0]['best_note']}")
    return sorted(lines, key=lambda t: (not t.startswith("baseline"), t))


def significance_sentence(long: pd.DataFrame, alpha: float = 0.05) -> str:
    """One budget in words: how many cells differ from the baseline (Welch; raw and Holm over the cells)."""
    from opswap.analysis.crossval import adjust_pvalues

    tested = long[~long["is_reference"] & long["p_value"].notna()]
    untestable = int((~long["is_reference"] & (long["n"] > 0) & long["p_value"].isna()).sum())
    tail = f"; {untestable} cell{'s' if untestable != 1 else ''} not testable (n < 2 on a side)" if untestable else ""
    if tested.empty:
        return "No cell could be tested against the baseline (each test needs n ≥ 2 on both sides)" + tail + "."
    raw = int((tested["p_value"] < alpha).sum())
    holm = int((adjust_pvalues(tested["p_value"].to_numpy(), "holm") < alpha).sum())
    m = len(tested)
    if raw == 0:
        return (f"No cell differs significantly from the baseline (Welch's t-test, p < {alpha:g}, "
                f"{m} cell{'s' if m != 1 else ''} tested){tail}.")
    return (f"{raw} of {m} tested cells differ from the baseline at p < {alpha:g} (Welch's t-test, uncorrected); "
            f"{holm} after Holm's correction over the {m} cells{tail}.")


def _cell(entry: pd.Series, digits: int) -> str:
    if entry["n"] == 0:
        return MISSING + (f" ({entry['n_failed']} failed)" if entry["n_failed"] else "")
    spread = "" if math.isnan(entry["std"]) else f" ± {entry['std']:.{digits}f}"
    text = f"{entry['mean']:.{digits}f}{spread} ({entry['n']}){entry['marks']}"
    return text + (f" {BEST}" if entry["best"] else "")


def _delta_cell(entry: pd.Series, digits: int) -> str:
    if entry["is_reference"]:
        return "reference"
    if entry["n"] == 0:
        return MISSING
    if math.isnan(entry["delta"]):
        return f"{MISSING} (no baseline)"
    text = _signed(entry["delta"], digits)
    if math.isnan(entry["ci_low"]):
        return text + f" (n={entry['n']}){NOT_TESTABLE}"
    low, high = _signed(entry["ci_low"], digits), _signed(entry["ci_high"], digits)
    return text + f" [{low}, {high}]{entry['marks']}"


def _signed(value: float, digits: int) -> str:
    """`+0.30`, `-1.20`, and `+0.00` rather than `-0.00`."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def _pivot(table: pd.DataFrame, cells: pd.Series, blank: frozenset = frozenset()) -> pd.DataFrame:
    """Rows × candidates; cells with no trial are `MISSING`, or empty where not applicable."""
    table = table.assign(text=cells)
    wide = table.pivot(index="row", columns="candidate", values="text")
    at_baseline = table["row"].str.endswith("baseline")
    columns = {True: set(table.loc[at_baseline, "candidate"]),
               False: set(table.loc[~at_baseline, "candidate"])}
    for row in wide.index:
        for column in wide.columns:
            if pd.isna(wide.loc[row, column]):
                expected = column in columns[row.endswith("baseline")] \
                    and (row.split(" · ")[-1], column.split(" · ")[0]) not in blank
                wide.loc[row, column] = MISSING if expected else ""
    wide = wide.loc[sorted(wide.index, key=_row_key), sorted(wide.columns, key=sort_key)]
    wide.index.name, wide.columns.name = "position", None
    return wide


def _blank(not_applicable) -> frozenset:
    return frozenset((str(int(position)), op) for position, op in not_applicable)


def paper_tables(frame: pd.DataFrame, metric: str = "test_acc", *, digits: int = 2,
                 higher_is_better: bool = True, not_applicable=(),
                 reference: str | None = None) -> dict[int | None, pd.DataFrame]:
    """One position × candidate table of "mean ± std (n)" text per epoch budget.

    `not_applicable`: (position, op) pairs the model cannot take; left empty, not `MISSING`.
    """
    long = summary(frame, metric, higher_is_better=higher_is_better, reference=reference)
    return {epochs: _pivot(group, group.apply(_cell, axis=1, digits=digits), _blank(not_applicable))
            for epochs, group in _by_epochs(long)}


def delta_tables(frame: pd.DataFrame, metric: str = "test_acc", *, digits: int = 2,
                 not_applicable=(), reference: str | None = None) -> dict[int | None, pd.DataFrame]:
    """Per epoch budget: mean minus the baseline mean, with Welch's 95 % interval."""
    long = summary(frame, metric, reference=reference)
    return {epochs: _pivot(group, group.apply(_delta_cell, axis=1, digits=digits),
                           _blank(not_applicable))
            for epochs, group in _by_epochs(long)}


def _by_epochs(long: pd.DataFrame):
    for epochs in sorted(long["epochs"].dropna().unique()):
        yield int(epochs), long[long["epochs"] == epochs]
    if long["epochs"].isna().any():
        yield None, long[long["epochs"].isna()]


COMPLEXITY_COLUMNS = ["params", "macs", "op_params_count", "op_macs", "latency_ms_b1",
                      "measured_sparsity", "dense_bytes", "csr_bytes"]


def complexity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (row, candidate): the median of params, MACs, latency, sparsity and storage bytes.

    Latency is a noisy measurement: `latency_ms_b1_min`, `latency_ms_b1_max` and `latency_n` give
    its spread over the trials.
    """
    data = labelled(frame)
    data = data[data["status"] == "ok"]
    columns = [c for c in COMPLEXITY_COLUMNS if c in data]
    groups = data.groupby(["row", "candidate"])
    table = groups[columns].agg(lambda s: s.dropna().median() if s.notna().any() else math.nan)
    if "latency_ms_b1" in data:
        latency = pd.to_numeric(data["latency_ms_b1"], errors="coerce").groupby([data["row"], data["candidate"]])
        table["latency_ms_b1_min"] = latency.min()
        table["latency_ms_b1_max"] = latency.max()
        table["latency_n"] = latency.count()
    order = sorted(table.index, key=lambda rc: (_row_key(rc[0]), sort_key(rc[1])))
    return table.loc[order].reset_index().rename(columns={"row": "position"})


def _si(value: float, unit: str) -> str:
    """`1234567` → `1.23 M` + unit."""
    for prefix in ["", "k", "M", "G"]:
        if abs(value) < 1000 or prefix == "G":
            return f"{value:.3g} {prefix}{unit}"
        value /= 1000
    return ""


def format_complexity(table: pd.DataFrame) -> pd.DataFrame:
    """Readable text for `complexity_table`: thousands separators, millions of MACs, ms, %, bytes."""
    formats = {
        "params": lambda v: f"{int(v):,}", "op_params_count": lambda v: f"{int(v):,}",
        "macs": lambda v: f"{v / 1e6:.4g} M", "op_macs": lambda v: f"{v / 1e6:.4g} M",
        "latency_ms_b1": lambda v: f"{v:.2f} ms", "measured_sparsity": lambda v: f"{100 * v:.1f} %",
        "dense_bytes": lambda v: _si(v, "B"), "csr_bytes": lambda v: _si(v, "B"),
    }
    out = table.copy().astype(object)
    for column, fmt in formats.items():
        if column in out:
            # NaN, and ±inf from a hand-edited or foreign record, are no measurement to print
            out[column] = [MISSING if pd.isna(v) or not math.isfinite(float(v)) else fmt(v) for v in table[column]]
    if {"latency_ms_b1", "latency_ms_b1_min", "latency_ms_b1_max", "latency_n"} <= set(table.columns):
        out["latency_ms_b1"] = [
            MISSING if pd.isna(m) else f"{m:.2f} ms" if n < 2 else f"{m:.2f} ms ({lo:.2f}–{hi:.2f}, n={int(n)})"
            for m, lo, hi, n in zip(table["latency_ms_b1"], table["latency_ms_b1_min"], table["latency_ms_b1_max"],
                                    table["latency_n"])]
        out = out.drop(columns=["latency_ms_b1_min", "latency_ms_b1_max", "latency_n"])
    return out


# Seed 000 §4 scored methods by hand; these are measured. (measure, criterion, higher is better)
CRITERIA = [
    ("nonzero params", "complexity", False), ("macs", "complexity", False),
    ("test_acc", "generalisation", True), ("test/train ratio", "generalisation", True),
    ("acc at data fraction", "data requirement", True),
    ("latency_ms_b1", "efficiency", False), ("storage bytes", "efficiency", False),
]


def data_requirement_fraction(partial: pd.DataFrame) -> float:
    """The data fraction (< 1) the methods are compared at: the smallest that every method run
    on less data shares; when they share none, the smallest run by the most methods (the others'
    "acc at data fraction" is then missing). NaN when no method ran on less data."""
    if partial.empty:
        return math.nan
    methods = partial.groupby("data_fraction")["method"].nunique()
    most = methods[methods == methods.max()]
    return float(most.index.min())


def method_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods × measured criteria: raw means and scores in [0, 1] (1 = best shown).

    "acc at data fraction" is every method's accuracy at one fraction,
    `data_requirement_fraction` (in `table.attrs["data_fraction"]`).
    """
    data = frame[frame["status"] == "ok"].copy()
    if data.empty:
        return pd.DataFrame(columns=["method", "measure", "criterion", "value", "score"])
    traditional = data["kind"].fillna("train") == "traditional"
    named = data["method"] if "method" in data else pd.Series(None, data.index, dtype=object)
    networks = network_names(data)
    data["method"] = [m if _is_set(m) else "traditional" if t else
                      f"{n} · {candidate_label(r, with_data_fraction=False)}".replace(" · baseline", "")
                      for m, t, n, (_, r) in zip(named, traditional, networks, data.iterrows())]
    # A pruned network's complexity is its surviving weights, not its dense shape.
    data["nonzero params"] = pd.to_numeric(data.get("nonzero_params", data["params"]), errors="coerce") \
        .astype("float64").fillna(pd.to_numeric(data["params"], errors="coerce").astype("float64"))
    data["test/train ratio"] = (data["test_acc"] / data["train_acc"]).clip(upper=1.0)
    data["storage bytes"] = data["csr_bytes"].astype(float).fillna(data["dense_bytes"].astype(float))
    fraction = data["data_fraction"].fillna(1.0)
    full, partial = data[fraction >= 1], data[fraction < 1]
    common = data_requirement_fraction(partial)
    rows = []
    for method in sorted(data["method"].unique(), key=lambda m: (m == "traditional", m)):
        mine = full[full["method"] == method]
        values = {m: pd.to_numeric(mine[m], errors="coerce").astype("float64").mean()
                  for m, _, _ in CRITERIA if m in mine}
        # Every method at one fraction, or the comparison would reward whoever ran less data least.
        at = partial[(partial["method"] == method) & (partial["data_fraction"] == common)]
        values["acc at data fraction"] = at["test_acc"].mean() if len(at) else math.nan
        for measure, criterion, _ in CRITERIA:
            rows.append({"method": method, "measure": measure, "criterion": criterion,
                         "value": float(values.get(measure, math.nan))})
    table = pd.DataFrame(rows)
    table.attrs["data_fraction"] = common
    for measure, _, higher in CRITERIA:
        where = table["measure"] == measure
        values = table.loc[where, "value"].where(lambda v: v > 0)
        best = values.max() if higher else values.min()
        table.loc[where, "score"] = values / best if higher else best / values
    return table


def _grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    index_name = table.index.name or ""
    keep_index = not isinstance(table.index, pd.RangeIndex)
    header = ([index_name] if keep_index else []) + [str(c) for c in table.columns]
    body = [([str(i)] if keep_index else []) +
            [MISSING if v is None or (isinstance(v, float) and np.isnan(v)) else
             (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row]
            for i, row in zip(table.index, table.itertuples(index=False))]
    return header, body


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    header, body = _grid(table)
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in body]
    return "\n".join(lines)


def to_html(table: pd.DataFrame, *, caption: str | None = None) -> str:
    """An HTML table; best cells get class "best", missing ones class "missing"."""
    header, body = _grid(table)
    cls = lambda s: ' class="best"' if BEST in s else ' class="missing"' if s.startswith(MISSING) else ""  # noqa: E731
    parts = ['<table class="results">']
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                 + "</tr></thead><tbody>")
    for row in body:
        cells = [f"<th>{html.escape(row[0])}</th>"] + [f"<td{cls(c)}>{html.escape(c)}</td>" for c in row[1:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)
