"""Study runner: claims, failure isolation and retries, resume after SIGKILL, concurrent runners."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import cloudpickle

from opswap.atomic import write_json as write_json_atomic
from opswap.run.record import load_record as read_record
from opswap.study.claims import read_claim, try_claim
from opswap.study.execute import run_trials, trial_state
from opswap.study.expand import Trial

ROOT = Path(__file__).resolve().parents[1]
# Worker processes cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fake_trial(spec, *, trial_id, study, weights_path, teacher=None, bank=None, device=None, progress=False,
               attempt=1):
    """A stand-in for run_trial: logs start/end, sleeps, fails or diverges as its settings say."""
    settings = spec.to_settings() if hasattr(spec, "to_settings") else spec
    out_dir = os.path.dirname(weights_path)
    with open(os.path.join(out_dir, "ran.log"), "a") as f:
        f.write(f"{trial_id} start {attempt}\n")
    time.sleep(settings.get("seconds", 0.0))
    print(f"training {trial_id}")  # goes to the trial's log
    if attempt <= settings.get("fail_attempts", 0):
        raise RuntimeError(f"boom in {trial_id}")
    status = "diverged" if settings.get("diverge") else "ok"
    record = {"schema": 1, "trial_id": trial_id, "study": study, "status": status, "error": None,
              "attempt": attempt, "settings": settings, "history": [], "metrics": {"test_acc": 50.0},
              "env": {}, "timing": {"seconds": settings.get("seconds", 0.0)}}
    with open(os.path.join(out_dir, "ran.log"), "a") as f:
        f.write(f"{trial_id} end {attempt}\n")
    return record  # the runner writes it


def _events(out: Path) -> list[tuple[str, str]]:
    path = out / "ran.log"
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()] if path.exists() else []


# -- claims --------------------------------------------------------------------------------------

def test_claim_is_exclusive_and_released(tmp_path):
    claim = try_claim(tmp_path, "abc")
    assert claim is not None and read_claim(tmp_path / "abc.claim").pid == os.getpid()
    assert try_claim(tmp_path, "abc") is None  # held by a live process
    claim.release()
    assert not (tmp_path / "abc.claim").exists()
    assert try_claim(tmp_path, "abc") is not None


def test_claim_of_dead_process_is_taken_over(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    (tmp_path / "t1.claim").write_text(json.dumps({"pid": dead, "host": os.uname().nodename, "started": 0}))
    claim = try_claim(tmp_path, "t1")
    assert claim is not None and read_claim(tmp_path / "t1.claim").pid == os.getpid()


def test_only_one_runner_takes_over_a_dead_claim(tmp_path):
    """While another live runner holds the takeover marker, a dead claim is left to it."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(proc.stdout), "host": os.uname().nodename, "started": 0}
    (tmp_path / "t3.claim").write_text(json.dumps({**dead, "token": "aaaaaaaaaaaaaaaa"}))
    marker = tmp_path / "t3.claim.aaaaaaaaaaaaaaaa.takeover"  # keyed on the dead claim's token
    marker.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": 0, "token": "b"}))
    assert try_claim(tmp_path, "t3") is None
    marker.write_text(json.dumps({**dead, "token": "b"}))  # the marker's holder died mid-takeover
    claim = try_claim(tmp_path, "t3")
    assert claim is not None and read_claim(tmp_path / "t3.claim").pid == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t3.claim"]  # no markers left behind


def test_claim_with_stale_heartbeat_is_taken_over(tmp_path):
    (tmp_path / "t2.claim").write_text(json.dumps({"pid": 1, "host": "another-host", "started": 0}))
    assert try_claim(tmp_path, "t2", stale_after=60) is None  # other host, fresh heartbeat
    old = time.time() - 120
    os.utime(tmp_path / "t2.claim", (old, old))
    assert try_claim(tmp_path, "t2", stale_after=60) is not None


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    with try_claim(tmp_path, "t3", stale_after=0.4) as claim:
        old = time.time() - 100
        os.utime(claim.path, (old, old))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(claim.path) < 1


def test_racing_claims_have_one_winner(tmp_path):
    dead = tmp_path / "race.claim"
    dead.write_text(json.dumps({"pid": 1, "host": "gone", "started": 0}))
    os.utime(dead, (0, 0))  # stale: everybody will try to take it over
    wins, barrier = [], threading.Barrier(8)

    def contend():
        barrier.wait()
        claim = try_claim(tmp_path, "race", stale_after=10)
        if claim is not None:
            wins.append(claim)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


# -- execution -----------------------------------------------------------------------------------

def test_failures_are_isolated_and_retried(tmp_path):
    trials = [Trial("ok1", {"seconds": 0.05}), Trial("flaky", {"fail_attempts": 1}),
              Trial("broken", {"fail_attempts": 99}), Trial("nan", {"diverge": True}), Trial("ok2", {})]
    summary = run_trials(trials, study="s", out_dir=tmp_path, trial_fn=fake_trial, workers=2, retries=1, devices="cpu",
                         progress=False, log=lambda msg: None)
    status = {t.trial_id: read_record(tmp_path, t.trial_id) for t in trials}
    assert {k: (r["status"], r["attempt"]) for k, r in status.items()} == {
        "ok1": ("ok", 1), "flaky": ("ok", 2), "broken": ("failed", 2), "nan": ("diverged", 1), "ok2": ("ok", 1)}
    assert "RuntimeError: boom in broken" in status["broken"]["error"]
    assert summary.counts == {"ok": 3, "failed": 1, "diverged": 1}
    log = (tmp_path / "logs" / "broken.log").read_text()
    assert log.count("attempt 1 of broken") == 1 and "training broken" in log and "Traceback" in log
    assert not list((tmp_path / "claims").glob("*.claim"))  # every claim released

    # A rerun runs nothing: done trials are done, the broken one has used its retries.
    before = _events(tmp_path)
    again = run_trials(trials, study="s", out_dir=tmp_path, trial_fn=fake_trial, workers=1, retries=1,
                       progress=False, log=lambda msg: None)
    assert _events(tmp_path) == before and again.counts == {"failed": 1}
    assert trial_state(tmp_path, "broken", retries=1) == "failed"
    # --retry-failed grants a fresh budget of retries.
    run_trials(trials, study="s", out_dir=tmp_path, trial_fn=fake_trial, workers=1, retries=1, retry_failed=True,
               progress=False, log=lambda msg: None)
    assert read_record(tmp_path, "broken")["attempt"] == 4


def test_raising_trial_function_gets_a_failed_record(tmp_path):
    def explode(settings, **kwargs):
        raise ValueError("no such dataset")

    run_trials([Trial("x", {"a": 1})], study="s", out_dir=tmp_path, trial_fn=explode, workers=1, retries=0,
               progress=False, log=lambda msg: None)
    record = read_record(tmp_path, "x")
    assert record["status"] == "failed" and record["settings"] == {"a": 1} and record["attempt"] == 1
    assert "ValueError: no such dataset" in record["error"]


_RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_study_runner import fake_trial

    import test_study_runner
    from opswap.study.execute import run_trials
    from opswap.study.expand import Trial
    trials = [Trial(f"t{{i:02d}}", {{"seconds": {seconds}}}) for i in range({n})]
    s = run_trials(trials, study="s", out_dir=sys.argv[1], trial_fn=fake_trial, workers={workers},
                   progress=False, poll=0.2, stale_after=30, devices="cpu")
    print(s.counts)
""")


def _runner(out: Path, *, n: int, seconds: float, workers: int) -> subprocess.Popen:
    code = _RUNNER.format(root=str(ROOT), tests=str(ROOT / "tests"), n=n, seconds=seconds, workers=workers)
    return subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_resume_after_sigkill_mid_trial(tmp_path):
    proc = _runner(tmp_path, n=6, seconds=0.6, workers=2)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill when some trials are done and others are running
        events = _events(tmp_path)
        ends = {t for t, e in events if e == "end"}
        running = {t for t, e in events if e == "start"} - ends
        if len(ends) >= 2 and running:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, as a crash would
    proc.wait()
    done_before = {p.stem for p in tmp_path.glob("t*.json")}
    assert 2 <= len(done_before) < 6
    assert all(read_record(tmp_path, t)["status"] == "ok" for t in done_before)  # none corrupt
    assert list((tmp_path / "claims").glob("*.claim"))  # the dead runner left claims behind

    trials = [Trial(f"t{i:02d}", {"seconds": 0.6}) for i in range(6)]
    summary = run_trials(trials, study="s", out_dir=tmp_path, trial_fn=fake_trial, workers=2, progress=False,
                         log=lambda msg: None)
    assert summary.counts == {"ok": 6 - len(done_before)}
    ends = Counter(t for t, e in _events(tmp_path) if e == "end")
    assert ends == Counter({f"t{i:02d}": 1 for i in range(6)})  # no trial finished twice
    starts = Counter(t for t, e in _events(tmp_path) if e == "start")
    assert all(starts[t] == 1 for t in done_before)  # finished trials were not run again
    for i in range(6):
        assert json.loads((tmp_path / f"t{i:02d}.json").read_text())["status"] == "ok"


def test_two_concurrent_runners_never_duplicate_a_trial(tmp_path):
    a = _runner(tmp_path, n=10, seconds=0.3, workers=2)
    b = _runner(tmp_path, n=10, seconds=0.3, workers=2)
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    starts = Counter(t for t, e in _events(tmp_path) if e == "start")
    assert starts == Counter({f"t{i:02d}": 1 for i in range(10)})
    assert all(read_record(tmp_path, f"t{i:02d}")["status"] == "ok" for i in range(10))


# -- stages and status ---------------------------------------------------------------------------

SMALL = """name = "small"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["baseline", "conv_bn_e1"]
init = ["scratch"]
data_fraction = [0.04]
[train]
batch_size = 50
[run]
workers = 2
"""


def test_status_counts_and_time_left(tmp_path, capsys):
    from opswap.cli import main as cli
    from opswap.study.load import load_study
    from opswap.study.expand import expand_study

    path = tmp_path / "small.toml"
    path.write_text(SMALL.replace('["baseline", "conv_bn_e1"]', '["conv_bn_e1", "conv_bn_e2", "resnet_e2"]'))
    trials = expand_study(load_study(path)).trials
    assert len(trials) == 4
    root = tmp_path / "results" / "small"
    root.mkdir(parents=True)
    for t, status, attempt in [(trials[0], "ok", 1), (trials[1], "failed", 2)]:
        write_json_atomic(root / f"{t.trial_id}.json", {"trial_id": t.trial_id, "status": status, "attempt": attempt, "settings": {},
                                                        "timing": {"seconds": 300.0}})
    claim = try_claim(root / "claims", trials[2].trial_id)
    assert cli(["status", str(path), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    claim.release()
    assert "4 trials — 1 done, 1 running, 1 failed, 1 pending" in out
    # mean 5 min; (1 pending + half of 1 running) / 2 workers → 3m45s
    assert "mean trial 5m00s; about 3m45s left" in out


@pytest.mark.slow
def test_real_trials_end_to_end(tmp_path, monkeypatch):
    from opswap.study import stages
    from opswap.study.load import load_study
    from opswap.study.stages import run_study

    said = []
    monkeypatch.setattr(stages, "_say", said.append)

    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    study = load_study(path)
    run = run_study(study, results_dir=tmp_path / "results", progress=False)
    root = tmp_path / "results" / "small"
    assert run.summary.counts == {"ok": 2} and run.teacher is None and run.bank is None
    records = [read_record(root, t.trial_id) for t in run.expansion.trials]
    assert [(r["settings"]["op"], r["settings"]["position"]) for r in records] == [("baseline", None),
                                                                                  ("conv_bn_e1", 3)]
    assert all(r["status"] == "ok" and 0 <= r["metrics"]["test_acc"] <= 100 and len(r["history"]) == 1
               for r in records)
    assert (root / "summary.csv").read_text().count("\n") == 3
    assert all((root / "logs" / f"{t.trial_id}.log").exists() for t in run.expansion.trials)
    assert said[-1].startswith("small: 2 of 2 trials done (this run: 2 ok); records in")
    assert run_study(study, results_dir=tmp_path / "results", progress=False).summary.counts == {}
    assert said[-1].startswith("small: 2 of 2 trials done (nothing left to run)")  # the study's count


def test_devices_this_machine_lacks_stop_a_local_run_before_anything_runs(tmp_path):
    from opswap.study.load import load_study
    from opswap.study.stages import run_study

    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    study = load_study(path, [f'run.devices=["cpu", "cuda:{count}"]'])  # loads: a login node may lack them
    with pytest.raises(ValueError, match=rf"run.devices: device 'cuda:{count}': this machine has .*nothing was run"):
        run_study(study, results_dir=tmp_path / "results", trial_fn=fake_trial, progress=False)
    assert not (tmp_path / "results").exists()
