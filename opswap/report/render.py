"""The report as files: one self-contained HTML page and a Markdown README with PNG figures."""
from __future__ import annotations

import base64
import html
import warnings
from pathlib import Path

from opswap.analysis import figures, tables
from opswap.analysis.cells import read_features
from opswap.analysis.results import export, load_history, load_results
from opswap.atomic import write_bytes, write_text
from opswap.report.sections import Block, ReportContext, sections

__all__ = ["write_report"]


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


def _beside(context: ReportContext, results_dir: Path) -> ReportContext:
    """The features file and the teacher's record of the results folder, where the caller gave none."""
    import dataclasses

    if context.features is None:
        context = dataclasses.replace(context, features=read_features(results_dir))
    teacher = results_dir / "teacher"
    if context.teacher is None and teacher.is_dir() and any(teacher.glob("*.json")):
        context = dataclasses.replace(context, teacher=load_results(teacher))
    return context


def write_report(results_dir: str | Path, target: str | Path, context: ReportContext | None = None) -> Path:
    """Write index.html, README.md, the PNG figures and CSVs of a study's records into `target`.

    `context` says what the records cannot (the study's expected trials, skipped pairs,
    reference); without it the report shows every record found. Returns index.html.
    """
    results_dir, target = Path(results_dir), Path(target)
    context = context or ReportContext(study=results_dir.resolve().name)
    study = context.study
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame, history = load_results(results_dir), load_history(results_dir)
        context = _beside(context, results_dir)
    summary, parts = sections(frame, history, context, results_dir=results_dir)
    summary += list(dict.fromkeys(str(w.message) for w in caught
                                  if issubclass(w.category, UserWarning)))
    target.mkdir(parents=True, exist_ok=True)
    images = {}
    for blocks in parts.values():
        for block in blocks:
            if block.kind == "figure":
                images[block.name] = figures.png_bytes(block.content, dpi=100)
                write_bytes(target / f"{block.name}.png", images[block.name])
    export(frame, target / "results.csv")
    export(history, target / "history.csv")
    title = f"opswap report: {study}"
    write_text(target / "README.md", _markdown(title, summary, parts))
    return write_text(target / "index.html", _html(title, summary, parts, images))


