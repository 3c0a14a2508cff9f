"""Reports of partial studies: the expected cells in the HTML and Markdown, self-contained."""
import base64
import importlib.util
import re
from pathlib import Path

import pytest

from opswap import report
from opswap.cli import main
from record_factory import make_record, paper_records, write_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A partial study: two epoch budgets, a failed trial, a corrupt file; its report."""
    tmp = tmp_path_factory.mktemp("report")
    records = paper_records(epochs=3, study="demo") + paper_records(epochs=6, study="demo")[:5]
    records.append(make_record(test_acc=None, op="resnet_e2", position=1, status="failed"))
    results = write_records(tmp / "results" / "demo", records)
    (results / "half-written.json").write_text('{"schema": 1, "trial')
    index = report.write_report(results, tmp / "reports" / "demo")
    return index, index.read_text(), index.with_name("README.md").read_text()


def test_report_goes_to_reports_root_slash_study(partial):
    index, _, _ = partial
    assert index.name == "index.html" and index.parent.name == "demo"
    assert {"README.md", "heatmap.png", "results.csv", "history.csv"} <= {p.name for p in index.parent.iterdir()}


def test_html_has_the_expected_cells_and_marks(partial):
    _, html, _ = partial
    assert "<td>95.00 ± 0.50 (3)*</td>" in html and "▲</td>" not in html  # best, not told from 93.00 (p = 0.055)
    assert "position 1: conv_bn_e2 and mbconv_e6_k3 tied within noise (Welch p = 0.055)" in html
    assert "<td>93.00 ± 1.00 (3)*</td>" in html
    assert '<td class="missing">— (1 failed)</td>' in html
    assert "<td>96.20 ± 0.20 (3)</td>" in html
    assert "<td>-3.20 [-5.56, -0.84]*</td>" in html            # Δ table
    assert "test accuracy (%), 6 epochs" in html and "<td>92.50 ± 0.71 (2)</td>" in html


def test_html_states_partial_status_settings_versions_and_provenance(partial):
    _, html, _ = partial
    assert "18 trial records: 1 failed, 17 ok" in html
    assert "half-written.json: corrupt trial record" in html
    headings = ("Results", "Learning curves", "Predictability", "Complexity", "Failed trials",
                "Settings", "Versions and provenance")
    places = [html.find(f"<h2>{heading}</h2>") for heading in headings]
    assert -1 not in places and places == sorted(places)  # results first, settings after them
    assert "<th>train_optimizer</th>" in html and "report: scipy" in html
    assert "records: torch</th><td>2.5.0" in html.replace("\n", "")
    assert "RuntimeError: boom" in html


def test_html_is_self_contained_with_embedded_png_figures(partial):
    index, html, _ = partial
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    pngs = sorted(p for p in index.parent.glob("*.png"))
    assert len(images) == len(pngs) >= 4
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", html)   # nothing fetched from elsewhere


def test_markdown_has_tables_and_figure_files(partial):
    index, _, markdown = partial
    assert "| 1 |  | 93.00 ± 1.00 (3)* | 95.00 ± 0.50 (3)* | — (1 failed) |" in markdown
    assert "| 3 |  | 96.20 ± 0.14 (2) | 96.50 (1)° | — |" in markdown
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (index.parent / target).is_file()
    assert "- 18 trial records: 1 failed, 17 ok" in markdown


def test_pending_trials_are_counted_from_the_study(tmp_path):
    records = [make_record(test_acc=a, seed=s) for s, a in enumerate([90.0, 91.0])]
    expected = {r["trial_id"] for r in records} | {"pending00001", "pending00002"}
    records.append(make_record(test_acc=93.0, seed=7))  # ran under older settings
    results = write_records(tmp_path / "r", records)
    study = tmp_path / "s.toml"
    study.write_text('name = "s"\n')
    context = report.ReportContext(study="s", expected=frozenset(expected), note="", study_file=str(study),
                                   study_text=study.read_text())
    index = report.write_report(results, tmp_path / "out", context)
    html = index.read_text()
    assert f"2 of {len(expected)} expected trials pending" in html
    assert "1 records are not trials of the study file as it is now" in html
    assert "left out of this report" in html
    assert "90.50 ± 0.71 (2)" in html  # the baseline cell holds the two current trials, not the stale one
    assert "name = &quot;s&quot;" in html                      # the study file is shown


def test_methods_study_gets_the_method_comparison(tmp_path):
    records = [make_record(test_acc=a, seed=s, model="tf-cnn", method="tf-cnn dense")
               for s, a in enumerate([70.0, 71.0])]
    records += [make_record(test_acc=a, seed=s, model="tf-cnn", sparsity=0.9, prune="dsr",
                            method="tf-cnn DSR 0.9", csr_bytes=80_000) for s, a in enumerate([75.0, 77.0])]
    records.append(make_record(test_acc=40.0, kind="traditional", model="tf-cnn", method="HOG + linear",
                               params=3_730, macs=None))
    index = report.write_report(write_records(tmp_path / "mc", records), tmp_path / "out")
    html = index.read_text()
    assert "<h2>Method comparison</h2>" in html and "<h2>Sparsity</h2>" in html
    assert "<th>methods</th>" in html and "<td>40.00 (1)</td>" in html  # no baseline: no test
    assert "<td>76.00 ± 1.41 (2)</td>" in html  # ahead of dense, but Welch p = 0.07: no ▲
    assert "methods: tf-cnn DSR 0.9 and tf-cnn dense tied within noise (Welch p = 0.069)" in html


def test_cli_writes_the_report_from_a_results_dir_or_a_study_file(tmp_path, capsys):
    results = write_records(tmp_path / "results" / "quick",
                            [make_record(test_acc=90.0, study="quick")])
    assert main(["report", str(results), "--reports", str(tmp_path / "reports")]) == 0
    assert (tmp_path / "reports" / "quick" / "index.html").is_file()
    study = tmp_path / "quick.toml"
    study.write_text('name = "quick"\n')
    assert main(["report", str(study), "--results", str(tmp_path / "results"),
                 "--reports", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "quick" / "README.md").is_file()
    assert "report:" in capsys.readouterr().out


def test_cli_refuses_a_folder_without_records_but_reports_a_study_underway(tmp_path, capsys):
    written = tmp_path / "reports" / "quick"  # a report folder given where its results were meant
    written.mkdir(parents=True)
    (written / "index.html").write_text("<html></html>")
    assert main(["report", str(written), "--reports", str(tmp_path / "out")]) == 2
    assert "holds no trial records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    underway = tmp_path / "results" / "quick"  # claims but no record yet: a study that has started
    (underway / "claims").mkdir(parents=True)
    assert main(["report", str(underway), "--reports", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "quick" / "index.html").is_file()


@pytest.mark.parametrize("content, message", [
    (None, "no such file or folder; give a study file"), ('name = "ghost"\n', "no results for study 'ghost'"),
    ("model = 'x'\n", "name: missing"), ("name = [\n", "not valid TOML")])
def test_cli_errors_say_what_is_wrong(tmp_path, capsys, content, message):
    path = tmp_path / "study.toml"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path), "--results", str(tmp_path / "none")]) == 2
    assert message in capsys.readouterr().err


def _browser_module():
    spec = importlib.util.spec_from_file_location("report_browser", ROOT / "benchmarks" / "report_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(_browser_module().find_browser() is None, reason="no Chromium on PATH")
def test_report_renders_in_a_headless_browser(partial, tmp_path):
    browser = _browser_module()
    index, _, _ = partial
    png = browser.screenshot(index, tmp_path / "shot.png", width=1000, height=1600)
    stats = browser.check_png(png)
    assert (stats["width"], stats["height"]) == (1000, 1600)
    assert stats["ink"] > 0.02 and stats["colours"] > 20


def test_a_study_with_only_its_teacher_done_still_gets_a_report(tmp_path):
    results = tmp_path / "results" / "fresh"
    write_records(results / "teacher", [make_record(test_acc=54.0, init="scratch", epochs=3)])
    from opswap.analysis.results import load_results

    context = report.ReportContext(study="fresh", teacher=load_results(results / "teacher"))
    index = report.write_report(results, tmp_path / "reports" / "fresh", context)
    markdown = index.with_name("README.md").read_text()
    assert "- 0 trial records: none yet" in markdown and "No finished trials yet." in markdown
    assert "**the teacher (trained once, not a compared trial)**" in markdown
    assert "| ok | wrn-16-1 | scratch | 0 | 3 | 54 | 60 |" in markdown


def test_report_of_a_study_run_with_overrides_knows_its_trials(tmp_path):
    from opswap.study import expand_study, load_study

    study = tmp_path / "m.toml"
    study.write_text('name = "m"\nkind = "methods"\nmodel = "tf-cnn"\ndataset = "cifar10"\nseeds = [0, 1]\n'
                     'reference = "dense"\n[[methods]]\nname = "dense"\n[[methods]]\nname = "dsr"\n'
                     'sparsity = 0.9\nprune = "dsr"\n')
    overrides = ("dataset=synthetic",)
    records = []
    for trial, acc in zip(expand_study(load_study(study, overrides)).trials, [47.0, 48.0, 42.0, 43.0]):
        record = make_record(test_acc=acc, seed=trial.settings["seed"], model="tf-cnn",
                             method=trial.settings["method"], study="m")
        record["trial_id"] = trial.trial_id
        records.append(record)
    write_records(tmp_path / "results" / "m", records)
    common = ["report", str(study), "--results", str(tmp_path / "results")]
    assert main(common + ["--reports", str(tmp_path / "reports"), "--set", "dataset=synthetic"]) == 0
    html = (tmp_path / "reports" / "m" / "index.html").read_text()
    assert "0 of 4 expected trials pending" in html and "-5.00" in html  # dsr vs the dense reference
    assert "run with --set dataset=synthetic" in html
    assert main(common + ["--reports", str(tmp_path / "plain")]) == 0
    plain = (tmp_path / "plain" / "m" / "index.html").read_text()
    assert "4 records are not trials of the study file" in plain and "-5.00" not in plain


def test_a_folder_mixing_two_settings_says_so_at_the_top_and_prints_no_warning(tmp_path, capsys):
    import copy

    other = []
    for r in paper_records():
        r = copy.deepcopy(r)
        r["settings"]["train"]["lr"] = 0.05
        r["trial_id"] = "f" + r["trial_id"][1:]
        other.append(r)
    results = write_records(tmp_path / "results" / "demo", paper_records() + other)
    assert main(["report", str(results), "--reports", str(tmp_path / "reports")]) == 0
    captured = capsys.readouterr()
    assert "PooledSettingsWarning" not in captured.err
    markdown = (tmp_path / "reports" / "demo" / "README.md").read_text()
    summary = markdown.split("## ")[0]
    assert "5 cells pool trials run with different settings — train_lr (0.05, 0.1)" in summary


def test_a_folder_with_one_model_on_two_datasets_reports_two_networks(tmp_path):
    import copy

    other = []
    for r in paper_records():
        r = copy.deepcopy(r)
        r["settings"].update(dataset="cifar100", num_classes=100)
        r["metrics"]["test_acc"] -= 20.0
        r["trial_id"] = "e" + r["trial_id"][1:]
        other.append(r)
    results = write_records(tmp_path / "results" / "demo", paper_records() + other)
    assert main(["report", str(results), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "demo" / "README.md").read_text()
    assert "wrn-16-1 · cifar100 · baseline" in markdown and "wrn-16-1 · synthetic · baseline" in markdown
    assert "Network wrn-16-1 · cifar100:" in markdown and "pool" not in markdown.split("## ")[0]
    figures = re.findall(r"\]\(([^)]+\.png)\)", markdown)  # each network's figures under their own names
    assert len(figures) == len(set(figures)) and any("wrn-16-1-cifar100-" in f for f in figures)
