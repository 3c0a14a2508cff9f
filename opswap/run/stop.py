"""Stop requests: a signal (SIGTERM, SIGUSR1, SIGUSR2) asks the running trial to checkpoint and stop.

A scheduler pre-empts or times out a job by signalling it: SLURM sends SIGTERM on pre-emption
and at the time limit (then SIGKILL after `KillWait`/`GraceTime`), and `--signal=USR1@120` or
submitit's `USR2@<signal_delay_s>` shortly before the time limit. The worker installs
`handle_signals()`, which only *records* the request; nothing is interrupted. Whoever runs a
trial polls `stop_requested()` at safe points and stops there.

The contract with the training engine (`opswap.training.train`, via `opswap.run.trial.run_trial`)
------------------------------------------------------------------------------------------------
1. The runner passes the trial function `checkpoint_path=<results>/<study>/checkpoints/<trial_id>.safetensors`
   (`checkpoint_path()` below; the teacher's under `<results>/<study>/teacher/checkpoints/`), its
   folder created, when the function takes that keyword (or `**kwargs`). `run_trial`
   forwards it as `train(..., checkpoint=checkpoint_path, resume=True, should_stop=stop_requested)`.
   `train()` keeps its existing file layout beside that path: `<trial_id>.safetensors` (weights),
   `<trial_id>.state.pt` (optimiser, pruner, RNG, data order) and `<trial_id>.json` (epoch, step,
   history, config, training seconds so far), each written to a temporary file and renamed. The
   three share one token: a set whose writer was killed between two renames is recognised and
   not resumed from (the trial then starts afresh; such a kill costs the trial's progress).
2. `train()` polls `should_stop()` after every optimiser step (a bool read: free). When it is true
   it saves the checkpoint at that step boundary, including the position inside the epoch, and
   returns `TrainResult(status="preempted", history=..., error="pre-empted at epoch E, step S")`.
   (Raising `Preempted` instead is equally accepted.)
3. `run_trial` returns the record with `status = "preempted"` and skips the final measurements.
   It must not save `weights_path` for a pre-empted run.
4. On the next start of the trial (any worker, any host) `train()` finds the checkpoint and
   resumes from it: same settings (it refuses others), same data order, same RNG state.
5. The runner writes the `preempted` record, which is not a failed attempt (the same attempt
   number continues), releases the claim and exits; the record state `preempted` is runnable. The
   runner removes the checkpoint files once the trial's record is ok, diverged or failed.

A worker that is killed outright (SIGKILL, a node failure) writes nothing: its claim dies, and
another worker takes the trial over and resumes from the last checkpoint, written after every
epoch and at every stop. The checkpoint's three files carry one token, so a checkpoint whose
writer died between two renames is recognised and ignored (the trial starts afresh).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Preempted", "request_stop", "stop_requested", "stop_reason", "clear_stop", "handle_signals", "watch_runner",
           "STOP_SIGNALS", "CHECKPOINTS", "checkpoint_path", "remove_checkpoint"]

log = logging.getLogger("opswap")

STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")
CHECKPOINTS = "checkpoints"  # <results>/<study>/checkpoints/<trial_id>.safetensors (+ .state.pt, .json)

_event = threading.Event()
_reason: list[str] = []
_installed = threading.local()
_runner: list[int] = []  # in a worker process: the pid of the runner that started it


class Preempted(Exception):
    """Raised by a trial that stopped on request after saving its checkpoint; it resumes later."""


def request_stop(reason: str = "requested") -> None:
    """Ask the running trial (and the worker) to stop at the next safe point."""
    if not _event.is_set():
        _reason.append(reason)
    _event.set()


def stop_requested() -> bool:
    """Whether a stop was requested (cheap: poll it after every step).

    Inside `watch_runner`, a worker whose runner has exited (a second Ctrl-C can kill the runner
    before it shuts its workers down) asks itself to stop: its trial checkpoints and resumes later
    instead of running on, unclaimed, beside the next runner.
    """
    if not _event.is_set() and _runner and os.getppid() != _runner[-1]:
        log.warning("the runner that started this worker is gone: stopping after a checkpoint")
        request_stop("runner gone")
    return _event.is_set()


@contextlib.contextmanager
def watch_runner(pid: int | None) -> Iterator[None]:
    """Inside, this process stops (as on a signal) once its parent is no longer `pid`.

    For worker processes started by the runner (loky); None, or this process's own pid (the runner
    running trials itself), watches nothing.
    """
    if pid is None or pid == os.getpid():
        yield
        return
    _runner.append(pid)
    try:
        yield
    finally:
        _runner.pop()


def stop_reason() -> str | None:
    """What asked for the stop (e.g. "SIGTERM"), or None."""
    return _reason[0] if _event.is_set() and _reason else None


def clear_stop() -> None:
    """Forget a stop request (tests, or a process that runs a new study)."""
    _event.clear()
    _reason.clear()


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if not _event.is_set():
        log.warning(f"{name} received: stopping after a checkpoint (the trial resumes in the next worker)")
    request_stop(name)


@contextlib.contextmanager
def handle_signals(signals: tuple[str, ...] = STOP_SIGNALS) -> Iterator[bool]:
    """Turn `signals` into stop requests while inside; yields whether handlers were installed.

    Only the main thread can install handlers; elsewhere (and when an enclosing `handle_signals`
    already did) this does nothing. The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_installed, "on", False):
        yield False
        return
    previous = {}
    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, _on_signal)
    _installed.on = True
    try:
        yield True
    finally:
        _installed.on = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checkpoint_path(out_dir: str | os.PathLike, trial_id: str) -> Path:
    """Where a trial's resumable checkpoint lives: `<out_dir>/checkpoints/<trial_id>.safetensors`."""
    return Path(out_dir) / CHECKPOINTS / f"{trial_id}.safetensors"


def remove_checkpoint(out_dir: str | os.PathLike, trial_id: str) -> None:
    """Remove a trial's checkpoint files (weights, state, progress), once it needs them no more."""
    folder = Path(out_dir) / CHECKPOINTS
    if folder.is_dir():
        for path in folder.glob(f"{trial_id}.*"):
            path.unlink(missing_ok=True)
