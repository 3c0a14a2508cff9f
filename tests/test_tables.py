"""Paper tables from hand-built records: means, stds, n, Welch's t-test, best marks, Δ."""
import math

import numpy as np
import pytest
from scipy import stats

from opswap.analysis import tables
from opswap.analysis.results import load_results
from record_factory import BASELINE, CELLS, make_record, paper_records, write_records


@pytest.fixture
def frame(tmp_path):
    records = paper_records(epochs=3) + paper_records(epochs=6)[:5]
    records.append(make_record(test_acc=None, op="resnet_e2", position=1, status="failed"))
    return load_results(write_records(tmp_path / "demo", records))


def welch_p(a, b):
    """Welch's two-sided p-value computed from its formula."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 2 * stats.t.sf(abs(t), df)


@pytest.mark.parametrize("position, op", list(CELLS))
def test_summary_means_stds_and_counts_match_hand_computation(frame, position, op):
    long = tables.summary(frame)
    entry = long[(long.epochs == 3) & (long.row == str(position)) & (long.candidate == op)].iloc[0]
    values = CELLS[(position, op)]
    assert entry.n == len(values)
    assert entry["mean"] == pytest.approx(np.mean(values))
    assert entry.delta == pytest.approx(np.mean(values) - np.mean(BASELINE))
    if len(values) > 1:
        assert entry["std"] == pytest.approx(np.std(values, ddof=1))
        assert entry.p_value == pytest.approx(welch_p(values, BASELINE))
    else:
        assert math.isnan(entry["std"]) and math.isnan(entry.p_value)


def test_paper_table_cells_marks_and_layout(frame):
    table = tables.paper_tables(frame)[3]
    assert list(table.index) == ["baseline", "1", "3"]
    assert list(table.columns) == ["baseline", "mbconv_e6_k3", "conv_bn_e2", "resnet_e2"]
    assert table.loc["baseline", "baseline"] == "96.20 ± 0.20 (3)"
    assert table.loc["1", "mbconv_e6_k3"] == "93.00 ± 1.00 (3)*"         # p = 0.027
    assert table.loc["1", "conv_bn_e2"] == "95.00 ± 0.50 (3)*"           # best, but Welch p = 0.055
    assert table.loc["3", "mbconv_e6_k3"] == "96.20 ± 0.14 (2)"          # p = 1: no mark
    assert table.loc["3", "conv_bn_e2"] == "96.50 (1)°"                  # n = 1: not testable, no ▲
    assert table.loc["1", "resnet_e2"] == "— (1 failed)"
    assert table.loc["3", "resnet_e2"] == "—"
    assert table.loc["1", "baseline"] == "" and table.loc["baseline", "conv_bn_e2"] == ""


def test_tied_best_candidates_are_not_marked(tmp_path):
    records = [make_record(test_acc=90.0 + 0.1 * s, op=op, position=2, seed=s)
               for op in ("conv_bn_e1", "conv_bn_e2") for s in range(3)]
    records += [make_record(test_acc=89.0 + 0.1 * s, op="resnet_e2", position=2, seed=s) for s in range(3)]
    frame = load_results(write_records(tmp_path / "t", records))
    table = tables.paper_tables(frame)[3]
    assert table.loc["2"].tolist() == ["90.10 ± 0.10 (3)", "90.10 ± 0.10 (3)", "89.10 ± 0.10 (3)"]
    (line,) = tables.best_sentences(tables.summary(frame))
    assert line.startswith("position 2: ") and "tied within noise" in line


def test_best_is_marked_only_when_distinguishable_from_the_runner_up(tmp_path):
    records = [make_record(test_acc=a, op="conv_bn_e1", position=2, seed=s) for s, a in enumerate([90.0, 90.2, 90.1])]
    records += [make_record(test_acc=a, op="conv_bn_e2", position=2, seed=s) for s, a in enumerate([85.0, 85.3, 85.1])]
    records += [make_record(test_acc=a, op="resnet_e2", position=3, seed=s) for s, a in enumerate([80.0, 83.0, 81.0])]
    records += [make_record(test_acc=a, op="conv_bn_e2", position=3, seed=s) for s, a in enumerate([81.5, 79.0, 80.0])]
    frame = load_results(write_records(tmp_path / "d", records))
    table = tables.paper_tables(frame)[3]
    assert table.loc["2", "conv_bn_e1"] == "90.10 ± 0.10 (3) ▲"
    assert tables.BEST not in table.loc["3"].str.cat()  # means differ, seeds overlap: no mark
    long = tables.summary(frame)
    p = stats.ttest_ind([90.0, 90.2, 90.1], [85.0, 85.3, 85.1], equal_var=False).pvalue
    assert long[long.best].candidate.tolist() == ["conv_bn_e1"]
    lines = tables.best_sentences(long)
    assert lines == [f"position 2: best conv_bn_e1 ▲, ahead of conv_bn_e2 (Welch p = {p:.2g})",
                     lines[1]] and "tied within noise" in lines[1]
    assert "distinguishable from the runner-up" in tables.LEGEND


def test_significance_sentence_says_when_no_cell_differs(frame):
    long = tables.summary(frame)
    three = long[long.epochs == 3]
    assert tables.significance_sentence(three) == ("2 of 3 tested cells differ from the baseline at p < 0.05 "
                                                   "(Welch's t-test, uncorrected); 0 after Holm's correction over "
                                                   "the 3 cells; 1 cell not testable (n < 2 on a side).")
    none = three[three.candidate != "mbconv_e6_k3"].copy()
    none.loc[none.candidate == "conv_bn_e2", "p_value"] = 0.5
    assert tables.significance_sentence(none).startswith("No cell differs significantly from the baseline")


def test_pairs_the_model_cannot_take_are_left_empty(frame):
    table = tables.paper_tables(frame, not_applicable={(3, "resnet_e2")})[3]
    assert table.loc["3", "resnet_e2"] == "" and table.loc["1", "resnet_e2"] == "— (1 failed)"
    assert tables.delta_tables(frame, not_applicable={(3, "resnet_e2")})[3].loc["3", "resnet_e2"] == ""


def test_one_table_per_epoch_budget_with_missing_cells(frame):
    paper = tables.paper_tables(frame)
    assert sorted(paper) == [3, 6]
    assert paper[6].loc["1", "mbconv_e6_k3"] == "92.50 ± 0.71 (2)"
    assert "3" not in paper[6].index


@pytest.mark.parametrize("accs, marks", [([90.0, 90.1, 89.9], "***"), ([95.0, 95.3, 95.1], "**"),
                                         ([96.2, 96.0, 96.4], ""), ([97.0], "°")])
def test_significance_marks_follow_welch_p(tmp_path, accs, marks):
    records = [make_record(test_acc=a, seed=s) for s, a in enumerate(BASELINE)]
    records += [make_record(test_acc=a, op="conv_bn_e1", position=2, seed=s)
                for s, a in enumerate(accs)]
    table = tables.paper_tables(load_results(write_records(tmp_path / "s", records)))[3]
    cell = table.loc["2", "conv_bn_e1"]
    assert cell.split(")")[1].strip() == marks


def test_delta_table_gives_difference_and_welch_interval(frame):
    delta = tables.delta_tables(frame)[3]
    test = stats.ttest_ind(CELLS[(1, "mbconv_e6_k3")], BASELINE, equal_var=False)
    low, high = test.confidence_interval(0.95)
    assert delta.loc["1", "mbconv_e6_k3"] == f"-3.20 [{low:+.2f}, {high:+.2f}]*"
    assert delta.loc["3", "mbconv_e6_k3"].startswith("+0.00 [")
    assert delta.loc["3", "conv_bn_e2"] == "+0.30 (n=1)°"
    assert delta.loc["baseline", "baseline"] == "reference"


def test_sparse_variants_are_separate_candidates_compared_with_the_dense_baseline(tmp_path):
    records = [make_record(test_acc=a, seed=s, model="tf-cnn") for s, a in enumerate([70, 71])]
    records += [make_record(test_acc=a, seed=s, model="tf-cnn", sparsity=0.9, prune="dsr",
                            csr_bytes=80_000) for s, a in enumerate([75, 77])]
    frame = load_results(write_records(tmp_path / "p", records))
    table = tables.paper_tables(frame)[3]
    assert list(table.columns) == ["baseline", "baseline · dsr 0.9"]
    assert table.loc["baseline", "baseline · dsr 0.9"] == "76.00 ± 1.41 (2)"  # vs dense: Welch p = 0.07, no ▲
    complexity = tables.complexity_table(frame).set_index("candidate")
    assert complexity.loc["baseline · dsr 0.9", "csr_bytes"] == 80_000
    assert tables.format_complexity(tables.complexity_table(frame))["csr_bytes"].tolist() == ["—", "80 kB"]


def test_complexity_table_shows_the_latency_spread(tmp_path):
    records = [make_record(test_acc=90.0, seed=s, latency_ms_b1=ms) for s, ms in enumerate([1.0, 1.5, 4.0])]
    records.append(make_record(test_acc=90.0, op="conv_bn_e1", position=2, latency_ms_b1=2.0))
    table = tables.complexity_table(load_results(write_records(tmp_path / "l", records))).set_index("candidate")
    assert table.loc["baseline", ["latency_ms_b1", "latency_ms_b1_min", "latency_ms_b1_max", "latency_n"]].tolist() \
        == [1.5, 1.0, 4.0, 3]
    text = tables.format_complexity(table.reset_index()).set_index("candidate")["latency_ms_b1"]
    assert text["baseline"] == "1.50 ms (1.00–4.00, n=3)" and text["conv_bn_e1"] == "2.00 ms"


def test_method_table_scores_are_relative_to_the_best(tmp_path):
    records = [make_record(test_acc=70.0, train_acc=80.0, model="tf-cnn", params=100_000,
                           latency_ms_b1=2.0)]
    records.append(make_record(test_acc=40.0, train_acc=50.0, kind="traditional", model="hog",
                               params=4_000, latency_ms_b1=1.0, macs=None))
    records.append(make_record(test_acc=50.0, model="tf-cnn", data_fraction=0.1, seed=1))
    scores = tables.method_table(load_results(write_records(tmp_path / "m", records)))
    score = scores.set_index(["method", "measure"])["score"]
    assert score["tf-cnn", "test_acc"] == 1.0 and score["traditional", "test_acc"] == pytest.approx(40 / 70)
    assert score["traditional", "nonzero params"] == 1.0
    assert score["tf-cnn", "nonzero params"] == pytest.approx(0.04)
    assert score["tf-cnn", "latency_ms_b1"] == pytest.approx(0.5)
    assert score["tf-cnn", "acc at data fraction"] == 1.0
    assert math.isnan(score["traditional", "acc at data fraction"])
    assert math.isnan(score["traditional", "macs"])


def test_markdown_and_html_rendering(frame):
    table = tables.paper_tables(frame)[3]
    markdown = tables.to_markdown(table)
    assert markdown.splitlines()[0] == "| position | baseline | mbconv_e6_k3 | conv_bn_e2 | resnet_e2 |"
    assert "| 1 |  | 93.00 ± 1.00 (3)* | 95.00 ± 0.50 (3)* | — (1 failed) |" in markdown
    table.loc["1", "conv_bn_e2"] += f" {tables.BEST}"  # as if it were told from the runner-up
    html = tables.to_html(table, caption="25 <epochs>")
    assert '<td class="best">95.00 ± 0.50 (3)* ▲</td>' in html
    assert '<td class="missing">— (1 failed)</td>' in html
    assert "25 &lt;epochs&gt;" in html


def test_method_table_counts_a_pruned_network_by_its_surviving_weights(tmp_path):
    records = [make_record(test_acc=70.0, model="tf-cnn", params=100_000, nonzero_params=100_000),
               make_record(test_acc=68.0, model="tf-cnn", params=100_000, nonzero_params=20_000,
                           sparsity=0.8, prune="dsr", method="tf-cnn dsr")]
    scores = tables.method_table(load_results(write_records(tmp_path / "s", records)))
    values = scores[scores["measure"] == "nonzero params"].set_index("method")["value"]
    assert values["tf-cnn dsr"] == 20_000 and values["tf-cnn"] == 100_000


def test_cells_on_a_data_fraction_compare_with_the_baseline_on_the_same_fraction(tmp_path):
    records = [make_record(test_acc=a, seed=s, data_fraction=0.5) for s, a in enumerate([60.0, 62.0])]
    records += [make_record(test_acc=a, seed=s) for s, a in enumerate([80.0, 82.0])]
    records += [make_record(test_acc=a, seed=s, position=1, op="mbconv_e6_k3", data_fraction=0.5)
                for s, a in enumerate([64.0, 66.0])]
    long = tables.summary(load_results(write_records(tmp_path / "f", records)))
    cell = long[(long["row"] == "1")].iloc[0]
    assert cell["n_reference"] == 2 and cell["delta"] == pytest.approx(4.0)
    assert sorted(long[long["is_reference"]]["candidate"]) == ["baseline", "baseline · 0.5 data"]


def test_methods_are_tested_against_the_reference_method(tmp_path):
    records = [make_record(test_acc=a, seed=s, model="tf-cnn", method="dense") for s, a in enumerate([47.0, 48.0, 49.0])]
    records += [make_record(test_acc=a, seed=s, model="tf-cnn", sparsity=0.9, prune="dsr", method="dsr 0.9")
                for s, a in enumerate([42.0, 43.0, 44.0])]
    frame = load_results(write_records(tmp_path / "m", records))
    assert not tables.summary(frame)["is_reference"].any()  # no reference named: nothing to test
    long = tables.summary(frame, reference="dense").set_index("candidate")
    assert long.loc["dense", "is_reference"] and long.loc["dsr 0.9", "delta"] == pytest.approx(-5.0)
    expected = stats.ttest_ind([42.0, 43.0, 44.0], [47.0, 48.0, 49.0], equal_var=False).pvalue
    assert long.loc["dsr 0.9", "p_value"] == pytest.approx(expected)
    assert tables.delta_tables(frame, reference="dense")[3].loc["methods", "dsr 0.9"].startswith("-5.00")


def test_methods_on_different_networks_are_all_tested_against_the_reference(tmp_path):
    records = [make_record(test_acc=a, seed=s, model="tf-cnn", method="dense") for s, a in enumerate([47.0, 48.0])]
    records += [make_record(test_acc=a, seed=s, model="wrn-16-2", method="wrn") for s, a in enumerate([52.0, 53.0])]
    long = tables.summary(load_results(write_records(tmp_path / "w", records)), reference="dense")
    wrn = long.set_index("candidate").loc["wrn"]
    assert wrn["n_reference"] == 2 and wrn["delta"] == pytest.approx(5.0)


def test_scratch_and_teacher_baselines_are_separate_references(tmp_path):
    records = [make_record(test_acc=a, seed=s, init="scratch") for s, a in enumerate([80.0, 81.0])]
    records += [make_record(test_acc=a, seed=s, init="teacher") for s, a in enumerate([95.0, 96.0])]
    records += [make_record(test_acc=a, seed=s, position=1, op="mbconv_e6_k3", init="lana")
                for s, a in enumerate([94.0, 95.0])]
    records += [make_record(test_acc=a, seed=s, position=1, op="mbconv_e6_k3", init="scratch")
                for s, a in enumerate([79.0, 80.0])]
    long = tables.summary(load_results(write_records(tmp_path / "i", records))).set_index("candidate")
    assert long.loc["baseline", "mean"] == pytest.approx(95.5) and long.loc["baseline · scratch", "mean"] == 80.5
    assert long.loc["mbconv_e6_k3", "delta"] == pytest.approx(-1.0)                 # vs the teacher baseline
    assert long.loc["mbconv_e6_k3 · scratch init", "delta"] == pytest.approx(-1.0)  # vs the scratch baseline


def test_identical_values_on_both_sides_are_no_difference_and_different_constants_are(tmp_path):
    """Zero spread on both sides: equal values give p = 1 (not a missing test), unequal ones p = 0."""
    records = [make_record(test_acc=90.0, seed=s) for s in range(3)]
    records += [make_record(test_acc=90.0, op="conv_bn_e1", position=2, seed=s) for s in range(3)]
    records += [make_record(test_acc=91.0, op="mbconv", position=2, seed=s) for s in range(3)]
    rows = tables.summary(load_results(write_records(tmp_path / "s", records)))
    same = rows[rows["candidate"].str.startswith("conv_bn")].iloc[0]
    other = rows[rows["candidate"].str.startswith("mbconv")].iloc[0]
    assert same["p_value"] == 1.0 and same["delta"] == 0.0 and same["marks"] == ""
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0)
    assert other["p_value"] == 0.0 and other["delta"] == 1.0 and other["marks"] == "***"


def _retarget(record: dict, **settings) -> dict:
    """The record as if run with other settings (`train` merged), under a fresh trial id."""
    import copy
    import hashlib
    import json

    record = copy.deepcopy(record)
    train = settings.pop("train", None)
    record["settings"].update(settings)
    if train:
        record["settings"]["train"].update(train)
    record["trial_id"] = hashlib.sha1(json.dumps(record["settings"], sort_keys=True).encode()).hexdigest()[:12]
    return record


def test_trials_on_different_datasets_are_never_pooled_into_one_cell(tmp_path):
    """One folder, one model, two datasets: two networks, each compared with its own baseline."""
    import warnings

    ten = paper_records()
    hundred = [_retarget(r, dataset="cifar100", num_classes=100) for r in paper_records()]
    for r in hundred:  # the same model on CIFAR-100 is ~20 points lower
        r["metrics"]["test_acc"] -= 20.0
    frame = load_results(write_records(tmp_path / "both", ten + hundred))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tables.PooledSettingsWarning)
        long = tables.summary(frame)
    base = long[long["is_reference"]].set_index("row")
    assert set(base.index) == {"wrn-16-1 · synthetic · baseline", "wrn-16-1 · cifar100 · baseline"}
    assert base.loc["wrn-16-1 · synthetic · baseline", "mean"] == pytest.approx(np.mean(BASELINE))
    assert base.loc["wrn-16-1 · cifar100 · baseline", "mean"] == pytest.approx(np.mean(BASELINE) - 20)
    assert (base["n"] == 3).all()
    cell = long.set_index(["row", "candidate"]).loc[("wrn-16-1 · cifar100 · 1", "mbconv_e6_k3")]
    assert cell["n"] == 3 and cell["delta"] == pytest.approx(93.0 - 96.2)  # against its own baseline
    table = tables.paper_tables(frame)[3]
    assert "wrn-16-1 · cifar100 · baseline" in table.index and "wrn-16-1 · synthetic · 3" in table.index


def test_a_cell_pooling_other_settings_is_said(tmp_path):
    """Records of two studies that differ in lr, or in the precision that ran, in one folder."""
    fast = [_retarget(r, train={"lr": 0.05}, seed=r["settings"]["seed"] + 10) for r in paper_records()]
    frame = load_results(write_records(tmp_path / "mixed", paper_records() + fast))
    sentences = tables.pooled_settings(frame)
    assert len(sentences) == 1
    assert "train_lr (0.05, 0.1)" in sentences[0] and "5 cells pool" in sentences[0]
    assert "position 1 mbconv_e6_k3 at 3 epochs" in sentences[0]
    with pytest.warns(tables.PooledSettingsWarning, match="train_lr"):
        tables.summary(frame)
    # One study's records: homogeneous cells, nothing said.
    assert tables.pooled_settings(load_results(write_records(tmp_path / "one", paper_records()))) == []
    # The same settings asked, different precision run (bf16 on one machine, fp32 on another).
    records = paper_records()
    for i, r in enumerate(records):
        r["metrics"]["precision"] = "bf16" if i % 2 else "fp32"
    sentences = tables.pooled_settings(load_results(write_records(tmp_path / "prec", records)))
    assert len(sentences) == 1 and "precision (bf16, fp32)" in sentences[0]


def test_methods_are_compared_at_one_data_fraction(tmp_path):
    """A ran 0.1 and 0.5, B only 0.5: both are scored at 0.5, never A at 0.1 against B at 0.5."""
    records = [make_record(test_acc=70.0, model="tf-cnn", method="A"),
               make_record(test_acc=68.0, model="tf-cnn", method="B", seed=1),
               make_record(test_acc=40.0, model="tf-cnn", method="A", data_fraction=0.1, seed=2),
               make_record(test_acc=60.0, model="tf-cnn", method="A", data_fraction=0.5, seed=3),
               make_record(test_acc=55.0, model="tf-cnn", method="B", data_fraction=0.5, seed=4)]
    scores = tables.method_table(load_results(write_records(tmp_path / "m", records)))
    value = scores.set_index(["method", "measure"])["value"]
    assert scores.attrs["data_fraction"] == 0.5
    assert value["A", "acc at data fraction"] == 60.0 and value["B", "acc at data fraction"] == 55.0
    # No fraction shared by all: the one most methods ran (the smallest of those); the rest missing.
    records = [make_record(test_acc=70.0, model="tf-cnn", method=m, seed=i) for i, m in enumerate("ABC")]
    records += [make_record(test_acc=a, model="tf-cnn", method=m, data_fraction=f, seed=10 + i)
                for i, (m, f, a) in enumerate([("A", 0.1, 30.0), ("B", 0.1, 35.0), ("C", 0.2, 50.0)])]
    scores = tables.method_table(load_results(write_records(tmp_path / "n", records)))
    value = scores.set_index(["method", "measure"])["value"]
    assert scores.attrs["data_fraction"] == 0.1
    assert value["B", "acc at data fraction"] == 35.0 and math.isnan(value["C", "acc at data fraction"])


def test_two_data_files_of_one_name_are_two_networks_and_an_unset_setting_is_no_other_value(tmp_path):
    import copy

    a = [_retarget(r, dataset="npz", data="/a/train.npz") for r in paper_records()]
    b = [_retarget(r, dataset="npz", data="/b/train.npz") for r in paper_records()]
    long = tables.summary(load_results(write_records(tmp_path / "ab", a + b)))
    assert set(long[long["is_reference"]]["row"]) == {"wrn-16-1 · /a/train.npz · baseline",
                                                      "wrn-16-1 · /b/train.npz · baseline"}
    c = [_retarget(r, dataset="npz", data="/c/other.npz") for r in paper_records()]
    long = tables.summary(load_results(write_records(tmp_path / "ac", a + c)))
    assert "wrn-16-1 · other.npz · baseline" in set(long["row"])  # distinct names: the file name suffices
    # Records written before a setting existed lack it: not a second value of it.
    old = []
    for r in paper_records():
        r = copy.deepcopy(r)
        r["settings"]["train"]["precision"] = "auto"
        old.append(r)
    new = [_retarget(r, seed=r["settings"]["seed"] + 10) for r in paper_records()]
    assert tables.pooled_settings(load_results(write_records(tmp_path / "old", old + new))) == []


def test_a_non_finite_measurement_is_printed_as_missing(tmp_path):
    record = make_record(test_acc=90.0)
    record["metrics"]["params"] = float("inf")  # a hand-edited or foreign record
    table = tables.format_complexity(tables.complexity_table(load_results(write_records(tmp_path / "i", [record]))))
    assert table["params"].tolist() == [tables.MISSING]
