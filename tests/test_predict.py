"""Predictability statistics on constructed data with known rank structure."""
import math

import numpy as np
import pytest
from scipy import stats

from opswap.analysis.predict import format_predictability, points, predictability
from opswap.analysis.results import load_results
from record_factory import make_record, write_records

OPS = ["mbconv_e6_k3", "conv_bn_e1", "conv_bn_e2", "resnet_e2", "bottleneck_e2"]


@pytest.fixture
def frame(tmp_path):
    """15 cells × 2 seeds: accuracy falls with distillation loss, rises with position."""
    rng = np.random.default_rng(0)
    records = [make_record(test_acc=a, seed=s) for s, a in enumerate([95.0, 95.2])]
    for position in (1, 2, 3):
        for j, op in enumerate(OPS):
            acc = 80 + 4 * position + 1.5 * j
            for seed in range(2):
                records.append(make_record(
                    test_acc=acc + 0.1 * seed, op=op, position=position, seed=seed,
                    distill_loss=1.0 / acc, replace1_acc=acc - 20 + rng.normal(0, 0.01),
                    params=int(rng.integers(1000, 100000)), macs=1_000_000))
    return load_results(write_records(tmp_path / "p", records))


def test_cell_points_average_seeds_and_delta_uses_the_baseline_mean(frame):
    cells = points(frame)
    assert len(cells) == 15 and (cells["n_trials"] == 2).all()
    cell = cells[(cells.position == 2) & (cells.op == "conv_bn_e2")].iloc[0]
    assert cell.test_acc == pytest.approx(80 + 8 + 3 + 0.05)
    assert cell.delta == pytest.approx(cell.test_acc - 95.1)
    assert len(points(frame, level="trial")) == 30


def test_monotone_predictors_give_perfect_rank_correlation(frame):
    table = predictability(frame, n_boot=200).set_index(["predictor", "method"])
    assert table.loc[("distill_loss", "spearman"), "statistic"] == pytest.approx(-1.0)
    assert table.loc[("distill_loss", "kendall"), "statistic"] == pytest.approx(-1.0)
    assert table.loc[("replace1_acc", "spearman"), "statistic"] == pytest.approx(1.0)
    assert table.loc[("distill_loss", "spearman"), "p_value"] < 1e-6
    assert table.loc[("distill_loss", "spearman"), "n"] == 15
    assert table.loc[("distill_loss", "spearman"), "ci_high"] == pytest.approx(-1.0)
    assert table.loc[("macs", "spearman"), "note"] == "constant values"
    assert math.isnan(table.loc[("macs", "spearman"), "statistic"])


def test_position_rank_correlation_and_params_match_scipy(frame):
    table = predictability(frame, n_boot=0).set_index(["predictor", "method"])
    cells = points(frame)
    rho = stats.spearmanr(cells["params"], cells["test_acc"]).statistic
    assert table.loc[("params", "spearman"), "statistic"] == pytest.approx(rho)
    tau = stats.kendalltau(cells["position"], cells["test_acc"]).statistic
    assert table.loc[("position", "kendall"), "statistic"] == pytest.approx(tau)
    assert tau > 0.5


def test_op_family_uses_kruskal_wallis_with_epsilon_squared(frame):
    table = predictability(frame, n_boot=0)
    row = table[(table.predictor == "op_family") & (table.method == "kruskal")].iloc[0]
    cells = points(frame)
    groups = [g["test_acc"].to_numpy() for _, g in cells.groupby("op_family")]
    h, p = stats.kruskal(*groups)
    assert row.statistic == pytest.approx(h) and row.p_value == pytest.approx(p)
    n, k = len(cells), len(groups)
    assert row.note == f"{k} groups; ε² = {h / (n - 1):.3f}"  # never negative, unlike η² = (H − k + 1)/(n − k)
    assert 0 <= h / (n - 1) <= 1


def test_delta_target_and_too_few_points(tmp_path, frame):
    table = predictability(frame, delta=True, n_boot=0)
    assert set(table["target"]) == {"delta"}
    small = load_results(write_records(tmp_path / "s", [
        make_record(test_acc=90.0, op="conv_bn_e1", position=1, distill_loss=0.1),
        make_record(test_acc=91.0, op="conv_bn_e2", position=1, distill_loss=0.2)]))
    rows = predictability(small, n_boot=0)
    assert (rows.loc[rows.predictor == "distill_loss", "note"] == "n < 3").all()


def test_format_shows_symbols_intervals_and_p(frame):
    text = format_predictability(predictability(frame, n_boot=100))
    cell = text[(text.predictor == "distill_loss") & (text.method == "spearman")].iloc[0]
    assert cell.statistic.startswith("ρ = -1 [") and cell.p != "—"
    assert text[(text.predictor == "macs")]["statistic"].eq("—").all()


def test_unknown_level_is_explained(frame):
    with pytest.raises(ValueError, match="'cell' or 'trial'"):
        points(frame, level="seed")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_bootstrap_statistics_equal_scipy_with_ties(seed):
    from opswap.analysis.predict import _kendall_rows, _spearman_rows

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (30, 10)).astype(float)
    y = rng.normal(size=(30, 10))
    y[:, :3] = 1.0  # ties in y as well
    expected_rho = [stats.spearmanr(a, b).statistic for a, b in zip(x, y)]
    expected_tau = [stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(_spearman_rows(x, y), expected_rho, equal_nan=True)
    np.testing.assert_allclose(_kendall_rows(x, y), expected_tau, equal_nan=True)
