"""The worker: claim and run a study's pending trials until none is left or its time is nearly up.

Any number of workers, on any number of hosts sharing the results folder, cooperate through the
claims (`claims.py`) and the records alone: no scheduler, no server. A worker

1. runs the teacher and bank stages under their claims when they are not done (as `run_study`
   does; with another worker on them it waits);
2. passes over the study's trials in order, claiming and running each that is runnable
   (pending, retry, pre-empted, corrupt) and skipping those done, failed or held by a live
   runner; it passes again while a pass ran something (trials pre-empted elsewhere, or whose
   runner died, become runnable meanwhile);
3. with `until` (seconds from its start), does not start a trial it cannot finish: the pace of the
   study's finished records (seconds per epoch, else per trial) times the trial's epochs, times
   `margin`, must fit in the time left;
4. stops after the running trial on SIGTERM, SIGUSR1 or SIGUSR2 (`opswap.run.stop`): the trial
   checkpoints, its record says `preempted`, its claim is released, and the next worker resumes it;
5. waits for trials held by others only with `wait=True`, then exits with a `WorkerSummary`.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from opswap.run import stop
from opswap.run.record import DONE, load_record
from opswap.study.claims import claim_is_live, read_claim
from opswap.study.execute import TrialContext, TrialFn, available_cpus, execute_trial, resolve_devices, trial_state
from opswap.study.expand import Trial, expand_study
from opswap.study.schema import Study
from opswap.study.order import order_trials
from opswap.study.stages import plan, prepare_stages, write_summary

__all__ = ["WorkerSummary", "run_worker", "Pace", "running_hosts", "threads_per_trial"]

log = logging.getLogger("opswap")


@dataclass(frozen=True)
class WorkerSummary:
    """What one worker did: outcomes of the trials it ran, what it left and why it stopped."""

    study: str
    host: str
    pid: int
    counts: dict[str, int] = field(default_factory=dict)  # ok, diverged, failed, preempted, lost
    busy: int = 0        # left held by live runners elsewhere
    no_time: int = 0     # left because they would not have finished in time
    reason: str = ""     # no trials left | held by other runners | time limit | stopped by SIGTERM
    seconds: float = 0.0

    @property
    def ran(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """One line for people: `worker node7:1234 (study): ran 5 trials (4 ok, 1 failed) in 3m10s; ...`."""
        detail = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        left = [f"{self.busy} held by other runners"] if self.busy else []
        left += [f"{self.no_time} left for lack of time"] if self.no_time else []
        return (f"worker {self.host}:{self.pid} ({self.study}): ran {self.ran} trial{'s' * (self.ran != 1)}"
                + (f" ({detail})" if detail else "") + f" in {_duration(self.seconds)}"
                + (f"; {', '.join(left)}" if left else "") + f"; exit: {self.reason}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Pace:
    """How long trials take: seconds per epoch (or per trial) of the study's finished records."""

    def __init__(self) -> None:
        self.seconds, self.epochs, self.trials = 0.0, 0, 0
        self.plain = 0.0  # seconds of records without an epoch count

    def add(self, seconds: float | None, epochs: int | None) -> None:
        if seconds is None or seconds < 0:
            return
        self.trials += 1
        if isinstance(epochs, int) and epochs > 0:
            self.seconds += seconds
            self.epochs += epochs
        else:
            self.plain += seconds

    @classmethod
    def of(cls, root: Path, trials: tuple[Trial, ...]) -> "Pace":
        pace = cls()
        for t in trials:
            record = load_record(root, t.trial_id)
            if isinstance(record, dict) and record.get("status") in DONE:
                pace.add((record.get("timing") or {}).get("seconds"), (record.get("settings") or {}).get("epochs"))
        return pace

    def estimate(self, trial: Trial) -> float | None:
        """Expected seconds of `trial`; None before any trial has finished."""
        if self.trials == 0:
            return None
        epochs = trial.settings.get("epochs")
        if self.epochs and isinstance(epochs, int) and epochs > 0:
            return self.seconds / self.epochs * epochs
        return (self.seconds + self.plain) / self.trials


def threads_per_trial(devices: tuple[str, ...], per_device: int = 1) -> int:
    """Intra-op threads of one trial: a SLURM task's CPUs, else this host's CPUs shared by its GPU slots."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    cpus = available_cpus()
    gpus = [d for d in devices if d != "cpu"]
    return max(1, cpus // (len(gpus) * max(1, per_device))) if gpus else cpus


def running_hosts(root: str | Path, trials, stale_after: float = 120.0) -> Counter:
    """Hosts holding live claims on `trials`, with how many each: where the workers run now."""
    hosts: Counter = Counter()
    for t in trials:
        info = read_claim(Path(root) / "claims" / f"{t.trial_id}.claim")
        if claim_is_live(info, stale_after):
            hosts[info.host] += 1
    return hosts


def _sleep(seconds: float) -> None:
    """Sleep, waking early on a stop request."""
    end = time.monotonic() + seconds
    while not stop.stop_requested() and time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def run_worker(study: Study, *, results_dir: str | Path = "results", until: float | None = None,
               wait: bool = False, trial_fn: TrialFn | None = None, margin: float = 1.25, poll: float = 5.0,
               threads: int | None = None, progress: bool = False) -> WorkerSummary:
    """Claim and run the study's runnable trials until none is left, time is up or a stop arrives."""
    t0 = time.monotonic()
    host, pid = socket.gethostname(), os.getpid()
    run = study.run
    root = Path(results_dir) / study.name
    root.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()

    def elapsed() -> float:
        return time.monotonic() - t0

    def summary(reason: str, busy: int = 0, no_time: int = 0) -> WorkerSummary:
        return WorkerSummary(study.name, host, pid, dict(counts), busy, no_time, reason, elapsed())

    with stop.handle_signals():
        expansion = expand_study(study, root)
        log.info(f"worker {host}:{pid}: " + plan(study, expansion, root, run.retries).splitlines()[0]
                 + (f"; until {_duration(until)}" if until is not None else ""))
        try:
            stages = prepare_stages(study, expansion, root, trial_fn=trial_fn, progress=progress)
        except RuntimeError:
            if stop.stop_requested():  # stopped in the teacher or bank stage: the next worker goes on
                return summary(f"stopped by {stop.stop_reason()} (before the trials)")
            raise
        teacher, bank, expansion, trial_fn = stages.teacher, stages.bank, stages.expansion, stages.trial_fn
        devices = resolve_devices(run.devices)
        ctx = TrialContext(study.name, str(root), trial_fn, run.retries, False, run.stale_after, devices,
                           threads or threads_per_trial(devices, run.trials_per_device), teacher, bank,
                           run.trials_per_device, tuple(run.track), run.tracking_uri, str(Path(results_dir)))
        pace = Pace.of(root, expansion.trials)
        ordered = order_trials(study, expansion, root)  # `[run] order`, decided once per worker
        while True:
            busy, no_time, ran = [], [], 0
            for trial in ordered:
                if stop.stop_requested():
                    break
                state = trial_state(root, trial.trial_id, retries=run.retries, stale_after=run.stale_after)
                if state in ("done", "failed"):
                    continue
                if state == "running":
                    busy.append(trial.trial_id)
                    continue
                if until is not None:
                    expected = pace.estimate(trial)
                    if elapsed() + (expected or 0.0) * margin > until or elapsed() >= until:
                        no_time.append(trial.trial_id)
                        continue
                outcome = execute_trial(trial, ctx)
                if outcome.status == "busy":
                    busy.append(trial.trial_id)
                    continue
                if outcome.status in ("done", "stopped"):
                    continue
                ran += 1
                counts[outcome.status] += 1
                if outcome.status in DONE:
                    pace.add(outcome.seconds, trial.settings.get("epochs"))
                log.info(f"{outcome.status:>9}  {trial.trial_id}  {trial.label}  ({outcome.seconds:.1f} s, "
                         f"attempt {outcome.attempt}, {host}:{pid})")
            if stop.stop_requested():
                return summary(f"stopped by {stop.stop_reason()}", len(busy), len(no_time))
            if ran:
                continue  # trials may have become runnable meanwhile: look again
            if not busy:
                if no_time:
                    return summary("time limit", 0, len(no_time))
                write_summary(study, expansion, root)
                return summary("no trials left")
            if not wait:
                return summary("the rest is held by other runners", len(busy), len(no_time))
            if until is not None and elapsed() >= until:
                return summary("time limit", len(busy), len(no_time))
            _sleep(poll)
