"""A study's report: one self-contained HTML page and a Markdown README with PNG figures.

Collects the analysis of a results directory — the papers' tables (operation-substitution
Tables 2–3) with Welch's t-test against the baseline, Δ and complexity tables, the
predictability statistics, learning curves, and the dynamic-pruning paper's method comparison —
with the study's settings, the versions that produced the records and provenance. Works on a
partial study: missing cells read "—" and the header says how many trials are pending or failed.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import importlib.metadata
import platform
import sys
import tomllib
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from opswap.analysis import figures, predict, tables
from opswap.analysis.results import SETTING_COLUMNS, export, load_history, load_results


@dataclass(frozen=True)
class Block:
    """One piece of a section: text, preformatted text, a table or a figure."""

    kind: str          # "text" | "pre" | "table" | "figure"
    content: object
    caption: str = ""
    name: str = ""     # figure file stem


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


def _expected_trials(study_file: Path | None, overrides=()) -> tuple[set[str] | None, set, str, str | None]:
    """The study file's trial ids, skipped (position, op) pairs and reference method, or why not."""
    if study_file is None:
        return None, set(), "expected trials unknown (no study file given)", None
    try:
        from opswap.study.config import load_study
        from opswap.study.expand import expand_study

        study = load_study(study_file, overrides)
        expansion = expand_study(study)
    except Exception as err:  # the report must still be written for a study it cannot expand
        return None, set(), f"expected trials unknown ({type(err).__name__}: {err})", None
    return ({t.trial_id for t in expansion.trials},
            {(s.position, s.op) for s in expansion.skipped}, "", study.reference)


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


def _sections(frame: pd.DataFrame, history: pd.DataFrame, *, study: str, results_dir: Path,
              study_file: Path | None, overrides=()) -> tuple[list[str], dict[str, list[Block]]]:
    """Summary lines and the report's sections, in order."""
    counts = frame["status"].value_counts().to_dict()
    expected, skipped, why, reference = _expected_trials(study_file, overrides)
    done = set(frame["trial_id"])
    summary = [f"{len(frame)} trial records: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                                  or "none yet")]
    summary.append(f"{len(expected - done)} of {len(expected)} expected trials pending"
                   if expected is not None else why)
    if expected is not None and done - expected:
        summary.append(f"{len(done - expected)} records are not trials of the study file as it "
                       "is now (its settings, or opswap's defaults, changed since they ran) and "
                       "are left out of this report")
        # Tables and figures show the study as it is defined now, never a mix of two versions.
        frame = frame[frame["trial_id"].isin(expected)]
        history = history[history["trial_id"].isin(expected)]
    sections: dict[str, list[Block]] = {}
    ok = frame[frame["status"] == "ok"]
    sections["Settings"] = [Block("table", _settings_table(frame), "settings of the trials")]
    if study_file is not None:
        given = "".join(f" --set {o}" if isinstance(o, str) else f" --set {o[0]}={o[1]!r}" for o in overrides)
        sections["Settings"].append(Block("pre", study_file.read_text(encoding="utf-8"),
                                          f"study file {study_file}" + (f", run with{given}" if given else "")))
    teacher_dir = results_dir / "teacher"
    if teacher_dir.is_dir():
        teacher = load_results(teacher_dir)
        if len(teacher):
            columns = ["trial_id", "status", "model", "init", "seed", "epochs", "test_acc", "seconds"]
            sections["Settings"].append(Block("table", teacher[columns],
                                              "the teacher (trained once, not a compared trial)"))
    results = []
    for epochs, table in tables.paper_tables(frame, not_applicable=skipped, reference=reference).items():
        results.append(Block("table", table, f"test accuracy (%), {_budget(epochs)}"))
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
        points = predict.points(frame)
        if len(points):
            stats = predict.format_predictability(predict.predictability(frame))
            sections["Predictability"] = [
                Block("text", "Is the accuracy after a swap predictable? Spearman ρ and Kendall τ "
                      "(bootstrap 95 % interval) over (position, candidate) cells, seed means; "
                      "Kruskal–Wallis H with η² for categorical predictors."),
                Block("table", stats, "rank statistics of test accuracy against each predictor"),
                Block("figure", figures.predictor_scatter(frame), "test accuracy against predictors",
                      "predictors")]
        sections["Complexity"] = [Block("table", tables.format_complexity(tables.complexity_table(frame)),
                                        "median over trials: params, MACs, latency (batch 1), "
                                        "sparsity and storage")]
        sparse = (ok["prune"].fillna("none") != "none").any()
        methods = ("method" in ok and ok["method"].notna().any()) or (ok["kind"] == "traditional").any()
        if methods or sparse:
            scores = tables.method_table(frame)
            sections["Method comparison"] = [
                Block("figure", figures.method_comparison(frame), "measured criteria, each "
                      "normalised so 1 = best method shown (higher is better)", "methods"),
                Block("table", _method_grid(scores), "mean value (score) per method and measure; "
                      "full training set, data requirement at the smallest fraction")]
        if sparse:
            sections["Sparsity"] = [Block("figure", figures.accuracy_vs_sparsity(frame),
                                          "test accuracy against target sparsity", "sparsity")]
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
         f"{study_file.resolve()} (sha256 {hashlib.sha256(study_file.read_bytes()).hexdigest()[:16]})"},
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
    return f"{epochs} epoch" + ("" if epochs == 1 else "s")


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


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table.results{border-collapse:collapse;margin:.8em 0;font-size:.88em}
table.results th,table.results td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
table.results thead th{background:#f0f0f0}table.results tbody th{text-align:left;background:#fafafa}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
td.best{font-weight:700;background:#e6f4ea}td.missing{color:#999}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}.summary{background:#f3f6fb;padding:.6em 1em}"""


def _html(title: str, summary: list[str], sections: dict[str, list[Block]],
          images: dict[str, bytes]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<div class='summary'>" + "".join(f"<p>{html.escape(s)}</p>" for s in summary) + "</div>"]
    for heading, blocks in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            if block.kind == "text":
                parts.append(f"<p>{html.escape(block.content)}</p>")
            elif block.kind == "pre":
                parts.append(f"<p>{html.escape(block.caption)}</p><pre>{html.escape(block.content)}</pre>")
            elif block.kind == "table":
                parts.append(tables.to_html(block.content, caption=block.caption or None))
            else:
                data = base64.b64encode(images[block.name]).decode()
                parts.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;"
                             f"base64,{data}'><figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


def _markdown(title: str, summary: list[str], sections: dict[str, list[Block]]) -> str:
    parts = [f"# {title}", "", *[f"- {s}" for s in summary], ""]
    for heading, blocks in sections.items():
        parts += [f"## {heading}", ""]
        for block in blocks:
            if block.kind == "text":
                parts += [block.content, ""]
            elif block.kind == "pre":
                parts += [block.caption, "", "```toml", block.content.rstrip(), "```", ""]
            elif block.kind == "table":
                parts += ([f"**{block.caption}**", ""] if block.caption else []) + \
                         [tables.to_markdown(block.content), ""]
            else:
                parts += [f"![{block.caption}]({block.name}.png)", "", f"*{block.caption}*", ""]
    return "\n".join(parts)


def write_report(results_dir: str | Path, out_dir: str | Path = "reports", *, study: str | None = None,
                 study_file: str | Path | None = None, overrides=()) -> Path:
    """Write `out_dir/<study>/index.html` and `README.md` (+ PNGs, CSVs); returns index.html.

    `out_dir` is the reports root; `study` defaults to the results directory's name.
    """
    study = study or Path(results_dir).resolve().name
    return write_report_to(results_dir, Path(out_dir) / study, study=study, study_file=study_file,
                           overrides=overrides)


def write_report_to(results_dir: str | Path, target: str | Path, *, study: str,
                    study_file: str | Path | None = None, overrides=()) -> Path:
    """Write the report files into the directory `target`; returns index.html."""
    results_dir, target = Path(results_dir), Path(target)
    study_file = Path(study_file) if study_file is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame, history = load_results(results_dir), load_history(results_dir)
    summary, sections = _sections(frame, history, study=study, results_dir=results_dir,
                                  study_file=study_file, overrides=overrides)
    summary += list(dict.fromkeys(str(w.message) for w in caught
                                  if issubclass(w.category, UserWarning)))
    target.mkdir(parents=True, exist_ok=True)
    images = {}
    for blocks in sections.values():
        for block in blocks:
            if block.kind == "figure":
                images[block.name] = figures.png_bytes(block.content, dpi=100)
                (target / f"{block.name}.png").write_bytes(images[block.name])
    export(frame, target / "results.csv")
    export(history, target / "history.csv")
    title = f"opswap report: {study}"
    (target / "README.md").write_text(_markdown(title, summary, sections), encoding="utf-8")
    index = target / "index.html"
    index.write_text(_html(title, summary, sections, images), encoding="utf-8")
    return index


def resolve_study(study: str | Path, *, results: str | Path = "results",
                  reports: str | Path = "reports") -> tuple[str, Path, Path, Path | None]:
    """(name, results dir, report dir, study file) from a study TOML file or a results directory."""
    path = Path(study)
    if path.is_dir():
        return path.resolve().name, path, Path(reports) / path.resolve().name, None
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is neither a study file (.toml) nor a results directory")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from err
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f'{path}: the study needs a name, e.g. name = "quickstart"')
    results_dir, report_dir = Path(results) / name, Path(reports) / name
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results for study {name!r}: {str(results_dir)!r} does not exist "
                                f"(run `opswap run {path}` first, or pass --results DIR)")
    return name, results_dir, report_dir, path


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `opswap report`."""
    parser.add_argument("study", help="a study file (TOML) or a results directory of trial records")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="results root holding <study>/ (default: results)")
    parser.add_argument("--reports", default="reports", metavar="DIR",
                        help="reports root; the report goes to DIR/<study>/ (default: reports)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides the study was run with (opswap run --set ...), so the "
                             "report knows its trials")


def report_main(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    name, results_dir, report_dir, study_file = resolve_study(args.study, results=args.results,
                                                              reports=args.reports)
    index = write_report_to(results_dir, report_dir, study=name, study_file=study_file,
                            overrides=tuple(args.set))
    print(f"report: {index}\n        {index.with_name('README.md')}")
    return 0
