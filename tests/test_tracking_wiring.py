"""Tracking wired into the runner and `opswap export`: every written record is mirrored (MLflow read
back with MlflowClient, TensorBoard event files), a failing sink never loses a record."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from standin import sleepy_trial
from opswap import track
from opswap.cli import main as cli
from opswap.run import stop
from opswap.run.record import load_record
from opswap.study import execute
from opswap.study.expand import expand_study
from opswap.study.load import load_study
from opswap.study.worker import run_worker

mlflow_tracking = pytest.importorskip("mlflow.tracking")

STUDY = """name = "tracked"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1"]
init = ["scratch"]
seeds = [0, 1]
[run]
devices = "cpu"
"""


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0.0")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    execute._SINKS.clear()
    stop.clear_stop()
    yield
    execute._SINKS.clear()


def _runs(results: Path, study: str) -> dict[str, object]:
    client = mlflow_tracking.MlflowClient((results / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(study)
    return {r.data.tags["opswap.trial_id"]: r for r in client.search_runs([experiment.experiment_id])}


def test_the_worker_mirrors_every_record_it_writes(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(STUDY + 'track = ["mlflow", "tensorboard"]\n')
    study = load_study(path)
    results = tmp_path / "results"
    summary = run_worker(study, results_dir=results, trial_fn=sleepy_trial)
    trials = expand_study(study).trials
    assert summary.counts == {"ok": len(trials)}
    runs = _runs(results, "tracked")
    assert sorted(runs) == sorted(t.trial_id for t in trials)
    run = runs[trials[1].trial_id]
    assert run.data.tags["opswap.status"] == "ok" and run.data.params["op"] == "conv_bn_e1"
    assert run.data.metrics["test_acc"] == load_record(results / "tracked", trials[1].trial_id)["metrics"]["test_acc"]
    for t in trials:
        assert list((results / "tensorboard" / "tracked" / t.trial_id).glob("events.out.tfevents.*"))


def test_a_failing_sink_only_warns_and_the_record_is_kept(tmp_path, monkeypatch):
    def broken(name, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(track, "make_sink", broken)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    logger = logging.getLogger("opswap")
    logger.addHandler(handler)
    try:
        from opswap.study.expand import Trial

        summary = execute.run_trials([Trial("a", {"seed": 0}), Trial("b", {"seed": 1})], study="s", out_dir=tmp_path,
                                     trial_fn=sleepy_trial, workers=1, devices="cpu", progress=False,
                                     track=["mlflow"], log=lambda m: None)
    finally:
        logger.removeHandler(handler)
    assert summary.counts == {"ok": 2}
    assert load_record(tmp_path, "a")["status"] == "ok" and load_record(tmp_path, "b")["status"] == "ok"
    warnings = [m for m in seen if m.startswith("tracking: mlflow could not log trial")]
    assert len(warnings) == 2 and "ConnectionError: tracking server unreachable" in warnings[0]


def test_opswap_export_mirrors_finished_records_once(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text(STUDY)
    study = load_study(path)
    results = tmp_path / "results"
    run_worker(study, results_dir=results, trial_fn=sleepy_trial)  # no [run] track: nothing mirrored yet
    assert not (results / "mlruns").exists()
    trials = expand_study(study).trials
    for _ in range(2):  # exporting again replaces nothing and adds nothing
        assert cli(["export", str(path), "--to", "mlflow", "--results", str(results)]) == 0
    assert f"tracked: {len(trials)} records exported to mlflow" in capsys.readouterr().out
    assert sorted(_runs(results, "tracked")) == sorted(t.trial_id for t in trials)
    assert cli(["export", str(path), "--to", "tensorboard", "--results", str(results)]) == 0
    assert len(list((results / "tensorboard" / "tracked").iterdir())) == len(trials)
    assert cli(["export", str(tmp_path / "t.toml"), "--to", "mlflow", "--results", str(tmp_path / "none")]) == 2
