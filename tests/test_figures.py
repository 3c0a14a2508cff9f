"""Figures are pure: Figure objects whose drawn values are the study's numbers."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from opswap.analysis import figures
from opswap.analysis.results import load_history, load_results
from record_factory import make_record, paper_records, write_records


@pytest.fixture
def study(tmp_path):
    records = paper_records(epochs=3)
    records += [make_record(test_acc=a, seed=s, model="tf-cnn", sparsity=0.9, prune="dsr",
                            csr_bytes=80_000) for s, a in enumerate([74.0, 76.0])]
    records += [make_record(test_acc=a, seed=s, model="tf-cnn") for s, a in enumerate([70.0, 71.0])]
    records.append(make_record(test_acc=40.0, train_acc=50.0, kind="traditional", model="hog",
                               params=4_000, latency_ms_b1=1.0, macs=None))
    directory = write_records(tmp_path / "s", records)
    return load_results(directory), load_history(directory)


def texts(figure: Figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts]


def test_heatmap_writes_means_and_counts_in_the_cells(study):
    frame, _ = study
    figure = figures.accuracy_heatmap(frame[frame.model == "wrn-16-1"])
    assert isinstance(figure, Figure)
    cells = texts(figure)
    assert "93.00\n(3)" in cells and "95.00\n(3)" in cells and "96.50\n(1)" in cells  # as the tables print them
    assert figure.axes[0].get_title() == "3 epochs"
    assert figures.png_bytes(figure)[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_plot_each_series_mean_over_seeds(study):
    _, history = study
    figure = figures.learning_curves(history[history.model == "wrn-16-1"])
    ax = figure.axes[1]  # test accuracy
    assert ax.get_ylabel() == "test accuracy (%)"
    finals = sorted(round(line.get_ydata()[-1], 3) for line in ax.lines if len(line.get_ydata()) == 3)
    assert finals == [93.0, 95.0, 96.2, 96.2, 96.5]
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels[0] == "baseline" and "p1 mbconv_e6_k3" in labels


def test_method_comparison_bar_heights_are_the_normalised_scores(study):
    frame, _ = study
    figure = figures.method_comparison(frame[frame.model != "wrn-16-1"])
    heights = [p.get_height() for p in figure.axes[0].patches if p.get_width() > 0]
    assert max(np.nan_to_num(heights)) == pytest.approx(1.0)
    assert pytest.approx(40 / 75) in heights        # traditional test accuracy vs dsr 0.9
    assert "not measured" in figure._supxlabel.get_text()


def test_scatter_titles_report_spearman(study):
    frame, _ = study
    figure = figures.predictor_scatter(frame[frame.model == "wrn-16-1"])
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles[0] == "3 ep: ρ=-1.00 (p<1e-16, n=4)"  # distill_loss falls as accuracy rises
    assert [ax.get_xlabel() for ax in figure.axes if ax.get_visible()][:2] == ["distill_loss",
                                                                              "replace1_acc"]


def test_accuracy_vs_sparsity_draws_sparse_means_and_the_dense_line(study):
    frame, _ = study
    figure = figures.accuracy_vs_sparsity(frame)
    ys = [line.get_ydata() for line in figure.axes[0].lines]
    assert any(len(y) == 1 and y[0] == pytest.approx(75.0) for y in ys)       # dsr 0.9 mean
    assert any(len(y) == 2 and y[0] == pytest.approx(70.5) for y in ys)       # dense mean


@pytest.mark.parametrize("make", [figures.accuracy_heatmap, figures.accuracy_vs_sparsity,
                                  figures.predictor_scatter, figures.method_comparison])
def test_partial_studies_give_a_figure_that_says_what_is_missing(tmp_path, make):
    frame = load_results(write_records(tmp_path / "e", [
        make_record(test_acc=None, op="conv_bn_e1", position=1, status="failed")]))
    figure = make(frame)
    assert isinstance(figure, Figure) and figure.texts and figure.texts[0].get_text().startswith("no ")
