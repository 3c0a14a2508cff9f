"""Worker benchmark: many workers on one study, pre-emption by SIGTERM, takeover after SIGKILL.

    PYTHONPATH=. python benchmarks/workers.py [--workers 3] [--trials 30] [--seconds 0.5] [--stale 10]

Stand-in trials (sleep in 50 ms steps, polling `stop_requested()`, checkpointing the step reached)
on a WRN-10-1 study expanded as usual. Reports (1) how the trials spread over the workers, that
none ran twice, and the wall time against the ideal; (2) SIGTERM → pre-empted record and worker
exit, and how long until a waiting worker resumes the trial; (3) SIGKILL → takeover by a waiting
worker on the same host (dead pid: next poll) and on "another host" (claim rewritten with a
foreign host name: the heartbeat must go stale first).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUDY = """name = "bench"
model = "wrn-10-1"
dataset = "synthetic"
positions = [3]
candidates = ["conv_bn_e1"]
init = ["scratch"]
seeds = {seeds}
[run]
devices = "cpu"
stale_after = {stale}
"""


def sleepy_trial(spec, *, trial_id, study, weights_path, attempt=1, checkpoint_path=None, **_):
    """Sleep BENCH_SECONDS in 50 ms steps; on a stop request checkpoint the step and return `preempted`."""
    from opswap.run import stop

    seconds = float(os.environ.get("BENCH_SECONDS", "0.5"))
    out = Path(weights_path).parent
    steps = max(1, round(seconds / 0.05))
    start = int(Path(checkpoint_path).read_text()) if checkpoint_path and Path(checkpoint_path).is_file() else 0
    _log(out, trial_id, "start", start)
    t0 = time.perf_counter()
    record = {"schema": 1, "trial_id": trial_id, "study": study, "status": "ok", "error": None, "attempt": attempt,
              "settings": spec.to_settings(), "history": [], "metrics": {}, "env": {}, "timing": {}}
    for step in range(start, steps):
        if stop.stop_requested():
            Path(checkpoint_path).write_text(str(step))
            _log(out, trial_id, "preempted", step)
            record.update(status="preempted", timing={"seconds": time.perf_counter() - t0})
            return record
        time.sleep(seconds / steps)
    _log(out, trial_id, "end", steps)
    record["timing"] = {"seconds": time.perf_counter() - t0}
    return record


def _log(out: Path, trial_id: str, what: str, step: int) -> None:
    fd = os.open(out / "ran.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{trial_id} {what} {time.time():.4f} {os.getpid()} {step}\n".encode())
    os.close(fd)


def _events(root: Path) -> list[tuple[str, str, float, int, int]]:
    path = root / "ran.log"
    if not path.is_file():
        return []
    return [(t, w, float(s), int(p), int(k)) for t, w, s, p, k in (ln.split() for ln in path.read_text().splitlines())]


_WORKER = textwrap.dedent("""
    import dataclasses, json, sys
    sys.path[:0] = [{root!r}, {bench!r}]
    from workers import sleepy_trial
    from opswap.study.load import load_study
    from opswap.study.worker import run_worker
    s = run_worker(load_study(sys.argv[1]), results_dir=sys.argv[2], trial_fn=sleepy_trial, wait={wait}, poll=0.2)
    print(json.dumps(dataclasses.asdict(s)))
""")


def _worker(study: Path, results: Path, seconds: float, wait: bool = True) -> subprocess.Popen:
    code = _WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), wait=wait)
    return subprocess.Popen([sys.executable, "-c", code, str(study), str(results)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "BENCH_SECONDS": str(seconds)})


def _wait_for(root: Path, test, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not test(_events(root)) and time.time() < deadline:
        time.sleep(0.02)


def sharing(tmp: Path, workers: int, trials: int, seconds: float) -> dict:
    study = tmp / "share.toml"
    study.write_text(STUDY.format(seeds=list(range(trials // 2)), stale=30))
    results = tmp / "share"
    procs = [_worker(study, results, seconds) for _ in range(workers)]
    summaries = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    events = _events(results / "bench")
    starts = Counter(t for t, w, *_ in events if w == "start")
    first, last = min(e[2] for e in events), max(e[2] for e in events)
    joined = sorted(min(e[2] for e in events if e[3] == pid) - first for pid in {e[3] for e in events})
    return {"trials": len(starts), "ran_twice": sum(n > 1 for n in starts.values()),
            "per_worker": sorted(s["ran"] if "ran" in s else sum(s["counts"].values()) for s in summaries),
            "wall_s": round(last - first, 2), "workers_joined_after_s": [round(j, 1) for j in joined],
            "busy_s_per_trial": round(seconds, 2)}


def preemption(tmp: Path, stale: float) -> dict:
    """Worker A runs a long trial; B (waiting) finishes the short one, then waits. SIGTERM A."""
    study = tmp / "pre.toml"
    study.write_text(STUDY.format(seeds=[0], stale=stale))  # 2 trials
    results = tmp / "pre"
    root = results / "bench"
    a = _worker(study, results, 60.0)
    _wait_for(root, lambda ev: any(w == "start" for _, w, *_ in ev))
    b = _worker(study, results, 60.0)
    time.sleep(1.0)
    _wait_for(root, lambda ev: sum(w == "start" for _, w, *_ in ev) >= 2)
    # B runs the other trial for 30 s; start a third worker C that waits for A's trial.
    c = _worker(study, results, 1.0)
    time.sleep(25.0)  # C is up (imports take long on a loaded machine) and polling
    t_sig = time.time()
    a.send_signal(signal.SIGTERM)
    a.communicate()
    t_exit = time.time()
    held = next(t for t, w, _, pid, _ in _events(root) if w == "start" and pid == a.pid)
    t_record = next(s for t, w, s, pid, _ in _events(root) if w == "preempted" and pid == a.pid)
    _wait_for(root, lambda ev: any(t == held and w == "start" and pid == c.pid for t, w, _, pid, _ in ev))
    t_resume = next(s for t, w, s, pid, _ in _events(root) if t == held and w == "start" and pid == c.pid)
    b.send_signal(signal.SIGTERM)
    b.communicate()
    c.communicate()
    return {"sigterm_to_checkpoint_s": round(t_record - t_sig, 3), "sigterm_to_process_exit_s": round(t_exit - t_sig, 2),
            "sigterm_to_resumed_by_waiting_worker_s": round(t_resume - t_sig, 2)}


def takeover(tmp: Path, stale: float, foreign: bool) -> float:
    """SIGKILL a worker mid-trial; seconds until a waiting worker starts that trial."""
    study = tmp / f"kill{int(foreign)}.toml"
    study.write_text(STUDY.format(seeds=[0], stale=stale))
    results = tmp / f"kill{int(foreign)}"
    root = results / "bench"
    a = _worker(study, results, 60.0)
    _wait_for(root, lambda ev: any(w == "start" for _, w, *_ in ev))
    held = _events(root)[0][0]
    b = _worker(study, results, 0.5)
    _wait_for(root, lambda ev: any(w == "end" for _, w, *_ in ev))  # b did the other trial and now waits
    if foreign:  # as if A ran on another host: only its heartbeat can tell that it died
        claim = root / "claims" / f"{held}.claim"
        data = json.loads(claim.read_text())
        data["host"] = "elsewhere"
        claim.write_text(json.dumps(data))
    time.sleep(1.0)
    t_kill = time.time()
    a.kill()
    a.wait()
    _wait_for(root, lambda ev: any(t == held and w == "start" and pid == b.pid for t, w, _, pid, _ in ev))
    t_start = next(s for t, w, s, pid, _ in _events(root) if t == held and w == "start" and pid == b.pid)
    b.communicate()
    return round(t_start - t_kill, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--stale", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = {"cpus": os.cpu_count(), "load": os.getloadavg()[0]}
        out["sharing"] = sharing(tmp, args.workers, args.trials, args.seconds)
        out["preemption"] = preemption(tmp, args.stale)
        out["sigkill_same_host_takeover_s"] = takeover(tmp, args.stale, foreign=False)
        out["sigkill_other_host_takeover_s"] = takeover(tmp, args.stale, foreign=True)
        out["stale_after_s"] = args.stale
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
