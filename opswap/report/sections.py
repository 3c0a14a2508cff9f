"""The report's sections: pure functions from results frames and what the caller knows to blocks.

Collects the analysis of a study's records — the papers' tables (operation-substitution
Tables 2–3) with Welch's t-test against the baseline, Δ and complexity tables, the
predictability statistics, learning curves, and the dynamic-pruning paper's method comparison —
with the study's settings, the versions that produced the records and provenance. Works on a
partial study: missing cells read "—" and the header says how many trials are pending or failed.
What only the study knows (its expected trials, skipped pairs, reference method, teacher) comes
from the caller in a `ReportContext`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from opswap.analysis import figures, predict, tables
from opswap.analysis.results import SETTING_COLUMNS
from opswap.report.assembly import assembly_blocks, is_assembly
from opswap.report.blocks import Block
from opswap.report.prediction import predictability_section
from opswap.report.pruning import pruning_blocks


@dataclass(frozen=True)
class ReportContext:
    """What the report cannot read from the records: the study's plan and its files."""

    study: str
    expected: frozenset[str] | None = None        # trial ids of the study as defined now
    skipped: frozenset[tuple[int, str]] = frozenset()  # (position, op) pairs that cannot be built
    reference: str | None = None                  # methods studies: the reference method
    note: str = "expected trials unknown (no study file given)"  # why `expected` is None
    study_file: str | None = None
    study_text: str | None = None
    overrides: tuple = ()
    teacher: pd.DataFrame | None = field(default=None, compare=False)  # the teacher's results row
    features: pd.DataFrame | None = field(default=None, compare=False)  # bank.features.parquet (analysis.cells)
    correction: str = "holm"                       # [predict] correction over the many predictors


def _settings_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Settings every trial shares (one value), and the ones that vary (their values)."""
    columns = [c for c in frame.columns if c in SETTING_COLUMNS or c.startswith(("train_", "distill_"))
               and c not in ("train_acc", "train_loss", "distill_loss")]
    rows = []
    for column in columns:
        values = [v for v in frame[column].dropna().map(_text).unique() if v]
        if len(values):
            shown = ", ".join(sorted(values, key=lambda v: (len(v), v))[:12])
            rows.append({"setting": column, "value": shown + (" …" if len(values) > 12 else ""),
                         "varies": "yes" if len(values) > 1 else ""})
    return pd.DataFrame(rows, columns=["setting", "value", "varies"])


def _text(value) -> str:
    """A setting as text; whole floats (from columns with gaps) without `.0`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _override(key: str, value) -> str:
    """`key=value` as it was typed: bare words bare, other values as TOML/JSON literals."""
    import json

    return f"{key}={value}" if isinstance(value, str) else f"{key}={json.dumps(value)}"


def _versions(frame: pd.DataFrame) -> pd.DataFrame:
    """Versions and machines in the records, and the ones writing this report."""
    rows = []
    for column in sorted(c for c in frame.columns if c.startswith("env_")):
        values = frame[column].dropna().astype(str).unique()
        if len(values):
            rows.append({"what": f"records: {column[4:]}", "value": ", ".join(sorted(values))})
    for package in ("opswap", "torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(sys.modules.get(package), "__version__", "not installed")
        rows.append({"what": f"report: {package}", "value": version})
    rows.append({"what": "report: python", "value": platform.python_version()})
    return pd.DataFrame(rows)


def _short_error(error) -> str:
    lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def sections(frame: pd.DataFrame, history: pd.DataFrame, context: ReportContext, *,
             results_dir: Path) -> tuple[list[str], dict[str, list[Block]]]:
    """Summary lines and the report's sections, in order."""
    with warnings.catch_warnings():  # a cell pooling settings is said once, in the summary
        warnings.simplefilter("ignore", tables.PooledSettingsWarning)
        return _sections(frame, history, context, results_dir=results_dir)


def _sections(frame: pd.DataFrame, history: pd.DataFrame, context: ReportContext, *,
              results_dir: Path) -> tuple[list[str], dict[str, list[Block]]]:
    counts = frame["status"].value_counts().to_dict()
    expected, skipped, why, reference = context.expected, context.skipped, context.note, context.reference
    study, study_file, overrides = context.study, context.study_file, context.overrides
    done = set(frame["trial_id"])
    summary = [f"{len(frame)} trial records: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                                  or "none yet")]
    summary.append(f"{len(expected - done)} of {len(expected)} expected trials pending"
                   if expected is not None else why)
    if context.teacher is not None and len(context.teacher):
        summary.append(_teacher_line(context.teacher))
    if expected is not None and done - expected:
        summary.append(f"{len(done - expected)} records are not trials of the study file as it "
                       "is now (its settings, or opswap's defaults, changed since they ran) and "
                       "are left out of this report")
        # Tables and figures show the study as it is defined now, never a mix of two versions.
        frame = frame[frame["trial_id"].isin(expected)]
        history = history[history["trial_id"].isin(expected)]
    sections: dict[str, list[Block]] = {}
    if is_assembly(frame):  # assembled networks get their own section; the generic ones see the rest
        sections["Assembly"] = assembly_blocks(frame)
        frame = frame[frame["picked_by"].isna() | (frame["status"] != "ok")]
        history = history[history["trial_id"].isin(frame["trial_id"])]
    summary += tables.pooled_settings(frame, reference)
    ok = frame[frame["status"] == "ok"]
    sections["Settings"] = [Block("table", _settings_table(frame), "settings of the trials")]
    if context.study_text is not None:
        given = "".join(f" --set {o}" if isinstance(o, str) else f" --set {_override(*o)}" for o in overrides)
        sections["Settings"].append(Block("pre", context.study_text,
                                          f"study file {study_file}" + (f", run with{given}" if given else "")))
    teacher = context.teacher
    if teacher is not None:
        if len(teacher):
            columns = ["trial_id", "status", "model", "init", "seed", "epochs", "test_acc", "seconds"]
            sections["Settings"].append(Block("table", teacher[columns],
                                              "the teacher (trained once, not a compared trial)"))
    results = []
    long = tables.summary(frame, reference=reference)
    for epochs, table in tables.paper_tables(frame, not_applicable=skipped, reference=reference).items():
        results.append(Block("table", table, f"test accuracy (%), {_budget(epochs)}"))
        part = long[long["epochs"].isna()] if epochs is None else long[long["epochs"] == epochs]
        words = [tables.significance_sentence(part)] if part["n_reference"].max() > 0 else []
        words += tables.best_sentences(part)
        results.append(Block("text", f"{_budget(epochs)}: " + " ".join(w.rstrip(".") + "." for w in words)))
    if results:
        results.append(Block("text", tables.LEGEND))
        for epochs, table in tables.delta_tables(frame, not_applicable=skipped, reference=reference).items():
            results.append(Block("table", table, f"Δ test accuracy vs baseline (percentage points, "
                                 f"Welch 95 % interval), {_budget(epochs)}"))
    sections["Results"] = results or [Block("text", "No finished trials yet.")]
    if len(ok):
        heat = figures.accuracy_heatmap(frame)
        if heat.axes:
            sections["Results"].append(Block("figure", heat, "test accuracy per position and "
                                             "candidate; colour = Δ vs baseline", "heatmap"))
        sections["Learning curves"] = _curves(history)
        if len(predict.points(frame)):
            sections["Predictability"] = predictability_section(frame, context.features,
                                                                correction=context.correction)
        sections["Complexity"] = [Block("table", tables.format_complexity(tables.complexity_table(frame)),
                                        "median over trials: params, MACs, latency (batch 1; "
                                        "median with min–max over the trials and their number), "
                                        "sparsity and storage")]
        sparse = (ok["prune"].fillna("none") != "none").any()
        methods = ("method" in ok and ok["method"].notna().any()) or (ok["kind"] == "traditional").any()
        if methods or sparse:
            scores = tables.method_table(frame)
            at = scores.attrs.get("data_fraction", float("nan"))
            requirement = "" if at != at else f"; data requirement: accuracy at data fraction {at:g}, the same for every method"
            sections["Method comparison"] = [
                Block("figure", figures.method_comparison(frame), "measured criteria, each "
                      "normalised so 1 = best method shown (higher is better)", "methods"),
                Block("table", _method_grid(scores), "mean value (score) per method and measure; "
                      f"full training set{requirement}")]
        if sparse:
            sections["Sparsity"] = [Block("figure", figures.accuracy_vs_sparsity(frame),
                                          "test accuracy against target sparsity", "sparsity")]
            sections["Pruning: accuracy, latency and storage"] = pruning_blocks(frame)
    bad = frame[frame["status"] != "ok"]
    if len(bad):
        failures = pd.DataFrame({
            "trial": bad["trial_id"], "status": bad["status"],
            "position": bad["position"].astype(str).replace("<NA>", ""),
            "op": bad["op"], "seed": bad["seed"], "error": bad["error"].map(_short_error)})
        sections["Failed trials"] = [Block("table", failures.reset_index(drop=True))]
    provenance = pd.DataFrame([
        {"what": "study", "value": study},
        {"what": "results directory", "value": str(results_dir.resolve())},
        {"what": "study file", "value": "" if study_file is None else
         f"{Path(study_file).resolve()} (sha256 "
         f"{hashlib.sha256((context.study_text or '').encode()).hexdigest()[:16]})"},
        {"what": "records", "value": f"{len(frame)} files; trial ids hash "
         f"{hashlib.sha256(','.join(sorted(done)).encode()).hexdigest()[:16]}"},
        {"what": "generated", "value": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    ])
    sections["Versions and provenance"] = [Block("table", _versions(frame)),
                                           Block("table", provenance)]
    # Readers come for the results: the settings follow them, just before provenance.
    settings = sections.pop("Settings")
    provenance = sections.pop("Versions and provenance")
    sections.update({"Settings": settings, "Versions and provenance": provenance})
    return summary, sections


def _budget(epochs) -> str:
    """`1 epoch`, `25 epochs`."""
    if epochs is None:
        return "no epoch budget"
    return f"{epochs} epoch" + ("" if epochs == 1 else "s")


def _teacher_line(teacher: pd.DataFrame) -> str:
    """The teacher's accuracy, said at the top: every Δ is read against what it started from."""
    row = teacher.iloc[0]
    if row.get("status") != "ok" or pd.isna(row.get("test_acc")):
        return f"teacher ({row.get('model')}): {row.get('status')}, no test accuracy"
    epochs = row.get("epochs")
    trained = f", {int(epochs)} epochs" if pd.notna(epochs) else ""
    return f"teacher ({row.get('model')}{trained}): test accuracy {float(row['test_acc']):.2f} %"


def _method_grid(scores: pd.DataFrame) -> pd.DataFrame:
    """Methods × measures, cells "value (score)", "—" where not measured."""
    text = [tables.MISSING if pd.isna(v) else f"{v:.4g} ({s:.2f})"
            for v, s in zip(scores["value"], scores["score"])]
    grid = scores.assign(text=text, measure=scores["criterion"] + ": " + scores["measure"])
    grid = grid.pivot(index="method", columns="measure", values="text")
    return grid[list(dict.fromkeys(scores["criterion"] + ": " + scores["measure"]))]


def _curves(history: pd.DataFrame) -> list[Block]:
    """One learning-curve figure per epoch budget, split by position when crowded."""
    blocks = []
    history = history[history["kind"].fillna("train") != "traditional"]
    for epochs, part in history.groupby("epochs"):
        if part["epoch"].nunique() < 2:
            blocks.append(Block("text", f"{_budget(epochs)}: one point per trial, no curve "
                                "to draw (the final values are in the tables)."))
            continue
        series = part.groupby(["position", "op", "sparsity", "prune", "init"], dropna=False).ngroups
        if series <= 10:
            groups = [("", part)]
        else:
            base = part[part["position"].isna()]
            groups = [(f", position {int(p)}", pd.concat([base, g]))
                      for p, g in part.dropna(subset=["position"]).groupby("position")]
        for suffix, group in groups:
            name = f"curves-{epochs}ep" + suffix.replace(", position ", "-p")
            blocks.append(Block("figure", figures.learning_curves(group), f"learning curves, "
                                f"{_budget(epochs)}{suffix} (mean ± sd over seeds)", name))
    return blocks or [Block("text", "No per-epoch history yet.")]


