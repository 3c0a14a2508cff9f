"""`opswap predict` on a half-finished study, and `[run] order` putting pending trials in order."""
import dataclasses
import json

import pandas as pd
import pytest

from opswap.analysis.cells import FEATURES_FILE, write_features
from opswap.cli import main
from opswap.study.expand import expand_study
from opswap.study.load import load_study
from opswap.study.order import order_trials, predict_study
from prediction_data import OPS, true_delta
from record_factory import make_record, write_records

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = f"""name = "half"
model = "wrn-16-1"
dataset = "synthetic"
positions = [1, 2, 3]
candidates = {json.dumps(["baseline", *OPS])}
seeds = [0, 1, 2]
epochs = [3]
"""
PENDING_CELL = (3, "resnet_e2")  # no seed of it has run


def _record(trial, test_acc: float) -> dict:
    r = make_record(test_acc=test_acc, op=trial.settings["op"], position=trial.settings["position"],
                    seed=trial.settings["seed"], epochs=3, study="half")
    return {**r, "trial_id": trial.trial_id, "settings": trial.settings}


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """Seeds 0 and 1 of every cell but one have finished; seed 2 of everything is pending."""
    tmp = tmp_path_factory.mktemp("half")
    path = tmp / "half.toml"
    path.write_text(STUDY)
    study = load_study(path)
    records = []
    for t in expand_study(study).trials:
        s = t.settings
        if s["position"] is None:
            if s["seed"] < 2:
                records.append(_record(t, 90.0 + 0.1 * s["seed"]))
        elif s["seed"] < 2 and (s["position"], s["op"]) != PENDING_CELL:
            d = true_delta(s["position"], OPS.index(s["op"]))
            records.append(_record(t, 90.05 + d + (0.2 if s["seed"] else -0.2)))
    root = write_records(tmp / "results" / "half", records)
    features = pd.DataFrame([{"position": p, "op": op, "op_family": op.split("_")[0],
                              "replace1_acc": 60 + 3 * true_delta(p, j), "lana_snip": 1.0 + (p * j) % 3}
                             for p in (1, 2, 3) for j, op in enumerate(OPS)])
    write_features(root / FEATURES_FILE, features, {"key": "x", "seconds_per_pair": {"total": 1.0}})
    return path, tmp / "results", study


def test_predict_json_gives_every_pending_cell_with_an_interval(half, capsys):
    path, results, _ = half
    assert main(["predict", str(path), "--results", str(results), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15 and {r["position"] for r in rows} == {1, 2, 3}
    new = next(r for r in rows if (r["position"], r["op"]) == PENDING_CELL)
    truth = true_delta(*PENDING_CELL[:1], OPS.index(PENDING_CELL[1]))
    assert new["seeds_done"] == 0 and new["measured_delta"] is None
    assert new["predictor"] == "linear:replace1_acc" and new["cv"] == "cell"
    assert new["low"] <= truth <= new["high"] and abs(new["predicted_delta"] - truth) < 0.3
    old = next(r for r in rows if (r["position"], r["op"]) == (1, "conv_bn_e1"))
    assert old["seeds_done"] == 2 and old["measured_delta"] == pytest.approx(true_delta(1, 1), abs=1e-6)
    assert old["trained_on"] == 13  # the other finished cells: a cell never predicts itself
    ordered = [r["predicted_delta"] for r in rows]
    assert ordered == sorted(ordered, reverse=True)


def test_predict_table_says_what_it_did(half, capsys):
    path, results, _ = half
    assert main(["predict", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("half: 18 pending trials in 15 cells; 14 cells finished (at least one seed)")
    assert "leave-one-cell-out CV on 14 finished cells: best linear in replace1_acc" in out
    assert "interval: ± the 90% quantile of the chosen predictor's absolute out-of-fold residuals" in out
    assert main(["predict", str(path), "--results", str(results), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("epochs,position,op,seeds_done,measured_delta")


def test_unseen_positions_use_leave_one_position_out(half):
    path, results, study = half
    more = load_study(path, ["positions=[1, 2, 3, 4]"])
    table = predict_study(more, results).forecast.table
    four = table[table.position == 4]
    assert len(four) == 5 and set(four.scheme) == {"position"}
    assert four["predicted"].notna().all() and (four["n"] == 0).all()


def test_order_promising_and_informative(half):
    path, results, study = half
    expansion = expand_study(study)
    root = results / "half"
    plain = order_trials(study, expansion, root)
    assert plain == list(expansion.trials)
    promising = order_trials(dataclasses.replace(study, run=study.run.model_copy(update={"order": "promising"})),
                             expansion, root)
    pending = [t for t in promising if not (root / f"{t.trial_id}.json").is_file()]
    assert pending[0].settings["position"] is None  # the reference runs first: every Δ needs it
    swapped = [t for t in pending if t.settings["position"] is not None]
    first = swapped[0].settings
    assert (first["position"], first["op"]) == (3, "bottleneck_e2")  # the highest Δ of the grid
    informative = order_trials(dataclasses.replace(study, run=study.run.model_copy(update={"order": "informative"})),
                               expansion, root)
    pending = [t for t in informative if not (root / f"{t.trial_id}.json").is_file()]
    swapped = [t.settings for t in pending if t.settings["position"] is not None]
    assert (swapped[0]["position"], swapped[0]["op"], swapped[0]["seed"]) == (*PENDING_CELL, 0)  # never measured
    assert sorted(map(str, informative)) == sorted(map(str, expansion.trials))


def test_predict_refuses_a_methods_study(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\nkind = "methods"\ndataset = "synthetic"\n[[methods]]\nname = "a"\nmodel = "tf-cnn"\n')
    assert main(["predict", str(path), "--results", str(tmp_path)]) == 2
    assert "predicts the cells of a substitution study" in capsys.readouterr().err


def test_predict_names_a_missing_results_folder(half, tmp_path, capsys):
    path, _, _ = half
    assert main(["predict", str(path), "--results", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert "no results for study 'half'" in err and "elsewhere" in err and "opswap run" in err


def test_predict_all_gives_finished_cells_too_each_predicted_from_the_others(half, capsys):
    path, results, _ = half
    only_two = ["--set", "seeds=[0, 1]"]  # seeds 0 and 1 are done: only the cell never run is pending
    assert main(["predict", str(path), "--results", str(results), "--format", "json", *only_two]) == 0
    assert [(r["position"], r["op"]) for r in json.loads(capsys.readouterr().out)] == [PENDING_CELL]
    assert main(["predict", str(path), "--results", str(results), "--format", "json", "--all", *only_two]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15
    finished = [r for r in rows if (r["position"], r["op"]) != PENDING_CELL]
    assert all(r["seeds_done"] == 2 and r["measured_delta"] is not None for r in finished)
    assert all(r["trained_on"] == 13 for r in finished)  # never itself
