"""`opswap assemble BANK`: solutions as a table / CSV / JSON, costs measured once and kept beside the
bank, and an infeasible budget refused with exit 2 and nothing written."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from opswap.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A wrn-10-1 teacher, a small npz dataset and a bank with replace-1 accuracies."""
    from opswap.data import synthetic
    from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
    from opswap.models import build_model
    from opswap.ops import create_op, parse_op
    from opswap.substitution import positions
    from opswap.training import save_weights

    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    teacher = build_model("wrn-10-1").eval()
    table = {p.index: p for p in positions(teacher)}
    entries = []
    for p, op, r1 in [(1, "identity", 8.0), (1, "mbconv", 9.5), (2, "mbconv", 9.0), (3, "mbconv", 7.0)]:
        spec, pos = parse_op(op), table[p]
        module = create_op(spec.name, pos.c_in, pos.c_out, pos.stride)
        entries.append(BankEntry(p, spec.name, spec.family, dict(spec.params), pos.c_in, pos.c_out, pos.stride,
                                 module.state_dict(), distill_loss=0.2, replace1_acc=r1))
    WeightBank(entries, teacher_fingerprint=teacher_fingerprint(teacher), model="wrn-10-1").save(
        folder / "bank.safetensors")
    save_weights(teacher, folder / "teacher.safetensors")
    data = synthetic(40, 40, seed=2)
    x = lambda t: t.permute(0, 2, 3, 1).contiguous().numpy()  # noqa: E731
    np.savez(folder / "d.npz", x_train=x(data.x_train), y_train=data.y_train.numpy(), x_test=x(data.x_test),
             y_test=data.y_test.numpy())
    return folder


def _args(folder, *extra):
    return [str(folder / "bank.safetensors"), "--teacher", str(folder / "teacher.safetensors"), "--model", "wrn-10-1",
            "--dataset", "npz", "--data", str(folder / "d.npz"), "--latency-batch", "4", *extra]


def test_costs_never_overwrite_a_file_that_is_not_a_cost_table(files, capsys, tmp_path):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"\x00\x01 not a cost table")
    for target, words in [(victim, "exists and is not a cost table"), (tmp_path, "is a folder"),
                          (tmp_path / "no" / "c.json", "does not exist")]:
        assert cli(["assemble", *_args(files, "--budget", "macs=0.9", "--costs", str(target))]) == 2
        assert words in capsys.readouterr().err
    assert victim.read_bytes() == b"\x00\x01 not a cost table"


def test_infeasible_budget_exits_2_names_the_cheapest_cost_and_writes_nothing(files, capsys):
    costs = files / "bank.costs.json"
    assert cli(["assemble", *_args(files, "--budget", "macs=0.01")]) == 2
    err = capsys.readouterr().err
    assert "opswap assemble: error: no assignment meets macs <= 0.01" in err and "cheapest reachable macs" in err
    assert not costs.exists()
    assert cli(["assemble", *_args(files, "--budget", "flops=0.5")]) == 2  # refused before any work
    assert "unknown metric 'flops'" in capsys.readouterr().err


def test_solutions_table_csv_json_and_costs_kept_beside_the_bank(files, capsys):
    costs = files / "bank.costs.json"
    assert cli(["assemble", *_args(files, "--budget", "macs=0.9", "-k", "2")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "assignment", "score", "predicted_acc"]
    assert "macs_frac" in lines[0] and "latency_b1" in lines[0] and len(lines) == 4
    assert costs.is_file()
    stamp = costs.stat().st_mtime_ns
    # Reused the second time (same device, covers the bank); CSV and JSON carry the same solutions.
    assert cli(["assemble", *_args(files, "--budget", "macs=0.9", "--budget", "params=0.95", "-k", "2",
                                   "--format", "csv")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert costs.stat().st_mtime_ns == stamp
    assert [r["rank"] for r in rows] == ["1", "2"] and all(float(r["macs_frac"]) <= 0.9 for r in rows)
    assert all(float(r["params_frac"]) <= 0.95 for r in rows)
    assert cli(["assemble", *_args(files, "--budget", "macs=0.9", "-k", "3", "--min-diff", "2",
                                   "--format", "json")]) == 0
    result = json.loads(capsys.readouterr().out)
    first = result["solutions"][0]
    assert result["requested"] == 3 and first["label"] == "milp" and first["fractions"]["macs"] <= 0.9
    changed = [set(s["changed"].items()) for s in result["solutions"]]
    assert all(len(a ^ b) >= 2 for i, a in enumerate(changed) for b in changed[:i])
    # The best pick under replace1 maximises the summed replace-1 gains, score = Σ (r1 - teacher acc).
    teacher_acc = {round(s["predicted_acc"] - s["score"], 6) for s in result["solutions"]}
    assert len(teacher_acc) == 1 and 0 <= teacher_acc.pop() <= 100


def test_every_option_has_help(capsys):
    with pytest.raises(SystemExit):
        cli(["assemble", "--help"])
    out = capsys.readouterr().out
    for option in ("--teacher", "--model", "--dataset", "--data", "--budget", "--objective", "-k", "--min-diff",
                   "--format", "--costs", "--device", "--split"):
        assert option in out
    import argparse

    from opswap.cli import assemble

    parser = argparse.ArgumentParser()
    assemble.add_arguments(parser)
    assert all(a.help for a in parser._actions)


def test_objective_predicted_maximises_the_scores_of_opswap_predict(files, capsys, tmp_path):
    # Δ per cell as `opswap predict --all --format csv` writes it: measured where known, else predicted.
    scores = tmp_path / "pred.csv"
    scores.write_text("epochs,position,op,seeds_done,measured_delta,predicted_delta\n"
                      "3,1,identity,2,-5.0,-1.0\n3,1,mbconv_e6_k3,0,,0.5\n3,2,mbconv_e6_k3,2,2.0,-3.0\n"
                      "3,3,mbconv_e6_k3,0,,-0.25\n")
    assert cli(["assemble", *_args(files, "--budget", "macs=0.999", "--objective", "predicted", "--scores",
                                   str(scores), "-k", "1", "--format", "json")]) == 0
    best = json.loads(capsys.readouterr().out)["solutions"][0]
    assert best["changed"] == {"1": "mbconv_e6_k3", "2": "mbconv_e6_k3"} and best["score"] == pytest.approx(2.5)
    assert cli(["assemble", *_args(files, "--budget", "macs=0.999", "--objective", "predicted", "--scores",
                                   str(scores), "--score-column", "predicted_delta", "-k", "1",
                                   "--format", "json")]) == 0
    best = json.loads(capsys.readouterr().out)["solutions"][0]
    assert best["changed"] == {"1": "mbconv_e6_k3"} and best["score"] == pytest.approx(0.5)
    # A cell without a score (unmeasured, or not in the file at all) is never chosen.
    assert cli(["assemble", *_args(files, "--budget", "macs=0.999", "--objective", "predicted", "--scores",
                                   str(scores), "--score-column", "measured_delta", "-k", "2",
                                   "--format", "json")]) == 0
    solutions = json.loads(capsys.readouterr().out)["solutions"]
    assert solutions[0]["changed"] == {"2": "mbconv_e6_k3"} and len(solutions) == 2
    chosen = {(p, op) for s in solutions for p, op in s["changed"].items()}
    assert chosen <= {("1", "identity"), ("2", "mbconv_e6_k3")}  # the measured cells only
    scores.write_text("position,op,predicted_delta\n2,mbconv_e6_k3,1.5\n")
    assert cli(["assemble", *_args(files, "--budget", "macs=0.999", "--objective", "predicted", "--scores",
                                   str(scores), "-k", "1", "--format", "json")]) == 0
    assert json.loads(capsys.readouterr().out)["solutions"][0]["changed"] == {"2": "mbconv_e6_k3"}


@pytest.mark.parametrize("extra, message", [
    (["--objective", "predicted"], "--objective predicted reads its scores from --scores"),
    (["--scores", "x.csv"], "--objective predicted reads its scores from --scores"),
    (["--objective", "predicted", "--scores", "missing.csv"], "does not exist"),
    (["--objective", "predicted", "--scores", "{bad}"], "needs columns op, position, predicted_delta"),
])
def test_objective_predicted_refuses_bad_score_files(files, capsys, tmp_path, extra, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("position,value\n1,2.0\n")
    extra = [e.format(bad=bad) for e in extra]
    assert cli(["assemble", *_args(files, "--budget", "macs=0.9", *extra)]) == 2
    assert message in capsys.readouterr().err
