"""The cell frame: Δ is the tables' Δ, features join on (position, op), pending cells get rows."""
import math

import numpy as np
import pandas as pd
import pytest

from opswap.analysis import tables
from opswap.analysis.cells import FEATURES_FILE, cell_frame, predictor_features, read_features, seed_frame, write_features
from opswap.analysis.results import load_results
from prediction_data import OPS, records
from record_factory import make_record, paper_records, write_records


@pytest.fixture
def frame(tmp_path):
    extra = [make_record(test_acc=91.0, op="conv_bn_e1", position=2, seed=s, epochs=3, init="random")
             for s in range(2)]  # another variant: its own cell, compared with the same baseline
    return load_results(write_records(tmp_path / "r", paper_records(epochs=3) + paper_records(epochs=6) + extra))


def test_cell_delta_equals_the_delta_of_the_tables(frame):
    cells = cell_frame(frame)
    long = tables.summary(frame)
    assert len(cells) == 2 * 4 + 1
    for _, cell in cells.iterrows():
        label = cell["op"] + (f" · {cell['variant']}" if cell["variant"] else "")
        entry = long[(long.epochs == cell["epochs"]) & (long.row == str(cell["position"]))
                     & (long.candidate == label)].iloc[0]
        assert cell["delta"] == pytest.approx(entry["delta"]) and cell["n"] == entry["n"]
        assert cell["mean"] == pytest.approx(entry["mean"])
    random = cells[cells.variant == "random init"].iloc[0]
    assert random["delta"] == pytest.approx(91.0 - 96.2)


def test_seed_frame_has_one_row_per_finished_swapped_trial(frame):
    seeds = seed_frame(frame)
    assert len(seeds) == 2 * 9 + 2 and set(seeds.columns) >= {"epochs", "variant", "position", "op", "seed", "delta"}
    assert seeds["position"].notna().all()


def test_features_join_and_cover_pending_cells(tmp_path):
    frame = load_results(write_records(tmp_path / "r", records(2, skip=frozenset({(3, "resnet_e2")}))))
    features = pd.DataFrame({"position": [1, 3], "op": ["conv_bn_e1", "resnet_e2"], "op_family": ["conv_bn", "resnet"],
                             "lana_synflow": [1e6, 1e9], "replace1_acc": [11.0, 22.0]})
    path = write_features(tmp_path / FEATURES_FILE, features, {"key": "k", "seconds_per_pair": {"total": 1.0}})
    features = read_features(tmp_path)
    assert features.attrs["meta"]["key"] == "k" and str(path).endswith(FEATURES_FILE)
    pending = pd.DataFrame({"epochs": [3], "variant": [""], "position": [3], "op": ["resnet_e2"],
                            "op_family": ["resnet"]})
    cells = cell_frame(frame, features, pending=pending)
    assert len(cells) == 15
    new = cells[(cells.position == 3) & (cells.op == "resnet_e2")].iloc[0]
    assert new["n"] == 0 and math.isnan(new["delta"]) and new["lana_synflow"] == 1e9
    assert new["replace1_acc"] == 22.0  # only the file knows it for a cell that has not run
    old = cells[(cells.position == 1) & (cells.op == "conv_bn_e1")].iloc[0]
    assert old["replace1_acc"] != 11.0  # the records' value wins where there is one
    prepared, names = predictor_features(cells)
    assert "log_op_params_count" in names and "replace1_acc" in names and "params" not in names
    assert "lana_synflow" not in names  # known for one measured cell only: nothing to learn from


def test_predictor_features_drop_infinite_values():
    cells = pd.DataFrame({"epochs": 3, "variant": "", "position": [1, 2, 3], "op": OPS[:3], "op_family": "x",
                          "delta": [1.0, 2.0, 3.0], "lana_naswot": [-np.inf, 5.0, 7.0], "lana_snip": [10.0, 100.0, 1e4]})
    prepared, names = predictor_features(cells)
    assert names == ["lana_naswot", "log_lana_snip"]
    assert math.isnan(prepared.loc[0, "lana_naswot"])
    assert prepared["log_lana_snip"].tolist() == pytest.approx(np.log10(1 + np.array([10.0, 100.0, 1e4])))


def test_a_corrupt_features_file_is_explained(tmp_path):
    (tmp_path / FEATURES_FILE).write_text("{")
    with pytest.raises(ValueError, match="not a features file"):
        read_features(tmp_path)
    assert read_features(tmp_path / "elsewhere") is None
