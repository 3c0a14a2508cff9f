"""Generated inputs, valid and broken: each is accepted, or refused with exit 2, one clear line and nothing written.

Study files are drawn from the schema's keys with values of every kind (right, wrong type, out of
range, misspelt); `opswap train` command lines from its options with good and bad values. Neither
may ever end in a traceback, and a refused input leaves no file behind.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from opswap.cli import main

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def to_toml(doc: dict) -> str:
    """A study dict as TOML (tables as inline tables)."""
    return "".join(f"{json.dumps(k) if not k.isidentifier() else k} = {_toml_value(v)}\n" for k, v in doc.items())


scalars = st.one_of(st.integers(-3, 300), st.floats(-2, 2, allow_nan=False), st.booleans(),
                    st.sampled_from(["", "all", "x", "25", "lana", "dsr", "cifar-10"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3))
TOP = {
    "name": st.one_of(st.sampled_from(["gen", "gen-1", "a b", "../x", ""]), scalars),
    "model": st.one_of(st.sampled_from(["wrn-10-1", "tf-cnn", "wrn-11-1", "wrn-10-0", "resnet"]), scalars),
    "dataset": st.one_of(st.sampled_from(["synthetic", "npz", "cifar10", "imagenet"]), scalars),
    "positions": st.one_of(st.just("all"), st.lists(st.integers(-1, 5), max_size=3), scalars),
    "candidates": st.one_of(st.lists(st.sampled_from(["baseline", "identity", "mbconv", "mbconf", "conv_bn_e2"]),
                                     max_size=3), values),
    "seeds": st.one_of(st.lists(st.integers(-1, 3), max_size=3), values),
    "epochs": st.one_of(st.lists(st.integers(-1, 3), max_size=2), values),
    "init": st.one_of(st.lists(st.sampled_from(["lana", "random", "scratch", "teacher", "lanna"]), max_size=2), values),
    "sparsity": st.one_of(st.lists(st.floats(-0.5, 1.5, allow_nan=False), max_size=2), values),
    "prune": st.one_of(st.sampled_from(["dsr", "static", "none", "dsrr"]), scalars),
    "data_fraction": values,
    "num_classes": scalars,
    "train": st.one_of(st.dictionaries(st.sampled_from(["lr", "batch_size", "optimizer", "learning_rate", "epochs"]),
                                       scalars, max_size=2), scalars),
    "run": st.one_of(st.dictionaries(st.sampled_from(["workers", "backend", "retries", "stale_after", "speed"]),
                                     scalars, max_size=2), scalars),
    "teacher": st.one_of(st.dictionaries(st.sampled_from(["train", "epochs", "checkpoint", "seed"]), scalars,
                                         max_size=2), scalars),
    "seed": scalars,  # a misspelling of seeds
}
_GOOD = {"name": "gen", "model": "wrn-10-1", "dataset": "synthetic"}
studies = st.fixed_dictionaries({k: st.one_of(st.just(v), st.just(v), TOP[k]) for k, v in _GOOD.items()},
                                optional={k: v for k, v in TOP.items() if k not in _GOOD})


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse refuses a malformed command line with SystemExit(2)
        return int(exit_.code)


@SETTINGS
@given(doc=studies)
def test_generated_study_files_are_accepted_or_refused_cleanly(doc, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("study")
    path = tmp / "gen.toml"
    path.write_text(to_toml(doc))
    results, reports = tmp / "results", tmp / "reports"
    code = _run(["run", str(path), "--dry-run", "--results", str(results), "--reports", str(reports)])
    out = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 2), (doc, out.err)
    assert "Traceback" not in out.err + out.out
    if code == 2:
        assert out.err.startswith("opswap run: error:") and str(path) in out.err, out.err
    assert not results.exists() and not reports.exists()  # a dry run and a refusal write nothing
    assert _files(tmp) == [path]


OPTIONS = {
    "--model": st.sampled_from(["tf-cnn", "wrn-10-1", "wrn-11-1", "vgg", ""]),
    "--epochs": st.sampled_from(["1", "0", "-3", "two"]),
    "--data-fraction": st.sampled_from(["1", "0.5", "0", "1.5", "nan", "x"]),
    "--val-fraction": st.sampled_from(["0", "0.2", "1", "-0.1"]),
    "--batch-size": st.sampled_from(["32", "0", "-1", "3.5"]),
    "--lr": st.sampled_from(["0.01", "0", "-1", "1e-3", "inf"]),
    "--position": st.sampled_from(["1", "0", "3", "99", "a"]),
    "--op": st.sampled_from(["mbconv", "identity", "mbconf", "conv_bn_e2", "bottleneck_e0", "bottleneck_e99999999"]),
    "--sparsity": st.sampled_from(["0", "0.5", "1", "-0.2"]),
    "--prune": st.sampled_from(["dsr", "static", "gradual", "magic"]),
    "--prune-option": st.sampled_from(["period=5", "perod=5", "period=0", "nonsense"]),
    "--init": st.sampled_from(["scratch", "lana", "random", "imagenet"]),
    "--teacher": st.sampled_from(["missing.safetensors", "NOTSAFE"]),
    "--seed": st.sampled_from(["0", "-1", "x", "18446744073709551616"]),
    "--label-smoothing": st.sampled_from(["0", "0.1", "1.5"]),
    "--optimizer": st.sampled_from(["sgd", "adam", "lbfgs"]),
}


@SETTINGS
@given(chosen=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=5),
       data=st.data())
def test_generated_train_command_lines_are_accepted_or_refused_cleanly(chosen, data, tmp_path_factory, capsys,
                                                                       monkeypatch):
    import opswap.run.trial

    tmp = tmp_path_factory.mktemp("train")
    (tmp / "NOTSAFE").write_text("not safetensors")
    ran = []

    def fake_run_trial(spec, **kwargs):  # the edge is under test, not training
        ran.append(spec)
        return {"schema": 1, "trial_id": spec.trial_id, "study": "t", "status": "ok", "error": None, "attempt": 1,
                "settings": spec.to_settings(), "history": [], "env": {}, "timing": {"seconds": 0.0},
                "metrics": {"test_acc": 10.0, "test_loss": 2.3, "best_test_acc": 10.0, "params": 1}}

    monkeypatch.setattr(opswap.run.trial, "run_trial", fake_run_trial)
    argv = ["train", "--model", "tf-cnn", "--dataset", "synthetic", "--no-progress", "--out", str(tmp / "out")]
    for option in chosen:
        value = data.draw(OPTIONS[option], label=option)
        argv += [option, value if option != "--teacher" or value != "NOTSAFE" else str(tmp / "NOTSAFE")]
    monkeypatch.chdir(tmp)
    code = _run(argv)
    out = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 2), (argv, out.err)
    assert "Traceback" not in out.err + out.out
    written = [p for p in _files(tmp) if p.name != "NOTSAFE"]
    if code == 2:
        assert out.err.strip() and not ran and written == [], (argv, out.err, written)
    else:
        assert len(ran) == 1 and [p.suffix for p in written] == [".json"]


@pytest.mark.parametrize("argv, message", [
    (["export-csr", "NOTSAFE", "--model", "tf-cnn"], "is not a safetensors file"),
    (["distill", "--teacher", "NOTSAFE", "--model", "wrn-10-1", "--dataset", "synthetic", "--out", "b.safetensors"],
     "is not a safetensors file"),
    (["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--init", "teacher", "--teacher", "NOTSAFE"],
     "is not a safetensors file"),
    (["train", "--model", "tf-cnn", "--dataset", "npz", "--data", "NOTSAFE"], "not an .npz archive"),
    (["train", "--model", "tf-cnn", "--dataset", "npz", "--data", "."], "directory"),
    (["train", "--model", "tf-cnn", "--dataset", "synthetic", "--out", "NOTSAFE"], "is a file"),
    (["report", "results"], "holds no trial records but folders of studies"),
])
def test_broken_files_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOTSAFE").write_text("not safetensors")
    (tmp_path / "results" / "quick").mkdir(parents=True)
    (tmp_path / "results" / "quick" / "abc.json").write_text("{}")
    before = _files(tmp_path)
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("argv", [
    ["train", "--model", "tf-cnn", "--dataset", "synthetic", "--out", "{ro}/x"],
    ["run", "{study}", "--results", "{ro}/results"],
])
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv):
    """As root os.access says every folder is writable, except on a read-only mount: stand one in."""
    import os

    from opswap.cli import _common

    ro = tmp_path / "ro"
    ro.mkdir()
    study = tmp_path / "s.toml"
    study.write_text('name = "s"\nmodel = "wrn-10-1"\ndataset = "synthetic"\nkind = "methods"\n'
                     '[[methods]]\nname = "dense"\n')
    real = os.access
    monkeypatch.setattr(_common.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    before = _files(tmp_path)
    assert _run([a.format(ro=ro, study=study) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"'{ro}' is not writable" in err and "Traceback" not in err
    assert _files(tmp_path) == before


def test_a_read_only_results_root_is_refused_up_front(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _run(["train", "--model", "tf-cnn", "--dataset", "synthetic", "--out", str(ro / "x")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--prune", "nm"], "prunes nothing at --sparsity 0"),
    (["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--seed", str(2**64)], r"2\*\*63 - 1"),
    (["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--lr", "inf"], "a finite number"),
    (["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--position", "1", "--op", "mbconv_e0"], ">= 1"),
    (["positions", "wrn-10-1", "--ops", "bottleneck_e99999999"], "too large to build"),
    (["positions", "wrn-10-1", "--ops", ""], "names no op"),
    (["worker", "study.toml", "--margin", "nan"], "--margin must be a number >= 1"),
    (["worker", "study.toml", "--wait", "--poll", "-1"], "--poll must be a positive number"),
    (["export-csr", "weights.safetensors", "--model", "wrn-16-1"], "does not fit --model wrn-16-1: 36 tensors missing"),
    (["export-csr", "weights.safetensors", "--model", "wrn-10-1", "--out", "."], "is a folder; give the file"),
    (["assemble", ".", "--teacher", "weights.safetensors", "--model", "wrn-10-1", "--dataset", "synthetic",
      "--budget", "params=0.5"], "is a directory"),
])
def test_more_requests_are_refused_with_one_line_and_nothing_written(tmp_path, capsys, monkeypatch, argv, message):
    from opswap.models import build_model
    from opswap.training import save_weights

    monkeypatch.chdir(tmp_path)
    save_weights(build_model("wrn-10-1"), tmp_path / "weights.safetensors")
    (tmp_path / "study.toml").write_text('name = "s"\nmodel = "wrn-10-1"\ndataset = "synthetic"\n'
                                        'init = ["scratch"]\nepochs = [1]\n')
    before = set(_files(tmp_path))
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert set(_files(tmp_path)) == before
