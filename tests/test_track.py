"""Tracking sinks: records mirrored into MLflow and TensorBoard, read back with their own readers."""
from __future__ import annotations

import copy
import sys

import pytest

from opswap import track


def record(trial_id: str, *, status: str = "ok", epochs: int = 3, op: str = "mbconv_e6_k3", seed: int = 0) -> dict:
    """A trial record as docs/records.md describes it."""
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 40.0 + 10 * e, "test_loss": 2.2 / e,
                "test_acc": 35.0 + 10 * e, "val_loss": None, "val_acc": None, "lr": 0.1 / e, "seconds": 3.0,
                "images_per_s": 16000.0 + e} for e in range(1, epochs + 1)]
    last = history[-1] if history else {}
    return {
        "schema": 1, "trial_id": trial_id, "study": "quickstart", "status": status, "attempt": 1,
        "error": "RuntimeError: boom" if status == "failed" else None,
        "settings": {"kind": "train", "model": "wrn-16-2", "dataset": "synthetic", "data": None, "num_classes": 10,
                     "data_fraction": 1.0, "position": 7, "op": op, "op_family": op.split("_")[0],
                     "op_params": {"e": 6, "k": 3}, "init": "lana", "seed": seed, "epochs": epochs, "sparsity": 0.0,
                     "prune": "none", "prune_options": {},
                     "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "nesterov": True,
                               "milestones": [0.5, 0.75], "note": "x" * 7000},
                     "distill": {"steps": 500}},
        "history": history,
        "metrics": {"test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"), "best_test_acc": 65.5,
                    "val_acc": None, "per_class_acc": [90.1, 80.0], "params": 693498, "macs": 101000000,
                    "layer_sparsity": {}, "csr_bytes": None, "distill_loss": 0.042} if status != "failed" else {},
        "env": {"opswap": "0.1.0", "torch": "2.x", "python": "3.11.7", "device": "cuda:0", "device_name": "H200",
                "hostname": "node7"},
        "timing": {"started": "2026-11-22T13:00:00+00:00", "finished": "2026-11-22T13:00:10+00:00", "seconds": 10.0},
    }


RECORDS = [record("3f9c0e1a2b4d"), record("77aa00bb11cc", status="diverged", epochs=2, op="conv_bn_e1", seed=1),
           record("0123456789ab", status="failed", epochs=0)]


# -- MLflow ---------------------------------------------------------------------------------------

@pytest.fixture
def mlflow_client(tmp_path):
    tracking = pytest.importorskip("mlflow.tracking")
    sink = track.make_sink("mlflow", root=tmp_path, study="quickstart")
    return sink, tracking.MlflowClient(sink.tracking_uri)


def _runs(client, trial_id=None):
    experiment = client.get_experiment_by_name("quickstart")
    where = f"tags.`opswap.trial_id` = '{trial_id}'" if trial_id else ""
    return client.search_runs([experiment.experiment_id], where)


def test_mlflow_runs_read_back_with_mlflow(mlflow_client, tmp_path):
    sink, client = mlflow_client
    assert sink.tracking_uri.startswith("file://") and (tmp_path / "mlruns").is_dir()
    for r in RECORDS:
        sink.log_record(r)
    sink.close()
    assert len(_runs(client)) == 3

    (run,) = _runs(client, "3f9c0e1a2b4d")
    assert run.info.run_name == "3f9c0e1a2b4d" and run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model"] == "wrn-16-2" and params["position"] == "7" and params["data"] == "null"
    assert params["train.lr"] == "0.1" and params["train.nesterov"] == "true" and params["op_params.k"] == "3"
    assert params["train.milestones"] == "[0.5, 0.75]" and params["prune_options"] == "{}"
    assert len(params["train.note"]) == 6000  # cut to MLflow's limit on a param value
    assert (tags["opswap.status"], tags["opswap.trial_id"], tags["opswap.version"], tags["opswap.device"]) == (
        "ok", "3f9c0e1a2b4d", "0.1.0", "cuda:0")
    # Final metrics: numeric ones only, under their record names.
    assert metrics["test_acc"] == 65.0 and metrics["best_test_acc"] == 65.5 and metrics["params"] == 693498
    assert not {"val_acc", "per_class_acc", "layer_sparsity", "csr_bytes"} & set(metrics)
    # Per-epoch history, one point per epoch with step = epoch.
    history = client.get_metric_history(run.info.run_id, "test/acc")
    assert [(m.step, m.value) for m in history] == [(1, 45.0), (2, 55.0), (3, 65.0)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert [round(m.value, 4) for m in client.get_metric_history(run.info.run_id, "lr")] == [0.1, 0.05, 0.0333]
    assert client.get_metric_history(run.info.run_id, "val/acc") == []  # None is not logged

    (diverged,) = _runs(client, "77aa00bb11cc")
    assert diverged.data.tags["opswap.status"] == "diverged" and diverged.data.params["seed"] == "1"
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "test/loss")] == [1, 2]
    (failed,) = _runs(client, "0123456789ab")
    assert failed.info.status == "FAILED" and failed.data.tags["opswap.error"] == "RuntimeError: boom"


def test_mlflow_logging_again_does_not_duplicate(mlflow_client, tmp_path):
    sink, client = mlflow_client
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    crashed = client.create_run(experiment, tags={"opswap.trial_id": "3f9c0e1a2b4d"})  # half-logged, no digest
    first = sink.log_record(RECORDS[0])
    assert client.get_run(crashed.info.run_id).info.lifecycle_stage == "deleted"  # replaced
    assert sink.log_record(copy.deepcopy(RECORDS[0])) == first  # unchanged: the same run
    again = track.make_sink("mlflow", root=tmp_path, study="quickstart")  # another process, same store
    assert again.log_record(RECORDS[0]) == first
    assert again.log_records([RECORDS[0], RECORDS[0]]) == 2
    assert [r.info.run_id for r in _runs(client)] == [first]

    changed = copy.deepcopy(RECORDS[0])  # e.g. a retry that got further: the copy is replaced
    changed["history"].append({**changed["history"][-1], "epoch": 4, "test_acc": 70.0})
    replaced = sink.log_record(changed)
    (run,) = _runs(client)
    assert run.info.run_id == replaced != first
    assert [m.step for m in client.get_metric_history(replaced, "test/acc")] == [1, 2, 3, 4]


def _open_sink(args) -> str:
    """In a fresh process: wait for the others, then open the study's sink on the shared store."""
    uri, barrier = args
    barrier.wait()
    return track.make_sink("mlflow", root=".", study="together", tracking_uri=uri).experiment_id


def test_mlflow_runners_starting_together_share_one_experiment(tmp_path, monkeypatch):
    """Array tasks that start at the same moment on a new file store used to make one experiment
    each (a later lookup then saw one task's runs only). Three rounds, each on a fresh store."""
    import multiprocessing

    tracking = pytest.importorskip("mlflow.tracking")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    workers = 6
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(workers) as pool:
        barrier = manager.Barrier(workers)
        for round in range(3):
            uri = (tmp_path / f"mlruns-{round}").resolve().as_uri()
            ids = pool.map(_open_sink, [(uri, barrier)] * workers, chunksize=1)
            assert len(set(ids)) == 1, (round, ids)
            client = tracking.MlflowClient(uri)
            named = [e for e in client.search_experiments() if e.name == "together"]
            assert [e.experiment_id for e in named] == ids[:1], round


def test_export_records_mirrors_finished_ones(tmp_path):
    tracking = pytest.importorskip("mlflow.tracking")
    running = {**record("aaaaaaaaaaaa"), "status": "preempted"}
    uri = (tmp_path / "elsewhere").resolve().as_uri()
    assert track.export_records(RECORDS + [running], "mlflow", root=tmp_path, study="quickstart",
                                tracking_uri=uri) == 3
    assert track.export_records(RECORDS, "mlflow", root=tmp_path, study="quickstart", tracking_uri=uri) == 3
    client = tracking.MlflowClient(uri)
    assert sorted(r.data.tags["opswap.trial_id"] for r in _runs(client)) == sorted(r["trial_id"] for r in RECORDS)
    assert not (tmp_path / "mlruns").exists()  # the tracking URI given was used


# -- TensorBoard ----------------------------------------------------------------------------------

def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = track.make_sink("tensorboard", root=tmp_path, study="quickstart")
    for _ in range(2):  # logging twice replaces the first copy
        run_dir = sink.log_record(RECORDS[0])
    sink.close()
    assert run_dir == tmp_path / "tensorboard" / "quickstart" / "3f9c0e1a2b4d"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "test/loss", "test/acc", "lr"} <= scalars and "val/acc" not in scalars
    assert [(s.step, s.value) for s in events.Scalars("test/acc")] == [(1, 45.0), (2, 55.0), (3, 65.0)]
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2, 3]
    assert [round(s.value, 4) for s in events.Scalars("lr")] == [0.1, 0.05, 0.0333]
    assert [s.value for s in events.Scalars("best_test_acc")] == [65.5]  # final metrics, with the hparams
    assert "_hparams_/experiment" in events.summary_metadata
    assert track.export_records(RECORDS, "tensorboard", root=tmp_path, study="quickstart") == 3
    assert sorted(p.name for p in run_dir.parent.iterdir()) == sorted(r["trial_id"] for r in RECORDS)


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_missing_package_names_the_extra(tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for sub in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, sub, None)
    with pytest.raises(ImportError, match=r'the .* sink needs the .* package.*pip install "opswap\[track\]"'):
        track.make_sink(name, root=tmp_path, study="s")


def test_unknown_sink_and_record_without_id(tmp_path):
    with pytest.raises(ValueError, match="unknown tracking sink 'wandb'; allowed: mlflow, tensorboard"):
        track.make_sink("wandb", root=tmp_path, study="s")
    pytest.importorskip("tensorboard")
    with pytest.raises(ValueError, match="needs 'trial_id'"):
        track.make_sink("tensorboard", root=tmp_path, study="s").log_record({"status": "ok"})


def test_flatten_and_scalar_names():
    assert track.flatten({"a": 1, "b": {"c": None, "d": {"e": [1]}}, "f": {}}) == {"a": 1, "b.c": None,
                                                                                  "b.d.e": [1], "f": {}}
    assert [track.history_tag(k) for k in ("train_loss", "test_acc", "val_acc", "lr", "images_per_s")] == [
        "train/loss", "test/acc", "val/acc", "lr", "images_per_s"]
    assert track.final_metrics({"history": [{"epoch": 1, "seconds": 2.0}],
                                "metrics": {"seconds": 5, "ok": True, "x": float("nan"), "y": 1}}) == {
        "final/seconds": 5.0, "y": 1.0}
