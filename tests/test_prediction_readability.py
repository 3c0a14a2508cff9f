"""The predictors figure a user could not read: overlapping count labels, a continuous position axis,
a legend in one panel only."""
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from opswap.analysis import figures
from opswap.analysis.results import load_results
from prediction_data import records
from record_factory import write_records


@pytest.fixture(scope="module")
def figure(tmp_path_factory):
    recs = records(2)
    for r in recs:  # whole-network params close together: long labels that used to run into each other
        if r["settings"]["position"] is not None:
            r["metrics"]["params"] = 175_066 + r["metrics"]["op_params_count"]
    frame = load_results(write_records(tmp_path_factory.mktemp("fig") / "r", recs))
    figure = figures.predictor_scatter(frame)
    FigureCanvasAgg(figure).draw()
    return figure


def _panel(figure, xlabel):
    return next(ax for ax in figure.axes if ax.get_xlabel() == xlabel)


@pytest.mark.parametrize("xlabel", ["params", "op_params_count"])
def test_count_tick_labels_do_not_overlap(figure, xlabel):
    ax = _panel(figure, xlabel)
    renderer = figure.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert len(boxes) >= 2
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    assert all(len(t.get_text()) <= 6 for t in labels)  # "175k", "3k": engineering notation


def test_position_axis_is_integer(figure):
    ax = _panel(figure, "position")
    assert list(ax.get_xticks()) == [1, 2, 3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]


def test_one_shared_legend(figure):
    assert all(ax.get_legend() is None for ax in figure.axes)
    (legend,) = figure.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert "op family" in texts and "mbconv" in texts and "conv_bn" in texts
