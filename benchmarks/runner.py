"""Study-runner benchmark: overhead per trial (a trivial trial) and the speedup of 2 workers over 1.

    PYTHONPATH=. python benchmarks/runner.py [--trivial 40] [--real 4] [--fraction 0.2]

The overhead is what the runner adds around a trial (claim, heartbeat, log file, record rewrite,
joblib dispatch), measured as (runner time − direct calls) / trials with a warm worker pool.
The speedup runs the same small real trials (WRN-10-1, synthetic data, from scratch) with one
worker holding every core and with two workers holding one core each.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def trivial_trial(settings, *, trial_id, study, out_dir, teacher=None, bank=None, device=None, progress=False):
    """Writes its record and returns: a trial that costs nothing."""
    from opswap.study.claims import write_json_atomic

    record = {"schema": 1, "trial_id": trial_id, "study": study, "status": "ok", "error": None, "attempt": 1,
              "settings": settings, "history": [], "metrics": {}, "env": {}, "timing": {"seconds": 0.0}}
    write_json_atomic(Path(out_dir) / f"{trial_id}.json", record)
    return record


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overhead(n: int) -> dict[str, float]:
    """Seconds per trivial trial: called directly, and through the runner (1 worker, cold and warm)."""
    from opswap.study.execute import run_trials
    from opswap.study.expand import Trial

    trials = [Trial(f"trivial{i:04d}", {"i": i}) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        direct = _timed(lambda: [trivial_trial(t.settings, trial_id=t.trial_id, study="b", out_dir=tmp)
                                 for t in trials])
    out = {"direct": direct / n}
    for name in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as tmp:
            seconds = _timed(lambda: run_trials(trials, study="b", out_dir=tmp, trial_fn=trivial_trial, workers=1,
                                                devices="cpu", progress=False, log=lambda m: None))
        out[name] = seconds / n
    return out


def speedup(n: int, fraction: float, epochs: int) -> dict[str, float]:
    """Wall time of `n` real small trials with 1 and with 2 workers."""
    from opswap.study.execute import run_trials
    from opswap.study.expand import Trial
    from opswap.trial import default_settings, trial_id_for

    settings = [default_settings(model="wrn-10-1", dataset="synthetic", epochs=epochs, seed=s,
                                 data_fraction=fraction) for s in range(n)]
    trials = [Trial(trial_id_for(s), s, f"seed {s['seed']}") for s in settings]
    times = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            times[workers] = _timed(lambda: run_trials(trials, study="b", out_dir=tmp, workers=workers,
                                                       devices="cpu", progress=False, log=lambda m: None))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trivial", type=int, default=40, help="trivial trials for the overhead (default 40)")
    parser.add_argument("--real", type=int, default=4, help="real trials for the speedup; 0 skips it (default 4)")
    parser.add_argument("--fraction", type=float, default=0.2, help="training data fraction of a real trial")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}")
    o = overhead(args.trivial)
    print(f"overhead per trivial trial ({args.trivial} trials, 1 worker): direct call {o['direct'] * 1e3:.1f} ms; "
          f"through the runner {o['cold'] * 1e3:.0f} ms with worker start-up, {o['warm'] * 1e3:.0f} ms warm "
          f"→ {(o['warm'] - o['direct']) * 1e3:.0f} ms added per trial")
    if args.real:
        t = speedup(args.real, args.fraction, args.epochs)
        print(f"{args.real} real trials (wrn-10-1, synthetic, {args.fraction:g} of the data, {args.epochs} epoch): "
              f"1 worker {t[1]:.1f} s, 2 workers {t[2]:.1f} s → speedup {t[1] / t[2]:.2f}×")


if __name__ == "__main__":
    main()
