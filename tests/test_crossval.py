"""Cross-validated Δ prediction and the noise ceiling, against hand-computed values."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from opswap.analysis.crossval import (Reliability, adjust_pvalues, best_distinguishable, cross_validate,
                                      folds, log_columns, minimal_detectable_delta, reliability,
                                      seeds_needed, verdict)

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = {"mbconv_e6_k3": "mbconv", "conv_bn_e1": "conv_bn", "conv_bn_e2": "conv_bn",
          "resnet_e2": "resnet", "bottleneck_e2": "bottleneck"}
BASELINE_NAMES = ["global_mean", "family_mean", "position_mean", "additive"]


def synthetic(positions: int = 6, seed: int = 0) -> pd.DataFrame:
    """Δ = 2·f1 + 1 exactly; f2 is noise; one row per (position, op)."""
    rng = np.random.default_rng(seed)
    rows = [dict(position=p, op=op, op_family=fam, n=3, f1=rng.normal(), f2=rng.normal())
            for p in range(1, positions + 1) for op, fam in FAMILY.items()]
    frame = pd.DataFrame(rows)
    frame["delta"] = 2 * frame["f1"] + 1
    return frame


def tiny() -> pd.DataFrame:
    """3 positions × ops a, b (family A) and c (family B)."""
    delta = {(1, "a"): 1, (1, "b"): 2, (1, "c"): 6, (2, "a"): 3, (2, "b"): 4, (2, "c"): 8,
             (3, "a"): 5, (3, "b"): 0, (3, "c"): 7}
    return pd.DataFrame([dict(position=p, op=o, op_family="B" if o == "c" else "A", n=2, delta=float(d))
                         for (p, o), d in delta.items()])


@pytest.mark.parametrize("scheme,column", [("position", "position"), ("op", "op"), ("family", "op_family")])
def test_folds_never_train_on_the_held_out_group(scheme, column):
    frame = synthetic(4)
    splits = folds(frame, scheme)
    assert len(splits) == frame[column].nunique()
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(len(frame)))  # every cell is held out exactly once
    for train, test in splits:
        held = set(frame[column].iloc[test])
        assert len(held) == 1
        assert not held & set(frame[column].iloc[train])
        assert len(train) + len(test) == len(frame)


def test_exact_linear_feature_is_recovered_and_baselines_are_not():
    cv = cross_validate(synthetic(), ["f1", "f2"], predictors=["linear:f1", "isotonic:f1", "linear:f2", "ridge",
                                                               *BASELINE_NAMES], n_boot=200)
    table = cv.table.set_index(["scheme", "predictor"])
    for scheme in ("position", "op"):
        best = table.loc[(scheme, "linear:f1")]
        assert best["mae"] == pytest.approx(0, abs=1e-9)
        assert best["rho"] == pytest.approx(1.0) and best["rho_low"] == pytest.approx(1.0)
        assert best["sign_agree"] == 1.0 and best["p_holm"] < 1e-6
        assert table.loc[(scheme, "isotonic:f1"), "rho"] > 0.99
        assert table.loc[(scheme, "ridge"), "mae"] < 0.05
        for name in BASELINE_NAMES:
            assert table.loc[(scheme, name), "mae"] > 0.5
            assert not table.loc[(scheme, name), "rho"] > 0.9
        assert best["mae_baseline"] > 0.5 and best["p_vs_baseline"] < 0.05
    assert set(cv.predictions.columns) >= {"scheme", "predictor", "position", "op", "delta", "predicted", "error"}
    assert len(cv.predictions) == 2 * 8 * len(synthetic())
    assert cv.most_wrong(3, scheme="op")["error"].abs().is_monotonic_decreasing
    sentence = verdict(cv.table, Reliability(pd.DataFrame(), *[0.9] * 8, 30, 3), scheme="position")
    assert sentence.startswith("Under leave-one-position-out CV (n = 30 cells) the best predictor, linear in f1,")
    assert "Holm-adjusted p < 0.001" in sentence and "better than the" in sentence
    assert "noise ceiling is ρ ≈ 0.90 [0.90, 0.90]" in sentence and sentence.endswith(".")
    assert "Benjamini–Hochberg" in verdict(cv.table, scheme="op", correction="bh")


def test_family_and_position_baselines_by_hand():
    frame = tiny()
    cv = cross_validate(frame, [], predictors=BASELINE_NAMES, n_boot=0)
    pred = cv.predictions.set_index(["scheme", "predictor", "position", "op"])["predicted"]
    # Leave position 1 out: family A = mean(3, 4, 5, 0) = 3, B = mean(8, 7) = 7.5, global = 27/6.
    assert [pred["position", "family_mean", 1, o] for o in "abc"] == [3, 3, 7.5]
    assert [pred["position", "position_mean", 1, o] for o in "abc"] == [4.5] * 3  # unseen → global mean
    assert [pred["position", "additive", 1, o] for o in "abc"] == [3, 3, 7.5]  # position effect unknown: 0
    # Leave op c out (family B unseen): family mean → global 15/6; position means of a, b: 1.5, 3.5, 2.5.
    assert [pred["op", "family_mean", p, "c"] for p in (1, 2, 3)] == [2.5] * 3
    assert [pred["op", "position_mean", p, "c"] for p in (1, 2, 3)] == [1.5, 3.5, 2.5]
    # Leave op a out: global 27/6 = 4.5, family A (b only) = 2, positions 4, 6, 3.5
    # → 4.5 − 2.5 + (pos − 4.5).
    assert [pred["op", "additive", p, "a"] for p in (1, 2, 3)] == pytest.approx([1.5, 3.5, 1.0])
    # MAE of the family mean under leave-one-position-out: errors 2, 1, 1.5 | 1, 2, 1.5 | 2.5, 2.5, 0.
    table = cv.table.set_index(["scheme", "predictor"])
    assert table.loc[("position", "family_mean"), "mae"] == pytest.approx(14 / 9)
    assert table.loc[("position", "family_mean"), "sign_agree"] == 1.0  # Δ = 0 cells are not counted


def test_missing_features_are_imputed_and_counted():
    frame = synthetic()
    frame.loc[[0, 7, 12], "f1"] = np.nan
    cv = cross_validate(frame, ["f1", "f2"],
                        predictors=["linear:f1", "isotonic:f1", "ridge", "forest", "global_mean"],
                        schemes=("position",), n_boot=0)
    table = cv.table.set_index("predictor")
    assert table.loc["linear:f1", "imputed"] == 3 and table.loc["ridge", "imputed"] == 3
    assert table.loc["global_mean", "imputed"] == 0
    assert table.loc["forest", "imputed"] == 3 and table.loc["forest", "mae"] < table.loc["global_mean", "mae"]
    assert cv.predictions["predicted"].notna().all()
    kept = cv.predictions[(cv.predictions["predictor"] == "linear:f1") & ~cv.predictions["imputed"]]
    assert kept["error"].abs().max() == pytest.approx(0, abs=1e-9)  # the fit used only complete rows


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="lacks column"):
        cross_validate(tiny(), ["synflow"])
    with pytest.raises(ValueError, match="unknown predictor"):
        cross_validate(tiny(), [], predictors=["linear:synflow"])
    with pytest.raises(ValueError, match="several rows"):
        cross_validate(pd.concat([tiny(), tiny()]), [], predictors=["global_mean"])


def test_adjust_pvalues_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 × (4, 3, 2, 1) = 0.02, 0.03, 0.06, 0.04 → running max.
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: × m/rank = 0.02, 0.02, 0.04, 0.04 → running min from the top.
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    held = adjust_pvalues([0.01, math.nan, 0.04], "holm")
    assert held[0] == pytest.approx(0.02) and math.isnan(held[1]) and held[2] == pytest.approx(0.04)
    assert adjust_pvalues([0.6, 0.9], "holm") == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="holm"):
        adjust_pvalues(p, "bonferroni")


def test_power_against_textbook_numbers():
    # Cohen (1988), two-sided α = 0.05, power 0.8: d = 0.5 → 64 per group, d = 0.8 → 26 (noncentral t).
    assert seeds_needed(1.0, 0.5) == 64
    assert seeds_needed(2.0, 1.6) == 26
    # Normal approximation n = 2((z₀.₉₇₅ + z₀.₈)/d)² = 2(2.8016/0.5)² = 62.8 → 63.
    assert seeds_needed(1.0, 0.5, method="normal") == 63
    # Normal approximation of the minimal detectable Δ: (z₀.₉₇₅ + z₀.₈)·σ·√(2/n), n = 16 → 0.9905.
    normal = minimal_detectable_delta(1.0, 16, method="normal")
    assert normal == pytest.approx(2.801585 * math.sqrt(2 / 16), rel=1e-5)
    mdd = minimal_detectable_delta(1.0, 64)
    assert 0.49 < mdd < 0.5  # with 64 seeds a true Δ of 0.5 σ is just detectable
    t = stats.t.ppf(0.975, 126)
    ncp = mdd / math.sqrt(2 / 64)
    assert stats.nct.sf(t, 126, ncp) + stats.nct.cdf(-t, 126, ncp) == pytest.approx(0.8)
    assert minimal_detectable_delta(0.2, 3) > minimal_detectable_delta(0.2, 3, n_ref=10) > \
        minimal_detectable_delta(0.2, 10)
    assert minimal_detectable_delta(0.3, 5) == pytest.approx(0.3 * minimal_detectable_delta(1.0, 5))


def per_seed(noise: float, cells: int = 12, seeds: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=cells)
    rows = [dict(position=1 + c // 3, op=f"op{c % 3}", seed=s, test_acc=90 + truth[c] + noise * rng.normal())
            for c in range(cells) for s in range(seeds)]
    rows += [dict(position=np.nan, op="baseline", seed=s, test_acc=rng.normal()) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_reliability_is_one_when_seeds_agree():
    rel = reliability(per_seed(0.0), n_boot=200)
    assert len(rel.pairs) == 6 and (rel.pairs["rho"] == 1).all() and (rel.pairs["n"] == 12).all()
    assert rel.pairwise == 1 and rel.split_half == 1 and rel.spearman_brown == 1 and rel.ceiling == 1
    assert rel.low == pytest.approx(1) and rel.high == pytest.approx(1)
    assert rel.n_cells == 12 and rel.n_seeds == 4  # the reference rows are left out


def test_reliability_with_noise():
    rel = reliability(per_seed(0.7, cells=30), n_boot=200)
    assert 0 < rel.pairwise < 1 and 0 < rel.split_half < rel.spearman_brown < 1
    assert rel.spearman_brown == pytest.approx(2 * rel.split_half / (1 + rel.split_half))
    assert rel.low <= rel.spearman_brown <= rel.high
    assert rel.ceiling == pytest.approx(math.sqrt(rel.spearman_brown))
    with pytest.raises(ValueError, match="several rows"):
        reliability(pd.concat([per_seed(0.1), per_seed(0.1)]))


def test_best_is_marked_only_when_distinguishable():
    clear = best_distinguishable({"a": [90.0, 90.1, 89.9], "b": [95.0, 95.1, 94.9], "c": [80.0, 81.0, 80.5]})
    assert clear.best == "b" and clear.runner_up == "a" and clear.distinguishable and clear.label == "▲"
    close = best_distinguishable({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5]})
    # Welch: t = 0.5 / √(1/3 + 1/3) = 0.612, df = 4 → p = 0.57
    assert close.best == "b" and close.p_value == pytest.approx(0.573, abs=1e-3)
    assert not close.distinguishable and close.label == "tied within noise"
    lower = best_distinguishable({"a": [1.0, 1.1], "b": [3.0, 3.1]}, higher_is_better=False)
    assert lower.best == "a" and lower.distinguishable
    assert best_distinguishable({"a": [1.0], "b": [2.0, 2.1]}).label == "too few seeds to tell"


def test_log_columns():
    out = log_columns(pd.DataFrame({"s": [0.0, 9.0, -99.0]}), ["s"])
    assert out["log_s"].tolist() == pytest.approx([0.0, 1.0, -2.0])


def test_minimal_detectable_delta_with_one_reference_seed():
    # A cell of two seeds against a reference of one (df = 1): scipy's noncentral t returns NaN
    # on the way up; the power still rises to the asked level, smoothly.
    from opswap.analysis.crossval import _power, minimal_detectable_delta

    mdd = minimal_detectable_delta(1.0, 2, n_ref=1)
    assert math.isfinite(mdd) and _power(mdd, 1.0, 2, 1, 0.05, "t") == pytest.approx(0.8, abs=1e-6)
    powers = [_power(d, 1.0, 2, 1, 0.05, "t") for d in (1, 4, 8, 16, 32, 64)]
    assert all(math.isfinite(p) for p in powers) and powers == sorted(powers)
