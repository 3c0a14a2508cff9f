"""The assemble study kind: its keys, its trials (stable, distinct ids from the plan), assembled
trial specs and models, and a tiny end-to-end run with its report section."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from opswap.models import build_model
from opswap.run.spec import TrialSpec
from opswap.study import assembly
from opswap.study.expand import expand_study
from opswap.study.load import load_study

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = """name = "asm"
kind = "assemble"
model = "wrn-10-1"
dataset = "synthetic"
budgets = ["macs=0.6", { macs = 0.8, params = 0.9 }]
objective = ["replace1", "distill_loss"]
k = 2
random_picks = 3
seeds = [0, 1]
epochs = [1]
[train]
kd_weight = 0.5
"""


def _study(tmp_path, text=STUDY, overrides=()):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study(path, overrides)


def _fake_plan(study, root: Path) -> None:
    """A plan as `prepare_plan` writes it, for the expansion (no bank needed)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bank.key").write_text("k\n")

    def pick(budget, by, objective, rank, changed):
        return {"key": assembly.pick_key(budget, by, objective, changed), "budget": budget, "picked_by": by,
                "objective": objective, "rank": rank, "label": by if by != "uniform" else f"uniform:{changed[0][1]}",
                "assignment": [list(c) for c in changed], "scores": {"replace1": -1.0}, "predicted_acc": 90.0,
                "predicted": {}, "predicted_fraction": {}, "measured": {}, "measured_fraction": {},
                "assembled_acc": 80.0}

    budgets = {}
    for b in study.budgets:
        budgets[b] = {"notes": [], "picks": [
            pick(b, "milp", "replace1", 1, [(1, "identity"), (3, "mbconv_e6_k3")]),
            pick(b, "milp", "replace1", 2, [(2, "mbconv_e6_k3")]),
            pick(b, "milp", "distill_loss", 1, [(1, "identity"), (3, "mbconv_e6_k3")]),
            pick(b, "greedy", "replace1", 1, [(1, "identity"), (3, "mbconv_e6_k3")]),
            pick(b, "random", None, 1, [(2, "conv_bn_e1")]), pick(b, "random", None, 2, [(3, "mbconv_e6_k3")]),
            pick(b, "uniform", None, 1, [(1, "mbconv_e6_k3"), (2, "mbconv_e6_k3"), (3, "mbconv_e6_k3")])]}
    plan = {"schema": 1, "settings": assembly._plan_settings(study), "bank_key": "k", "teacher_acc": 91.0,
            "teacher_costs": {}, "budgets": budgets}
    (root / assembly.PLAN_FILE).write_text(json.dumps(plan))


def test_assembly_keys_are_read_and_budgets_canonical(tmp_path):
    study = _study(tmp_path)
    assert study.kind == "assemble" and study.needs_teacher
    assert study.budgets == ("macs=0.6", "macs=0.8,params=0.9")
    assert study.objectives == ("replace1", "distill_loss") and (study.k, study.min_diff) == (2, 1)
    assert study.random_picks == 3 and study.baselines == ("random", "greedy", "uniform")
    assert assembly.budget_text("params=1.2M") == "params=1200K"
    assert assembly.budget_text("latency=0.3:0.5") == "latency_b1=0.3:0.5"
    # The kind follows from budgets; the bank covers every position × candidate that fits.
    inferred = _study(tmp_path, STUDY.replace('kind = "assemble"\n', ""))
    assert inferred.kind == "assemble"
    pairs = assembly.bank_pairs(study)
    assert (1, "identity") in pairs and (2, "identity") not in pairs and len(pairs) == 16
    assert all(op != "baseline" for _, op in pairs)


def test_a_count_budget_out_of_reach_is_refused_before_any_work(tmp_path, capsys):
    from opswap.cli import main as cli
    from opswap.study.schema import StudyError

    budgets = 'budgets=["macs=0.6", "macs=0.01", "params=50%,latency=1us", "macs=5:6"]'
    study = _study(tmp_path, overrides=[budgets])  # loading stays cheap: status and report need no costs
    with pytest.raises(StudyError) as err:
        assembly.check_budgets(study)
    message = str(err.value)
    assert message.startswith("2 problems")
    assert "budgets[1]: no assignment meets macs <= 0.01 of the teacher: the cheapest reachable macs is" in message
    assert "budgets[3]: no assignment meets macs in [5, 6] of the teacher" in message and "the dearest" in message
    assert "budgets[0]" not in message and "budgets[2]" not in message  # latency is measured with the plan
    # the cheapest network is reachable exactly
    cheapest = float(message.split("the cheapest reachable macs is ")[1].split("(")[1].split(" ")[0])
    assembly.check_budgets(_study(tmp_path, overrides=[f'budgets=["macs={cheapest * 1.001:.6f}"]']))
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        assert cli(["run", str(tmp_path / "study.toml"), "--set", budgets, "--results", str(results), *extra]) == 2
        assert "in the study; nothing was run:\n" in capsys.readouterr().err
    assert not results.exists()  # no teacher was trained


def test_expansion_before_and_after_the_plan_has_stable_distinct_ids(tmp_path):
    study = _study(tmp_path)
    root = tmp_path / "results" / "asm"
    before = expand_study(study, root).trials
    assert [t.label for t in before] == ["teacher fine-tuned seed=0 epochs=1", "teacher fine-tuned seed=1 epochs=1"]
    assert all(t.settings["init"] == "teacher" and "assignment" not in t.settings for t in before)
    _fake_plan(study, root)
    trials = expand_study(study, root).trials
    assert len(trials) == 2 * (1 + 2 * 7)
    assert len({t.trial_id for t in trials}) == len(trials)  # the same network picked twice is two trials
    assert [t.trial_id for t in trials[:1]] == [before[0].trial_id]
    picked = [t.settings for t in trials if "assignment" in t.settings]
    assert all(s["init"] == "lana" and s["position"] is None and s["distill"]["steps"] == 500 for s in picked)
    assert {s["picked_by"] for s in picked} == {"milp", "greedy", "random", "uniform"}
    assert {s["budget"] for s in picked} == set(study.budgets)
    assert all(s["teacher"].startswith("trained:") and s["train"]["kd_weight"] == 0.5 for s in picked)
    # Stable: the same files give the same ids, in the same order; seeds listed the other way round too.
    assert [t.trial_id for t in expand_study(study, root).trials] == [t.trial_id for t in trials]
    again = _study(tmp_path, STUDY.replace("[0, 1]", "[1, 0]"))
    assert {t.trial_id for t in expand_study(again, root).trials} == {t.trial_id for t in trials}
    # A plan of other settings is not this study's: its picks are not expanded.
    other = _study(tmp_path, STUDY.replace("k = 2", "k = 3"))
    assert len(expand_study(other, root).trials) == 2
    # The teacher never distils from itself.
    from opswap.study.expand import teacher_spec

    assert teacher_spec(study).train.kd_weight == 0.0


def test_status_and_dry_run_see_the_plan(tmp_path, capsys):
    from opswap.cli import main as cli

    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    _fake_plan(load_study(path), tmp_path / "results" / "asm")
    assert cli(["run", str(path), "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "30 trials, 0 already done" in out and "macs=0.6 milp/replace1 #1 seed=0 epochs=1" in out
    assert "macs=0.6 uniform:mbconv_e6_k3 #1 seed=1" in out


def test_spec_with_an_assignment_validates_and_keeps_other_ids():
    plain = TrialSpec.create(model="wrn-10-1", position=1, op="mbconv", init="lana", teacher="t")
    assert not set(plain.to_settings()) & {"assignment", "picked_by", "budget", "objective"}
    spec = TrialSpec.create(model="wrn-10-1", init="lana", assignment=[[3, "mbconv"], [1, "identity"]],
                            picked_by="milp", budget="macs=0.5", objective="replace1")
    assert spec.assignment == ((1, "identity"), (3, "mbconv_e6_k3"))
    settings = spec.to_settings()
    assert settings["assignment"] == [[1, "identity"], [3, "mbconv_e6_k3"]]
    assert TrialSpec.from_settings(json.loads(json.dumps(settings))).trial_id == spec.trial_id
    assert spec.replace(picked_by="random", objective=None).trial_id != spec.trial_id
    bad = [({"assignment": [[2, "identity"]], "picked_by": "milp"}, "does not fit position 2"),
           ({"assignment": [[9, "mbconv"]], "picked_by": "milp"}, "positions are 1..3"),
           ({"assignment": [[1, "identity"], [1, "mbconv"]], "picked_by": "milp"}, "names a position twice"),
           ({"assignment": [[1, "identity"]]}, "needs picked_by"),
           ({"assignment": [[1, "identity"]], "picked_by": "milp", "init": "random"}, "init 'lana'"),
           ({"picked_by": "milp"}, "need an assignment"),
           ({"assignment": [["1", "identity"]], "picked_by": "milp"}, "each entry is \\[position, op\\]")]
    for extra, words in bad:
        with pytest.raises(ValueError, match=words):
            TrialSpec.create(**{"model": "wrn-10-1", "init": "lana", **extra})


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    """A wrn-10-1 teacher checkpoint and a bank of freshly initialised entries (no distillation)."""
    from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
    from opswap.ops import create_op, parse_op
    from opswap.substitution import positions
    from opswap.training import save_weights

    folder = tmp_path_factory.mktemp("bank")
    torch.manual_seed(0)
    teacher = build_model("wrn-10-1").eval()
    table = {p.index: p for p in positions(teacher)}
    entries = []
    for i, (p, op) in enumerate([(1, "identity"), (1, "mbconv"), (2, "mbconv"), (3, "mbconv"), (3, "conv_bn_e1")]):
        spec, pos = parse_op(op), table[p]
        module = create_op(spec.name, pos.c_in, pos.c_out, pos.stride)
        entries.append(BankEntry(p, spec.name, spec.family, dict(spec.params), pos.c_in, pos.c_out, pos.stride,
                                 module.state_dict(), distill_loss=0.1 * (i + 1), replace1_acc=50.0 - i))
    bank = WeightBank(entries, teacher_fingerprint=teacher_fingerprint(teacher), model="wrn-10-1")
    save_weights(teacher, folder / "teacher.safetensors")
    bank.save(folder / "bank.safetensors")
    return teacher, bank, folder


def test_assembled_trial_model_is_teacher_plus_bank_entries(tiny_bank):
    from opswap.assemble.problem import Solution
    from opswap.run.trial import _build

    teacher, bank, folder = tiny_bank
    spec = TrialSpec.create(model="wrn-10-1", init="lana", assignment=[[1, "identity"], [3, "mbconv"]],
                            picked_by="milp", teacher="t")
    model, _ = _build(spec, 10, str(folder / "teacher.safetensors"), str(folder / "bank.safetensors"))
    want = Solution({1: "identity", 2: "baseline", 3: "mbconv_e6_k3"}, 0.0, {}, {}).to_model(teacher, bank)
    got_state, want_state = model.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)
    entry = bank.entry(3, "mbconv")
    block = model.get_submodule("stages.2.0")
    assert all(torch.equal(block.state_dict()[k], v) for k, v in entry.state_dict.items())
    # Elsewhere the teacher's weights.
    teacher_state = teacher.state_dict()
    assert all(torch.equal(got_state[k], teacher_state[k]) for k in teacher_state if k.startswith(("stem", "bn", "fc", "stages.1.")))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), want.eval()(x))


def _npz(path: Path) -> Path:
    """200 training and 100 test images, ten learnable classes (fast to train and evaluate)."""
    from opswap.data import synthetic

    data = synthetic(200, 100, seed=5)
    x = lambda t: t.permute(0, 2, 3, 1).contiguous().numpy()  # noqa: E731
    np.savez(path, x_train=x(data.x_train), y_train=data.y_train.numpy(), x_test=x(data.x_test),
             y_test=data.y_test.numpy())
    return path


@pytest.mark.slow
def test_tiny_assemble_study_end_to_end_with_report(tmp_path, monkeypatch, tiny_bank):
    import opswap.training
    from opswap.report import write_report
    from opswap.run.record import load_record
    from opswap.study.stages import run_study

    from opswap.cli._common import report_context

    monkeypatch.setattr(assembly, "COST_OPTIONS", {"batch_sizes": (1, 4), "min_run_time": 0.01})
    monkeypatch.setattr(opswap.training, "measure_latency", lambda *a, **k: 0.1)
    _, _, folder = tiny_bank
    data = _npz(tmp_path / "tiny.npz")
    text = f"""name = "e2e"
model = "wrn-10-1"
dataset = "npz"
data = "{data}"
candidates = ["identity", "mbconv"]
budgets = ["macs=0.8"]
random_picks = 2
baselines = ["random", "greedy"]
seeds = [0, 1]
epochs = [1]
[train]
batch_size = 50
[teacher]
checkpoint = "{folder / 'teacher.safetensors'}"
[distill]
steps = 2
batch_size = 16
[run]
workers = 1
devices = "cpu"
"""
    study = _study(tmp_path, text)
    run = run_study(study, results_dir=tmp_path / "results", progress=False)
    root = tmp_path / "results" / "e2e"
    assert run.summary.counts == {"ok": len(run.expansion.trials)}
    plan = json.loads((root / assembly.PLAN_FILE).read_text())
    assert (root / "bank.costs.json").is_file() and plan["budgets"]["macs=0.8"]["picks"]
    records = [load_record(root, t.trial_id) for t in run.expansion.trials]
    picked = [r for r in records if "assignment" in r["settings"]]
    assert {r["settings"]["picked_by"] for r in picked} == {"milp", "greedy", "random"}
    for r in picked:
        m = r["metrics"]
        assert m["predicted_macs_fraction"] <= 0.8 + 1e-9 and m["predicted_macs"] == m["measured_macs"] == m["macs"]
        assert m["predicted_params"] == m["measured_params"] == m["params"] and m["measured_latency_b1"] > 0
        assert m["predicted_score"] is not None and 0 <= m["assembled_acc"] <= 100
    # Resumable: a second run finds everything done and recomputes nothing.
    mtime = (root / assembly.PLAN_FILE).stat().st_mtime
    assert run_study(study, results_dir=tmp_path / "results", progress=False).summary.counts == {}
    assert (root / assembly.PLAN_FILE).stat().st_mtime == mtime
    index = write_report(root, tmp_path / "reports" / "e2e", report_context(study, root))
    readme = (index.parent / "README.md").read_text()
    assert "## Assembly" in readme and "Welch" in readme and "Spearman" in readme
    assert "milp (replace1)" in readme and "teacher fine-tuned" in readme
    assert (index.parent / "assembly-accuracy-vs-cost.png").is_file()
    assert "0 of " in readme  # every expected trial is there


def _assembled_records():
    """Hand-made records of an assemble study: known accuracies, predictions and costs."""
    from record_factory import make_record

    records = [make_record(test_acc=a, seed=s, epochs=2) for s, a in enumerate([80.0, 81.0])]
    rng = np.random.default_rng(0)
    picks = [("milp", "replace1", "1:identity", 78.0, -2.0), ("greedy", "replace1", "2:identity", 76.0, -3.0)]
    picks += [("random", None, f"{p}:mbconv_e6_k3", 70.0 + p, -6.0 + p) for p in (1, 2, 3)]
    for budget in ("macs=0.5", "macs=0.7"):
        for by, objective, assignment, acc, score in picks:
            for seed in (0, 1):
                macs = 600_000 if by == "milp" else 650_000
                record = make_record(test_acc=acc + seed + rng.normal(0, 0.1), seed=seed, epochs=2, init="lana",
                                     predicted_score=score, predicted_acc=82 + score, assembled_acc=60 + 2 * score,
                                     score_replace1=score, predicted_macs=macs, measured_macs=macs,
                                     measured_macs_fraction=macs / 1e6, predicted_latency_b1=1.0,
                                     measured_latency_b1=1.25, measured_latency_b1_fraction=0.5)
                record["settings"].update(assignment=[[int(assignment[0]), assignment[2:]]], picked_by=by,
                                          budget=budget, objective=objective, seed=seed)
                record["trial_id"] = f"{budget}-{by}-{assignment}-{seed}"
                records.append(record)
    return records


def test_report_section_numbers(tmp_path):
    from scipy import stats

    from opswap.analysis.results import load_results
    from opswap.report import write_report
    from opswap.report.assembly import additivity_table, cost_error_table, pick_table, welch_table
    from record_factory import write_records

    folder = write_records(tmp_path / "r", _assembled_records())
    (folder / "assembly.json").write_text("{}")  # an assemble study's plan and cost table are not records
    (folder / "bank.costs.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = load_results(folder)
    assert frame["assignment"].dropna().str.contains(":").all()
    picks = pick_table(frame)
    milp = picks[(picks["budget"] == "macs=0.5") & (picks["picked by"] == "milp (replace1)")].iloc[0]
    assert milp["test acc (%)"].startswith("78.5") and milp["test acc (%)"].endswith("(n=2)")
    assert milp["Δ vs teacher fine-tuned"] == "-2.00"
    welch = welch_table(frame)
    row = welch[(welch["budget"] == "macs=0.5") & (welch["vs"] == "random")].iloc[0]
    part = frame[frame["budget"] == "macs=0.5"]
    want = stats.ttest_ind(part[part["picked_by"] == "milp"]["test_acc"], part[part["picked_by"] == "random"]["test_acc"],
                           equal_var=False)
    assert row["Welch t"] == f"{want.statistic:.2f}" and (row["n MILP"], row["n other"]) == (2, 6)
    costs = cost_error_table(frame).set_index("cost")
    assert costs.loc["MACs", "exact"] == "yes" and costs.loc["latency, batch 1", "mean error (%)"] == "-20.00"
    additivity = additivity_table(frame)
    before = additivity[additivity["accuracy"] == "before fine-tuning"].iloc[0]
    assert before["Spearman ρ"] == "1.00" and before["networks"] == 5
    assert before["|predicted − actual| (pp)"] == "25.40 (bias +25.40)"
    index = write_report(folder, tmp_path / "report")
    html, readme = index.read_text(), (index.parent / "README.md").read_text()
    assert "<h2>Assembly</h2>" in html and "data:image/png;base64" in html
    assert readme.index("## Assembly") < readme.index("## Settings")
    # The generic tables do not take assembled networks for the baseline.
    assert readme.count("(n=2)") >= 1 and "assembly-additivity.png" in readme


SCORES = """position,op,epochs,predicted_delta,measured_delta
1,identity,1,-2.0,
1,mbconv_e6_k3,1,1.0,3.0
2,mbconv_e6_k3,1,-1.0,
3,conv_bn_e1,1,1.0,
"""


def test_objective_predicted_reads_a_scores_file_and_refuses_a_bad_one(tmp_path):
    from opswap.study.schema import StudyError

    scores = tmp_path / "scores.csv"
    scores.write_text(SCORES)
    keys = f'objective = ["replace1", "predicted"]\nscores = "{scores}"'
    text = STUDY.replace('objective = ["replace1", "distill_loss"]', keys)
    study = _study(tmp_path, text)
    assert study.objectives == ("replace1", "predicted") and study.scores == str(scores)
    assert study.score_column == "best"
    settings = assembly._plan_settings(study)
    scores.write_text(SCORES.replace("-2.0", "-2.5"))  # another scores file is another plan
    assert assembly._plan_settings(study) != settings
    assert "scores" not in assembly._plan_settings(_study(tmp_path))  # other studies keep their plans
    bad = [(text.replace(f'scores = "{scores}"', ""), "scores: objective \"predicted\" needs"),
           (STUDY.replace("k = 2", f'scores = "{scores}"\nk = 2'), "only objective \"predicted\" reads scores"),
           (text.replace("k = 2", 'score_column = "measured"\nk = 2'), "'measured' is not a score column"),
           (text.replace(str(scores), str(tmp_path / "missing.csv")), "does not exist")]
    for source, words in bad:
        with pytest.raises(StudyError, match=words):
            _study(tmp_path, source)
    for content, words in [("position,op\n1,identity\n", "needs columns op, position, predicted_delta"),
                           ("position,op,predicted_delta\nx,identity,1\n", "not a 1-based integer"),
                           ("position,op,predicted_delta\n1,identity,1\n1,identity,2\n", "twice"),
                           ("position,op,predicted_delta,epochs\n1,identity,1,1\n2,identity,1,2\n",
                            "2 epoch budgets"),
                           ("position,op,predicted_delta\n7,identity,1\n", "scores no cell at the study's positions")]:
        scores.write_text(content)
        with pytest.raises(StudyError, match=words):
            _study(tmp_path, text)


def test_plan_with_objective_predicted_maximises_the_file_scores(tmp_path, monkeypatch, tiny_bank):
    monkeypatch.setattr(assembly, "COST_OPTIONS", {"batch_sizes": ()})  # params and MACs only
    _, _, folder = tiny_bank
    scores = tmp_path / "scores.csv"
    scores.write_text(SCORES)
    data = _npz(tmp_path / "tiny.npz")
    study = _study(tmp_path, f"""name = "pred"
model = "wrn-10-1"
dataset = "npz"
data = "{data}"
candidates = ["identity", "mbconv", "conv_bn_e1"]
budgets = ["params=10"]
objective = ["predicted"]
scores = "{scores}"
random_picks = 0
baselines = ["greedy"]
[teacher]
checkpoint = "{folder / 'teacher.safetensors'}"
""")
    root = tmp_path / "results" / "pred"
    root.mkdir(parents=True)
    plan = assembly._compute_plan(study, str(folder / "teacher.safetensors"), str(folder / "bank.safetensors"),
                                  root, "cpu")
    picks = plan["budgets"]["params=10"]["picks"]
    milp = [p for p in picks if p["picked_by"] == "milp"]
    # best = measured Δ where measured (3.0 for 1:mbconv), else predicted; negative cells are left out.
    assert [p["assignment"] for p in milp] == [[[1, "mbconv_e6_k3"], [3, "conv_bn_e1"]]]
    assert milp[0]["objective"] == "predicted" and milp[0]["scores"]["predicted"] == pytest.approx(4.0)
    assert {p["picked_by"] for p in picks} == {"milp", "greedy"}
    metrics = assembly.pick_metrics(milp[0], plan)
    assert metrics["predicted_score"] == metrics["score_predicted"] == pytest.approx(4.0)
