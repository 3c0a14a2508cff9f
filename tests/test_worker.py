"""The worker loop: many workers never run a trial twice, time limits, pre-emption by SIGTERM and
resume, waiting for held trials, lost claims, and several trials per device."""
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

import cloudpickle
import pytest

import standin
from standin import events, sleepy_trial
from opswap.atomic import write_json
from opswap.run import stop
from opswap.run.record import load_record
from opswap.study import execute
from opswap.study.claims import read_claim, try_claim
from opswap.study.expand import Trial, expand_study
from opswap.study.load import load_study
from opswap.study.worker import Pace, run_worker

ROOT = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(standin)

STUDY = """name = "w"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1"]
init = ["scratch"]
seeds = [0, 1, 2, 3, 4, 5]
[run]
devices = "cpu"
stale_after = 30
"""


@pytest.fixture(autouse=True)
def no_stop_request():
    stop.clear_stop()
    yield
    stop.clear_stop()


@pytest.fixture
def study_file(tmp_path) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(STUDY)
    return path


_WORKER = textwrap.dedent("""
    import dataclasses, json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from standin import sleepy_trial
    from opswap.study.load import load_study
    from opswap.study.worker import run_worker
    summary = run_worker(load_study(sys.argv[1]), results_dir=sys.argv[2], trial_fn=sleepy_trial, poll=0.2,
                         wait={wait})
    print(json.dumps(dataclasses.asdict(summary)))
""")


def _worker(study: Path, results: Path, *, seconds: float, wait: bool = False, **env) -> subprocess.Popen:
    code = _WORKER.format(root=str(ROOT), tests=str(ROOT / "tests"), wait=wait)
    env = {**os.environ, "STANDIN_SECONDS": str(seconds), **env}
    return subprocess.Popen([sys.executable, "-c", code, str(study), str(results)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _summary(proc: subprocess.Popen, timeout: float = 150) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_three_workers_share_a_study_without_duplicates(study_file, tmp_path, monkeypatch):
    """Two worker processes and this one on 12 trials: each trial runs once, all are done."""
    results, root = tmp_path / "results", tmp_path / "results" / "w"
    procs = [_worker(study_file, results, seconds=1.0, wait=True) for _ in range(2)]
    deadline = time.time() + 120
    while not any(e["event"] == "start" for e in events(root)) and time.time() < deadline:
        time.sleep(0.05)  # join once another worker is at work
    monkeypatch.setenv("STANDIN_SECONDS", "1.0")
    here = run_worker(load_study(study_file), results_dir=results, trial_fn=sleepy_trial, wait=True, poll=0.2)
    summaries = [_summary(p) for p in procs] + [{"counts": here.counts, "reason": here.reason}]
    trials = expand_study(load_study(study_file)).trials
    starts = Counter(e["trial"] for e in events(root) if e["event"] == "start")
    assert starts == Counter({t.trial_id: 1 for t in trials})  # 12 trials, each run once
    assert all(load_record(root, t.trial_id)["status"] == "ok" for t in trials)
    assert sum(s["counts"].get("ok", 0) for s in summaries) == 12
    assert {s["reason"] for s in summaries} == {"no trials left"}
    assert here.ran >= 1 and len({e["pid"] for e in events(root)}) >= 2  # the work was shared
    assert not list((root / "claims").glob("*.claim")) and (root / "summary.csv").is_file()


def test_until_starts_no_trial_it_cannot_finish(study_file, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0.05")
    study = load_study(study_file)
    trials = expand_study(study).trials
    root = tmp_path / "w"
    # One finished trial took 100 s for its epoch: the others are expected to as well.
    write_json(root / f"{trials[0].trial_id}.json", {"schema": 1, "trial_id": trials[0].trial_id, "status": "ok",
                                                     "attempt": 1, "settings": trials[0].settings,
                                                     "timing": {"seconds": 100.0}})
    assert Pace.of(root, trials).estimate(trials[1]) == pytest.approx(100.0)
    short = run_worker(study, results_dir=tmp_path, until=120, trial_fn=sleepy_trial)  # 100 × 1.25 > 120
    assert (short.ran, short.no_time, short.reason) == (0, 11, "time limit")
    assert not events(root)
    enough = run_worker(study, results_dir=tmp_path, until=200, trial_fn=sleepy_trial)
    assert (enough.ran, enough.reason) == (11, "no trials left")
    assert "ran 11 trials (11 ok)" in enough.line()


def test_sigterm_preempts_the_trial_and_the_next_worker_resumes_it(tmp_path, monkeypatch):
    path = tmp_path / "one.toml"
    path.write_text(STUDY.replace("seeds = [0, 1, 2, 3, 4, 5]", "seeds = [0]").replace('name = "w"', 'name = "one"'))
    results, root = tmp_path / "results", tmp_path / "results" / "one"
    proc = _worker(path, results, seconds=20.0)
    deadline = time.time() + 120
    while not any(e["event"] == "start" for e in events(root)) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    t_signal = time.time()
    proc.send_signal(signal.SIGTERM)
    summary = _summary(proc, timeout=60)
    t_exit = time.time()
    first = next(e for e in events(root) if e["event"] == "start")["trial"]
    record = load_record(root, first)
    assert record["status"] == "preempted" and record["attempt"] == 1 and "pre-empted" in record["error"]
    assert summary["counts"] == {"preempted": 1} and summary["reason"] == "stopped by SIGTERM"
    assert not (root / "claims" / f"{first}.claim").exists()  # released
    checkpoint = stop.checkpoint_path(root, first)
    step = int(checkpoint.read_text())
    assert step > 0 and t_exit - t_signal < 10
    assert [e["event"] for e in events(root)] == ["start", "preempted"]  # the second trial never started

    monkeypatch.setenv("STANDIN_SECONDS", "0.5")
    second = run_worker(load_study(path), results_dir=results, trial_fn=sleepy_trial)
    resumed = load_record(root, first)
    assert resumed["status"] == "ok" and resumed["attempt"] == 1  # pre-emption used no attempt up
    assert resumed["metrics"]["resumed_from_step"] == step
    assert second.counts == {"ok": 2} and not checkpoint.exists()  # the checkpoint is removed when done
    ends = Counter(e["trial"] for e in events(root) if e["event"] == "end")
    assert set(ends.values()) == {1} and len(ends) == 2  # each trial finished once


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGUSR2"])
def test_a_trial_raising_preempted_on_a_signal_gets_a_preempted_record(tmp_path, monkeypatch, signame):
    monkeypatch.setenv("STANDIN_SECONDS", "10")
    monkeypatch.setenv("STANDIN_RAISE", "1")
    before = signal.getsignal(getattr(signal, signame))
    ctx = execute.TrialContext("s", str(tmp_path), sleepy_trial, devices=("cpu",), retries=3)
    threading.Timer(0.3, os.kill, (os.getpid(), getattr(signal, signame))).start()
    outcome = execute.execute_trial(Trial("t1", {"seed": 0}), ctx)
    record = load_record(tmp_path, "t1")
    assert outcome.status == "preempted" and outcome.attempt == 1  # no retry after a stop
    assert record["status"] == "preempted" and f"pre-empted ({signame})" in record["error"]
    assert signal.getsignal(getattr(signal, signame)) == before  # the handler is put back
    assert not (tmp_path / "claims" / "t1.claim").exists()
    assert execute.execute_trial(Trial("t2", {"seed": 1}), ctx).status == "stopped"  # none starts after it


def test_wait_for_trials_held_elsewhere_only_when_asked(study_file, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0.0")
    study = load_study(study_file)
    trials = expand_study(study).trials
    root = tmp_path / "w"
    held = try_claim(root / "claims", trials[3].trial_id, stale_after=30).start_heartbeat()
    gone = run_worker(study, results_dir=tmp_path, trial_fn=sleepy_trial)
    assert (gone.ran, gone.busy, gone.reason) == (11, 1, "the rest is held by other runners")
    threading.Timer(0.5, held.release).start()  # the other runner gives it up without a record
    waited = run_worker(study, results_dir=tmp_path, trial_fn=sleepy_trial, wait=True, poll=0.1)
    assert (waited.ran, waited.busy, waited.reason) == (1, 0, "no trials left")
    assert load_record(root, trials[3].trial_id)["status"] == "ok"


def test_a_lost_claim_writes_no_record(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0.0")

    def overtaken(spec, *, trial_id, weights_path, **kwargs):
        claim = Path(weights_path).parent / "claims" / f"{trial_id}.claim"
        info = read_claim(claim)
        claim.write_text(json.dumps({"pid": info.pid, "host": "elsewhere", "started": 0, "token": "ffffffffffffffff"}))
        return sleepy_trial(spec, trial_id=trial_id, weights_path=weights_path, **kwargs)

    ctx = execute.TrialContext("s", str(tmp_path), overtaken, devices=("cpu",))
    outcome = execute.execute_trial(Trial("t1", {"seed": 0}), ctx)
    assert outcome.status == "lost" and load_record(tmp_path, "t1") is None
    assert read_claim(tmp_path / "claims" / "t1.claim").token == "ffffffffffffffff"  # left to its owner


def test_device_lock_names_follow_the_physical_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert execute._physical("cuda:0") == "cuda3" and execute._physical("cuda:1") == "cuda1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert execute._physical("cuda:1") == "cuda1" and execute._physical("cpu") == "cpu"


def _max_concurrency(rows: list[dict]) -> dict[str, int]:
    """Per device, the most trials that ran at the same time (from start/end events)."""
    out = {}
    for device in {r["device"] for r in rows}:
        points = sorted((r["time"], 1 if r["event"] == "start" else -1) for r in rows if r["device"] == device)
        now = best = 0
        for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
            now += delta
            best = max(best, now)
        out[device] = best
    return out


@pytest.mark.parametrize("per_device", [1, 2])
def test_trials_per_device_bounds_the_trials_sharing_a_gpu(tmp_path, monkeypatch, per_device):
    """Six runners (threads: the slot locks are per open file, like separate processes) on two
    fake GPUs: each GPU runs `per_device` trials at once, never more."""
    monkeypatch.setenv("STANDIN_SECONDS", "0.3")
    monkeypatch.setattr(execute, "resolve_devices", lambda devices="auto": ("cuda:0", "cuda:1"))
    ctx = execute.TrialContext("s", str(tmp_path), sleepy_trial, devices=execute.resolve_devices(),
                               trials_per_device=per_device)
    trials = [Trial(f"t{i}", {"seed": i}) for i in range(12)]
    outcomes, barrier = [], threading.Barrier(6)

    def runner(mine):
        barrier.wait()
        outcomes.extend(execute.execute_trial(t, ctx) for t in mine)

    threads = [threading.Thread(target=runner, args=(trials[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(o.status for o in outcomes) == {"ok": 12}
    rows = events(tmp_path)
    assert {r["device"] for r in rows} == {"cuda:0", "cuda:1"}
    assert _max_concurrency(rows) == {"cuda:0": per_device, "cuda:1": per_device}  # reached, never exceeded
    # The pool run_trials starts for "auto" workers: one process per slot.
    assert execute._workers("auto", ("cuda:0", "cuda:1"), per_device) == 2 * per_device


def test_device_slots_work_where_the_shared_folder_has_no_flock(tmp_path, monkeypatch):
    """Lustre mounted `noflock` refuses flock: the per-host slot locks move to a local folder."""
    import errno
    import fcntl

    real = fcntl.flock

    def flock(f, op):
        if str(tmp_path) in getattr(f, "name", ""):
            raise OSError(errno.ENOSYS, "Function not implemented")
        return real(f, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with execute._device_slot(tmp_path, ("cuda:0",), 1) as device:
        assert device == "cuda:0"
        assert list(execute._local_lock_dir(tmp_path).glob("device-*-cuda0-0.lock"))
