"""Study-runner benchmark: overhead per trial (a trivial trial) and the speedup of 2 workers over 1.

    PYTHONPATH=. python benchmarks/runner.py [--trivial 40] [--real 4] [--fraction 0.2]

The overhead is what the runner adds around a trial (claim, heartbeat, log file, record rewrite,
joblib dispatch), measured as (runner time − direct calls) / trials with a warm worker pool.
The speedup runs the same small real trials (WRN-10-1, synthetic data, from scratch) with one
worker holding every core and with two workers holding one core each, after a warm-up round so
that imports and dataset generation are not counted.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time


def trivial_trial(settings, *, trial_id, study, weights_path=None, teacher=None, bank=None, device=None,
                  progress=False):
    """Returns its record (the runner writes it): a trial that costs nothing."""
    return {"schema": 1, "trial_id": trial_id, "study": study, "status": "ok", "error": None, "attempt": 1,
            "settings": dict(settings), "history": [], "metrics": {}, "env": {}, "timing": {"seconds": 0.0}}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overhead(n: int) -> dict[str, float]:
    """Seconds per trivial trial: called directly, and through the runner (1 worker, cold and warm)."""
    from opswap.study.execute import run_trials
    from opswap.study.expand import Trial

    trials = [Trial(f"trivial{i:04d}", {"i": i}) for i in range(n)]
    from opswap.run.record import write_record

    with tempfile.TemporaryDirectory() as tmp:
        direct = _timed(lambda: [write_record(trivial_trial(t.settings, trial_id=t.trial_id, study="b"), tmp)
                                 for t in trials])
    out = {"direct": direct / n}
    for workers in (1, 2):  # 1: in the runner's process; 2: loky worker processes
        for name in ("cold", "warm"):
            with tempfile.TemporaryDirectory() as tmp:
                seconds = _timed(lambda: run_trials(trials, study="b", out_dir=tmp, trial_fn=trivial_trial,
                                                    workers=workers, devices="cpu", progress=False,
                                                    log=lambda m: None))
            out[f"{name}{workers}"] = seconds / n
    return out


def speedup(n: int, fraction: float, epochs: int) -> dict[str, float]:
    """Wall time of `n` real small trials with 1 and with 2 workers."""
    from opswap.study.execute import run_trials
    from opswap.study.expand import Trial
    from opswap.run.spec import TrialSpec

    def trials(seeds):
        specs = [TrialSpec.create(model="wrn-10-1", dataset="synthetic", epochs=epochs, seed=s,
                                  data_fraction=fraction) for s in seeds]
        return [Trial(s.trial_id, s, f"seed {s.seed}") for s in specs]

    times = {}
    for workers in (1, 2):
        run = lambda batch, tmp: run_trials(batch, study="b", out_dir=tmp, workers=workers,  # noqa: E731
                                            devices="cpu", progress=False, log=lambda m: None)
        with tempfile.TemporaryDirectory() as tmp:
            run(trials(range(100, 100 + workers)), tmp)  # warm-up: imports and the dataset in every worker
            times[workers] = _timed(lambda: run(trials(range(n)), tmp))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trivial", type=int, default=40, help="trivial trials for the overhead (default 40)")
    parser.add_argument("--real", type=int, default=6, help="real trials for the speedup; 0 skips it (default 6)")
    parser.add_argument("--fraction", type=float, default=0.2, help="training data fraction of a real trial")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}")
    o = overhead(args.trivial)
    print(f"trivial trial called directly: {o['direct'] * 1e3:.1f} ms ({args.trivial} trials)")
    for w, where in ((1, "1 worker, in the runner's process"), (2, "2 loky worker processes")):
        print(f"through the runner, {where}: {o[f'cold{w}'] * 1e3:.1f} ms per trial cold (worker start-up "
              f"included), {o[f'warm{w}'] * 1e3:.1f} ms warm → {(o[f'warm{w}'] - o['direct']) * 1e3:.1f} ms added")
    if args.real:
        t = speedup(args.real, args.fraction, args.epochs)
        print(f"{args.real} real trials (wrn-10-1, synthetic, {args.fraction:g} of the data, {args.epochs} epoch): "
              f"1 worker {t[1]:.1f} s, 2 workers {t[2]:.1f} s → speedup {t[1] / t[2]:.2f}×")


if __name__ == "__main__":
    main()
