"""The slurm backend: [run.slurm] → sbatch options (checked on fake sbatch/srun/sacct), and whole
studies run as job arrays of workers by submitit's local executor (stand-in trials, then a real one)."""
from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest

submitit = pytest.importorskip("submitit")

import standin  # noqa: E402
from standin import events, sleepy_trial  # noqa: E402
from opswap.cli import main as cli  # noqa: E402
from opswap.run.record import load_record  # noqa: E402
from opswap.study.expand import expand_study  # noqa: E402
from opswap.study.load import load_study  # noqa: E402
from opswap.study.schema import StudyError  # noqa: E402
from opswap.study.slurm import array_status, submit_study, wait_for, worker_until  # noqa: E402

cloudpickle.register_pickle_by_value(standin)

STUDY = """name = "arr"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1"]
init = ["random"]
seeds = [0, 1, 2]
[teacher]
epochs = 1
[run]
devices = "cpu"
stale_after = 30
trials_per_device = 2
[run.slurm]
partition = "gpu"
account = "proj42"
qos = "normal"
gpus_per_task = 1
cpus_per_task = 8
mem_gb = 64
time_min = 240
array = 8
parallel = 4
setup = ["module load cuda/12.4", "source .venv/bin/activate"]
extra = { constraint = "a100", mail-type = "END" }
"""

_SBATCH = """#!/bin/sh
n=$(ls "$FAKE_SLURM" | grep -c '^sbatch-')
id=$((1001 + n))
cp "$1" "$FAKE_SLURM/sbatch-$id.sh"
echo "Submitted batch job $id"
"""
_SACCT = """#!/bin/sh
cat "$FAKE_SLURM/sacct.txt"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, srun and sacct stand-ins on PATH: sbatch keeps each script and answers a job id."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", _SBATCH), ("sacct", _SACCT), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def test_run_slurm_table_becomes_the_sbatch_options_of_a_job_array(tmp_path, fake_slurm, capsys):
    path = tmp_path / "arr.toml"
    path.write_text(STUDY)
    study = load_study(path, ["run.backend=slurm"])
    sub = submit_study(study, tmp_path / "results")
    # The teacher is not trained yet: a prepare job first, and the array after it.
    assert (sub.prepare_id, sub.job_ids) == ("1001", [f"1002_{i}" for i in range(8)])
    prepare, array = (fake_slurm / "sbatch-1001.sh").read_text(), (fake_slurm / "sbatch-1002.sh").read_text()
    for line in ["--partition=gpu", "--account=proj42", "--qos=normal", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=64GB", "--time=240", "--nodes=1", "--constraint=a100", "--mail-type=END",
                 "--signal=USR2@120"]:
        assert f"#SBATCH {line}\n" in array and f"#SBATCH {line}\n" in prepare
    assert "#SBATCH --array=0-7%4\n" in array and "#SBATCH --ntasks-per-node=2\n" in array  # 1 GPU × 2 trials
    assert "#SBATCH --dependency=afterok:1001\n" in array and "#SBATCH --kill-on-invalid-dep=yes\n" in array
    assert "#SBATCH --ntasks-per-node=1\n" in prepare and "--array" not in prepare
    assert "module load cuda/12.4\nsource .venv/bin/activate\n" in array
    assert worker_until(study.run.slurm) == sub.until == 240 * 60 - 120 - 60
    jobs = json.loads((tmp_path / "results" / "arr" / "slurm" / "jobs.json").read_text())
    assert (jobs["prepare"], jobs["jobs"][0], jobs["tasks_per_job"]) == ("1001", "1002_0", 2)

    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n1001|COMPLETED|n1\n1002_[4-7]|PENDING|\n"
                                          + "".join(f"1002_{i}|RUNNING|n{i}\n" for i in range(4)))
    capsys.readouterr()
    assert cli(["status", str(path), "--results", str(tmp_path / "results"), "--set", "run.backend=slurm"]) == 0
    out = capsys.readouterr().out
    assert "slurm array 1002: 8 tasks — 4 PENDING, 4 RUNNING; prepare job 1001 COMPLETED" in out
    assert "6 trials — 0 done" in out


def test_slurm_table_problems_are_reported_with_their_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(STUDY.replace('partition = "gpu"', 'partiton = "gpu"').replace("time_min = 240", 'time_min = "4h"')
                    .replace('devices = "cpu"', 'devices = "cpu"\nbackend = "slrum"\ntrack = ["mlfow"]'))
    with pytest.raises(StudyError) as err:
        load_study(path)
    text = str(err.value)
    assert "run.slurm: " in text and "partiton: unknown key. Did you mean 'partition'?" in text
    assert "time_min: '4h'" in text
    assert "run.backend: unknown backend 'slrum'. Did you mean 'slurm'?" in text
    assert "run.track: unknown tracking sink 'mlfow'. Did you mean 'mlflow'?" in text


LOCAL = """name = "local-arr"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1", "resnet_e2"]
init = ["random"]
seeds = [0, 1]
[teacher]
epochs = 1
[predict]
features = false  # the fake trials write no loadable teacher
[run]
backend = "slurm"
devices = "cpu"
stale_after = 30
track = ["mlflow"]
[run.slurm]
cluster = "local"
gpus_per_task = 0
array = 2
time_min = 5
"""


def test_a_study_runs_as_a_local_job_array_of_workers(tmp_path, monkeypatch, capsys):
    """submitit's local executor end to end: the prepare job trains the (stand-in) teacher, two
    array tasks share the trials, nothing runs twice, the tracking sink gets every record."""
    monkeypatch.setenv("STANDIN_SECONDS", "0.5")
    path = tmp_path / "local.toml"
    path.write_text(LOCAL)
    study = load_study(path)
    results = tmp_path / "results"
    sub = submit_study(study, results, trial_fn=sleepy_trial)
    assert sub.prepare_id is not None and len(sub.job_ids) == 2
    summaries = wait_for(sub)
    root = results / study.name
    trials = expand_study(study).trials
    assert len(trials) == 2 * (1 + 2) and all(hasattr(s, "line") for s in summaries)
    assert sum(s.ran for s in summaries) == len(trials)
    starts = Counter(e["trial"] for e in events(root) if e["event"] == "start")
    assert starts == Counter({t.trial_id: 1 for t in trials})
    assert all(load_record(root, t.trial_id)["status"] == "ok" for t in trials)
    teacher = list((root / "teacher").glob("*.json"))
    assert len(teacher) == 1 and json.loads(teacher[0].read_text())["status"] == "ok"

    status = array_status(root)
    assert status.states == {"COMPLETED": 2} and status.prepare == (sub.prepare_id, "COMPLETED")
    assert cli(["status", str(path), "--results", str(results)]) == 0
    assert "local array" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((results / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name(study.name).experiment_id])
    assert sorted(r.data.tags["opswap.trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    assert client.get_experiment_by_name(f"{study.name}-teacher") is not None


REAL = """name = "real-arr"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1"]
init = ["scratch"]
data_fraction = [0.04]
[train]
batch_size = 50
[run]
devices = "cpu"
[run.slurm]
cluster = "local"
gpus_per_task = 0
cpus_per_task = 1
array = 1
time_min = 10
"""


def test_opswap_run_backend_slurm_wait_runs_real_trials_and_reports(tmp_path, capsys):
    path = tmp_path / "real.toml"
    path.write_text(REAL)
    results, reports = tmp_path / "results", tmp_path / "reports"
    code = cli(["run", str(path), "--backend", "slurm", "--wait", "--results", str(results),
                "--reports", str(reports), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "submitted job array" in out
    root = results / "real-arr"
    records = [load_record(root, t.trial_id) for t in expand_study(load_study(path)).trials]
    assert [r["status"] for r in records] == ["ok", "ok"] and all(len(r["history"]) == 1 for r in records)
    assert (root / "summary.csv").read_text().count("\n") == 3
    assert (reports / "real-arr" / "index.html").is_file()
    assert array_status(root).states == {"COMPLETED": 1}
