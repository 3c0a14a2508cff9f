"""The dask backend: the same study runs on a dask.distributed cluster (a LocalCluster on loopback)."""
from __future__ import annotations

import json
import os
import sys

import cloudpickle
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from opswap.study.load import load_study  # noqa: E402
from opswap.run.record import load_record as read_record  # noqa: E402
from opswap.study.expand import expand_study  # noqa: E402
from opswap.study.stages import run_study  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

STUDY = """name = "on-dask"
model = "wrn-10-1"
dataset = "synthetic"
positions = [2, 3]
candidates = ["identity", "conv_bn_e1", "resnet_e2"]
init = ["scratch"]
seeds = [0, 1]
"""


def pid_trial(spec, *, trial_id, study, weights_path, teacher=None, bank=None, device=None, progress=False):
    """A stand-in trial that records which process ran it."""
    import os

    settings = spec.to_settings()
    record = {"schema": 1, "trial_id": trial_id, "study": study, "status": "ok", "error": None, "attempt": 1,
              "settings": settings, "history": [], "metrics": {"test_acc": 10.0 + settings["seed"]},
              "env": {"pid": os.getpid()}, "timing": {"seconds": 0.01}}
    return record


def test_dask_backend_end_to_end(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    study = load_study(path)
    trials = expand_study(study).trials
    assert len(trials) == 2 * (1 + 2 + 2)  # identity is skipped at both positions
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster.scheduler_address) as client:
            worker_pids = set(client.run(os.getpid).values())
        run = run_study(study, results_dir=tmp_path / "results", trial_fn=pid_trial, backend="dask",
                        address=cluster.scheduler_address, progress=False)
    root = tmp_path / "results" / "on-dask"
    records = [read_record(root, t.trial_id) for t in trials]
    assert run.summary.counts == {"ok": len(trials)}
    assert all(r is not None and r["status"] == "ok" for r in records)
    assert {r["env"]["pid"] for r in records} <= worker_pids  # run on the cluster's workers
    summary = pd.read_csv(root / "summary.csv")
    assert sorted(summary["trial_id"]) == sorted(t.trial_id for t in trials)
    assert json.loads((root / f"{trials[0].trial_id}.json").read_text())["settings"] == trials[0].settings

    # The same study on local processes afterwards finds everything done.
    again = run_study(study, results_dir=tmp_path / "results", trial_fn=pid_trial, workers=1, progress=False)
    assert again.summary.counts == {}


def test_an_unreachable_scheduler_is_refused_before_anything_runs():
    pytest.importorskip("distributed")
    from opswap.study.execute import check_scheduler

    with pytest.raises(ValueError, match=r"run.address 'tcp://127.0.0.1:1': no dask scheduler answered within 1 s"):
        check_scheduler("dask", "tcp://127.0.0.1:1", timeout=1)
    check_scheduler("loky", "tcp://127.0.0.1:1")  # other backends need no scheduler
    check_scheduler("dask", None)  # a local cluster is started by the run itself
