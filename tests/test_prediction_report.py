"""The predictability section on synthetic records: a verdict, CV errors, the noise ceiling, honest ▲."""
import re

import pandas as pd
import pytest

from opswap import report
from opswap.analysis import crossval
from opswap.analysis.cells import seed_frame
from opswap.analysis.results import load_results
from opswap.report.prediction import noise_ceiling, predictability_section
from prediction_data import records
from record_factory import make_record, write_records

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return load_results(write_records(tmp_path_factory.mktemp("p") / "demo", records(3)))


@pytest.fixture(scope="module")
def blocks(frame):
    return predictability_section(frame, n_boot=200)


def test_section_opens_with_a_verdict_naming_the_correction(blocks):
    first = blocks[0]
    assert first.kind == "text" and first.content.startswith("3 epochs: Under leave-one-position-out CV (n = 15 cells)")
    assert "Holm-adjusted" in first.content and "Holm correction over the" in first.content
    assert "Under leave-one-op-out CV" in first.content
    assert "the seed-to-seed noise ceiling is ρ ≈" in first.content
    assert "better than the" in first.content  # replace-1 accuracy tracks Δ here: it beats the naive means


def test_cv_table_puts_predictors_beside_the_naive_baselines(blocks):
    (cv,) = [b.content for b in blocks if b.kind == "table" and "out-of-fold error" in b.caption]
    assert set(cv["CV"]) == {"leave-one-position-out", "leave-one-op-out"}
    bases = cv[cv["kind"] == "naive baseline"]
    assert {"op-family mean", "position mean"} <= set(bases["predictor"])
    best = cv[cv["CV"] == "leave-one-position-out"].iloc[0]
    assert best["predictor"] in ("linear in replace1_acc", "linear in distill_loss")
    assert float(best["MAE (points)"]) < 0.6 and best["sign right"] == "100 %"
    assert re.fullmatch(r"0\.9\d \[0\.\d\d, 1\.00\]", best["ρ [95 % CI]"])


def test_predicted_vs_measured_figure_and_worst_cells(blocks):
    names = [b.name for b in blocks if b.kind == "figure"]
    assert "predicted-vs-measured-3ep" in names and "predictors" in names
    (wrong,) = [b.content for b in blocks if b.kind == "table" and "erred most" in b.caption]
    assert len(wrong) == 5 and list(wrong.columns) == ["position", "op", "n seeds", "measured Δ", "predicted Δ", "error"]


def test_noise_ceiling_numbers(frame, blocks):
    (ceiling,) = [b.content for b in blocks if b.kind == "table" and b.caption.startswith("noise ceiling")]
    row = ceiling.iloc[0]
    assert row["budget"] == "3 epochs" and row["cells"] == "15" and row["seeds per cell"] == "3"
    seeds = seed_frame(frame)
    expected = noise_ceiling(seeds, 3, n_boot=200)
    std = (seeds.groupby(["position", "op"])["test_acc"].var().mean()) ** 0.5
    assert expected["std"] == pytest.approx(std)
    assert expected["mdd"] == pytest.approx(crossval.minimal_detectable_delta(std, 3, n_ref=3))
    assert row["minimal detectable Δ (80 % power)"] == f"{expected['mdd']:.2f}"
    assert row["seeds for a 0.5-point Δ"] == str(crossval.seeds_needed(std, 0.5))
    assert row["ceiling ρ (√reliability)"].startswith(f"{expected['reliability'].ceiling:.2f} [")
    floor = (2 / 3.141592653589793) ** 0.5 * std / 3 ** 0.5
    assert row["MAE of a perfect predictor"] == f"{floor:.2f}"
    (judged,) = [b.content for b in blocks if b.kind == "text" and b.content.startswith("Against the noise")]
    assert "the ceiling for 3-seed means is ρ ≈" in judged and "minimal detectable Δ" in judged
    assert f"a perfect predictor would err by about {floor:.2f} points" in judged


def test_too_few_positions_are_explained(tmp_path):
    few = [r for r in records(2) if r["settings"]["position"] in (None, 1, 2)]
    blocks = predictability_section(load_results(write_records(tmp_path / "f", few)), n_boot=0)
    assert "needs finished cells at ≥ 3 positions" in blocks[0].content
    assert any(b.caption.startswith("noise ceiling") for b in blocks)


def test_report_has_the_section_the_teacher_and_the_no_difference_sentence(tmp_path):
    recs = records(2, noise=0.0)
    recs += [make_record(test_acc=50.0 + s, op="identity", position=1, seed=s) for s in range(2)]
    teacher = pd.DataFrame([{"trial_id": "t", "status": "ok", "model": "wrn-16-1", "init": "scratch", "seed": 0,
                             "epochs": 10, "test_acc": 91.234, "seconds": 1.0}])
    context = report.ReportContext(study="demo", teacher=teacher)
    index = report.write_report(write_records(tmp_path / "demo", recs), tmp_path / "out", context)
    html = index.read_text()
    summary = html[html.index("<div class='summary'>"):html.index("</div>")]
    assert "teacher (wrn-16-1, 10 epochs): test accuracy 91.23 %" in summary
    assert "<h2>Predictability</h2>" in html and "Under leave-one-position-out CV" in html
    assert (index.parent / "predicted-vs-measured-3ep.png").is_file()
    # identity at position 1 is far ahead of nothing: every other cell is tested and most differ
    assert "tested cells differ from the baseline" in html
    quiet = [make_record(test_acc=a, seed=s) for s, a in enumerate([90.0, 90.4])]
    quiet += [make_record(test_acc=a, op="conv_bn_e1", position=2, seed=s) for s, a in enumerate([90.1, 90.3])]
    html = report.write_report(write_records(tmp_path / "quiet", quiet), tmp_path / "out2").read_text()
    assert "3 epochs: No cell differs significantly from the baseline (Welch&#x27;s t-test, p &lt; 0.05, 1 cell " \
           "tested)." in html


def test_best_mark_only_where_distinguishable_in_the_report(tmp_path):
    recs = [make_record(test_acc=a, seed=s) for s, a in enumerate([90.0, 90.1, 90.2])]
    recs += [make_record(test_acc=a, op="conv_bn_e1", position=2, seed=s) for s, a in enumerate([93.0, 93.1, 93.2])]
    recs += [make_record(test_acc=a, op="conv_bn_e2", position=2, seed=s) for s, a in enumerate([88.0, 88.1, 88.2])]
    recs += [make_record(test_acc=a, op="conv_bn_e1", position=3, seed=s) for s, a in enumerate([91.0, 89.0, 90.0])]
    recs += [make_record(test_acc=a, op="conv_bn_e2", position=3, seed=s) for s, a in enumerate([90.5, 91.5, 89.5])]
    html = report.write_report(write_records(tmp_path / "b", recs), tmp_path / "out").read_text()
    assert html.count("▲</td>") == 1 and '<td class="best">93.10 ± 0.10 (3)*** ▲</td>' in html
    assert "position 2: best conv_bn_e1 ▲, ahead of conv_bn_e2" in html
    assert "position 3: conv_bn_e2 and conv_bn_e1 tied within noise" in html
