"""Expansion of studies into trials: the grid, skipped pairs, baselines and stable ids."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opswap.study.load import load_study
from opswap.study.expand import expand_study, teacher_spec
from opswap.run.spec import trial_id_for

ROOT = Path(__file__).resolve().parents[1]
GRID = """name = "grid"
model = "wrn-10-1"
dataset = "synthetic"
positions = "all"
seeds = [0, 1]
epochs = [1, 2]
init = ["lana"]
"""


def _study(tmp_path, text=GRID, overrides=()):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study(path, overrides)


def test_grid_baselines_and_skipped_pairs(tmp_path):
    expansion = expand_study(_study(tmp_path))
    # WRN-10-1: position 1 keeps 16 channels (identity fits), positions 2 and 3 change shape.
    per_budget = 1 + 6 + 5 + 5
    assert len(expansion.trials) == 4 * per_budget
    assert [(s.position, s.op) for s in expansion.skipped] == [(2, "identity"), (3, "identity")]
    assert "16→32 channels with stride 2" in expansion.skipped[0].reason
    baselines = [t.settings for t in expansion.trials if t.settings["position"] is None]
    assert len(baselines) == 4 and all(s["op"] == "baseline" and s["init"] == "teacher" for s in baselines)
    assert sorted((s["seed"], s["epochs"]) for s in baselines) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    lana = [t.settings for t in expansion.trials if t.settings["position"] is not None]
    assert all(s["init"] == "lana" and s["distill"]["steps"] == 500 for s in lana)
    assert {s["op"] for s in lana if s["position"] == 1} == {"identity", "mbconv_e6_k3", "conv_bn_e1",
                                                             "conv_bn_e2", "resnet_e2", "bottleneck_e2"}


def test_ids_are_hashes_of_the_settings_and_unique(tmp_path):
    trials = expand_study(_study(tmp_path)).trials
    assert all(t.trial_id == trial_id_for(t.settings) for t in trials)
    assert len({t.trial_id for t in trials}) == len(trials)
    # Reordering the lists in the file does not change any id.
    again = expand_study(_study(tmp_path, GRID.replace("[0, 1]", "[1, 0]").replace("[1, 2]", "[2, 1]")))
    assert {t.trial_id for t in again.trials} == {t.trial_id for t in trials}


# Golden ids of the GRID study: a change re-runs every stored trial, so it must be deliberate.
PINNED = {"baseline": "f1b0eac7a7e4", "mbconv": "5ddbaf12e1d2"}


def test_ids_are_pinned(tmp_path):
    trials = {t.label: t.trial_id for t in expand_study(_study(tmp_path)).trials}
    assert trials["baseline teacher seed=0 epochs=1"] == PINNED["baseline"]
    assert trials["p1 mbconv_e6_k3 lana seed=1 epochs=2"] == PINNED["mbconv"]



def test_trials_from_the_teacher_change_id_with_the_teacher(tmp_path):
    """A finished trial of one teacher is never taken for a trial of another."""
    first = {t.label: t for t in expand_study(_study(tmp_path)).trials}
    other = {t.label: t for t in expand_study(_study(tmp_path, overrides=[("teacher.epochs", 7)])).trials}
    assert first.keys() == other.keys()
    assert all(first[k].trial_id != other[k].trial_id for k in first)
    assert all(t.settings["teacher"].startswith("trained:") for t in first.values())
    checkpoint = tmp_path / "teacher.safetensors"
    checkpoint.write_bytes(b"weights")
    given = expand_study(_study(tmp_path, overrides=[("teacher.checkpoint", str(checkpoint))])).trials
    assert all(t.settings["teacher"].startswith("checkpoint:sha256:") for t in given)


def test_ids_are_the_same_in_another_process(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(GRID)
    code = ("import sys; from opswap.study import load_study, expand_study; "
            "print(' '.join(t.trial_id for t in expand_study(load_study(sys.argv[1])).trials))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True).stdout.split()
    assert out == [t.trial_id for t in expand_study(load_study(path)).trials]


@pytest.mark.parametrize("inits, baseline_inits, candidate_inits", [
    (["scratch"], {"scratch"}, {"scratch"}),
    (["lana", "random"], {"teacher"}, {"lana", "random"}),
    (["lana", "scratch"], {"teacher", "scratch"}, {"lana", "scratch"}),
])
def test_init_variants(tmp_path, inits, baseline_inits, candidate_inits):
    study = _study(tmp_path, overrides=[f"init={inits!r}".replace("'", '"'), "seeds=[0]", "epochs=[1]",
                                        "positions=[2]"])
    trials = expand_study(study).trials
    assert {t.settings["init"] for t in trials if t.settings["position"] is None} == baseline_inits
    assert {t.settings["init"] for t in trials if t.settings["position"] is not None} == candidate_inits
    assert len(trials) == len(baseline_inits) + 5 * len(candidate_inits)
    assert study.needs_teacher == (inits != ["scratch"])


def test_sparsity_variants_and_candidate_tables(tmp_path):
    text = GRID.replace('positions = "all"', "positions = [3]") + \
        'sparsity = [0.0, 0.9]\nprune = "dsr"\n[[candidates]]\nname = "mbconv"\ne = 3\nk = 5\n'
    trials = expand_study(_study(tmp_path, text, ["seeds=[0]", "epochs=[1]"])).trials
    assert [(t.settings["op"], t.settings["sparsity"], t.settings["prune"]) for t in trials] == [
        ("baseline", 0.0, "none"), ("mbconv_e3_k5", 0.0, "none"),
        ("baseline", 0.9, "dsr"), ("mbconv_e3_k5", 0.9, "dsr")]
    assert trials[1].settings["op_params"] == {"e": 3, "k": 5}


def test_teacher_is_the_baseline_from_scratch(tmp_path):
    study = _study(tmp_path, GRID + "[teacher]\nepochs = 7\nseed = 3\n[train]\nlr = 0.05\n")
    settings = teacher_spec(study).to_settings()
    assert (settings["init"], settings["op"], settings["position"], settings["epochs"], settings["seed"],
            settings["save_weights"], settings["train"]["lr"]) == ("scratch", "baseline", None, 7, 3, True, 0.05)


def test_bundled_substitution_study_is_the_papers(tmp_path):
    study = load_study(ROOT / "studies" / "wrn40x2_substitution.toml")
    expansion = expand_study(study)
    assert (study.model, study.dataset, study.positions, study.epochs, study.seeds, study.init) == (
        "wrn-40-2", "cifar10", (1, 7, 18), (25, 50), (0, 1, 2), ("lana",))
    assert study.teacher.epochs == 200 and study.train["optimizer"] == "sgd" and study.train["lr"] == 0.1
    assert [(s.position, s.op) for s in expansion.skipped] == [(1, "identity"), (7, "identity")]
    # 6 budgets (3 seeds × 2 epoch counts) × (baseline + 5 + 5 + 6 candidates)
    assert len(expansion.trials) == 6 * 17


def test_bundled_methods_studies(tmp_path):
    dsr = expand_study(load_study(ROOT / "studies" / "dynamic_pruning_cnn.toml")).trials
    assert {(t.settings["method"], t.settings["sparsity"], t.settings["prune"]) for t in dsr} == {
        ("dense", 0.0, "none"), ("dsr 0.9", 0.9, "dsr"), ("dsr 0.8", 0.8, "dsr")}
    assert load_study(ROOT / "studies" / "dynamic_pruning_cnn.toml").reference == "dense"
    s = dsr[0].settings
    assert (s["model"], s["epochs"], s["train"]["optimizer"], s["train"]["lr"], s["train"]["batch_size"],
            s["train"]["normalize"], s["train"]["augment"]) == ("tf-cnn", 10, "adam", 0.001, 32, "unit", False)
    methods = expand_study(load_study(ROOT / "studies" / "method_comparison.toml")).trials
    assert len(methods) == 4 * 2 * 3
    kinds = {t.settings["method"]: (t.settings["kind"], t.settings["model"]) for t in methods}
    assert kinds["HOG + linear"][0] == "traditional" and kinds["wrn-16-2"] == ("train", "wrn-16-2")
    assert {t.settings["data_fraction"] for t in methods} == {0.25, 1.0}


def test_dry_run_lists_trials_and_writes_nothing(tmp_path, capsys):
    from opswap.cli import main as cli

    path = tmp_path / "study.toml"
    path.write_text(GRID)
    assert cli(["run", str(path), "--dry-run", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "68 trials, 0 already done" in out and "skipped: position 2 × identity" in out
    assert len([line for line in out.splitlines() if " pending " in line]) == 68
    assert not (tmp_path / "results").exists()


def test_prune_options_reach_the_sparse_trials_only(tmp_path):
    text = GRID + 'sparsity = [0.0, 0.9]\nprune = "dsr"\n\n[prune_options]\nperiod = 50\n'
    trials = expand_study(_study(tmp_path, text)).trials
    sparse = [t.settings for t in trials if t.settings["sparsity"] > 0]
    dense = [t.settings for t in trials if t.settings["sparsity"] == 0]
    assert sparse and all(s["prune_options"] == {"period": 50} and s["prune"] == "dsr" for s in sparse)
    assert dense and all(s["prune_options"] == {} for s in dense)


def test_distillation_sees_the_inputs_the_teacher_was_trained_on(tmp_path):
    unit = _study(tmp_path, GRID + '[train]\nnormalize = "unit"\naugment = false\n')
    lana = [t.settings for t in expand_study(unit).trials if t.settings["init"] == "lana"]
    assert all(s["distill"]["normalize"] == "unit" and s["distill"]["augment"] is False for s in lana)
    explicit = _study(tmp_path, GRID + '[train]\nnormalize = "unit"\n[distill]\nnormalize = "standard"\n')
    assert explicit.distill["normalize"] == "standard"  # a [distill] setting still wins


def test_a_bank_or_teacher_cut_short_is_built_again(tmp_path):
    """A stage whose file is damaged (a full disk, an interrupted copy) is pending, not handed on."""
    import torch
    from safetensors.torch import save_file

    from opswap.study import stages

    root = tmp_path / "results"
    root.mkdir()
    save_file({"w": torch.zeros(256)}, root / "bank.safetensors")
    (root / "bank.key").write_text("abc\n")
    assert stages._bank_current(root, "abc") and not stages._bank_current(root, "abd")
    whole = (root / "bank.safetensors").read_bytes()
    (root / "bank.safetensors").write_bytes(whole[:-64])  # the key file is intact
    assert not stages._bank_current(root, "abc")
    (root / "bank.safetensors").write_bytes(b"")
    assert not stages._bank_current(root, "abc")
    assert not stages._intact(root / "missing.safetensors")


@pytest.mark.parametrize("spelling", ["0", "1"])
def test_an_integer_for_a_float_setting_gives_the_float_spellings_ids(tmp_path, spelling):
    """`weight_decay = 0` and `= 0.0` are one setting: the same trials, the same ids, float in the record."""
    def ids(text, overrides=()):
        return {t.trial_id for t in expand_study(_study(tmp_path, text, overrides)).trials}

    as_float = ids(GRID + f"[train]\nweight_decay = {spelling}.0\n[distill]\nweight_decay = {spelling}.0\n")
    as_int = ids(GRID + f"[train]\nweight_decay = {spelling}\n[distill]\nweight_decay = {spelling}\n")
    by_set = ids(GRID, [f"train.weight_decay={spelling}", f"distill.weight_decay={spelling}"])
    assert as_int == as_float == by_set
    trial = next(iter(expand_study(_study(tmp_path, GRID + f"[train]\nweight_decay = {spelling}\n")).trials))
    assert type(trial.settings["train"]["weight_decay"]) is float


def test_configs_built_in_python_store_floats_for_float_fields():
    from opswap.distill.engine import DistillConfig
    from opswap.training import TrainConfig

    train = TrainConfig(lr=1, weight_decay=0, warmup_epochs=1, epochs=5)
    assert (train.lr, train.weight_decay, train.warmup_epochs) == (1.0, 0.0, 1.0)
    assert all(type(v) is float for v in (train.lr, train.weight_decay, train.warmup_epochs))
    assert type(train.epochs) is int and type(train.seed) is int and train.augment is True
    distill = DistillConfig(lr=1, weight_decay=0)
    assert type(distill.lr) is float and type(distill.weight_decay) is float and type(distill.steps) is int
