"""Parallel, resumable trial execution with joblib (loky processes, or a dask.distributed cluster).

Each trial runs in a worker under a claim (`claims.py`), with its own log file and one device
slot (`trials_per_device` slots per GPU); its record is written atomically, failures are retried
up to a limit, and a failed or diverged trial never stops the others. A trial whose record says
ok or diverged is done and never runs again, so a killed run resumes where it stopped. A trial
stopped on request (SIGTERM, SIGUSR1, SIGUSR2: `opswap.run.stop`) gets a `preempted` record and
resumes from its checkpoint in the next run. Every record written can be mirrored into tracking
sinks (`opswap.track`); a sink that fails only warns.
"""
from __future__ import annotations

import contextlib
import fcntl
import inspect
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from opswap.run import stop
from opswap.run.record import DONE, failed_record, load_record, record_state, write_record
from opswap.study.claims import Claim, claim_is_live, read_claim, try_claim
from opswap.study.expand import Trial

__all__ = ["TrialOutcome", "RunSummary", "TrialContext", "run_trials", "execute_trial", "trial_state",
           "resolve_devices", "available_cpus", "mirror_record", "TrialFn"]

log_ = logging.getLogger("opswap")

TrialFn = Callable[..., dict]


@dataclass(frozen=True)
class TrialOutcome:
    """What happened to one trial in this run."""

    trial_id: str
    # ok | diverged | failed | preempted (stopped on request, resumes later) | busy (a live runner
    # elsewhere holds it) | done (already) | stopped (a stop came before it started) | lost (its
    # claim was taken over meanwhile: the other runner's record counts)
    status: str
    attempt: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """Counts of a `run_trials` call: trials run here, found done, failed, held elsewhere."""

    outcomes: tuple[TrialOutcome, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialContext:
    """What running one trial needs besides the trial itself (sent to every worker process)."""

    study: str
    out_dir: str
    trial_fn: TrialFn | None = None
    retries: int = 1
    retry_failed: bool = False
    stale_after: float = 120.0
    devices: tuple[str, ...] = ("cpu",)
    threads: int = 1
    teacher: str | None = None
    bank: str | None = None
    trials_per_device: int = 1
    track: tuple[str, ...] = ()          # sinks of opswap.track the records are mirrored into
    tracking_uri: str | None = None
    track_root: str | None = None        # where the sinks store (default: the results root)
    runner_pid: int | None = None        # loky: the runner, the workers' parent (watched by stop.watch_runner)


def _done(out_dir: str | Path, trial_id: str) -> dict | None:
    """The trial's record when it is finished (ok or diverged), else None."""
    record = load_record(out_dir, trial_id)
    return record if isinstance(record, dict) and record.get("status") in DONE else None


def trial_state(out_dir: str | Path, trial_id: str, *, retries: int = 1, stale_after: float = 120.0) -> str:
    """`done`, `running` (live claim), `failed` (no retries left), `retry`, `preempted`, `corrupt`
    (a record file that cannot be read: it will be re-run) or `pending`."""
    record = load_record(out_dir, trial_id)
    state = record_state(record, retries=retries)
    if state == "done":
        return state
    if claim_is_live(read_claim(Path(out_dir) / "claims" / f"{trial_id}.claim"), stale_after):
        return "running"
    return state


def resolve_devices(devices: str | Sequence[str] = "auto") -> tuple[str, ...]:
    """Device slots: every CUDA GPU for "auto"/"cuda" when there are any, else the CPU."""
    if not isinstance(devices, str):
        return tuple(devices)
    if devices == "cpu":
        return ("cpu",)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == "cuda" and n == 0:
        raise ValueError('devices = "cuda" but no CUDA GPU is visible; use "auto" or "cpu"')
    return tuple(f"cuda:{i}" for i in range(n)) or ("cpu",)


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask: a SLURM task's own CPUs), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _physical(device: str) -> str:
    """The GPU behind `cuda:i` as this host names it, so that processes seeing different
    CUDA_VISIBLE_DEVICES (SLURM gives each job its own) lock the same GPU under the same name."""
    kind, _, index = device.partition(":")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if kind == "cuda" and visible:
        i = int(index or 0)
        return f"cuda{visible[i] if i < len(visible) else index}"
    return device.replace(":", "")


def _local_lock_dir(out_dir: Path) -> Path:
    """A host-local folder for one results folder's device locks."""
    import hashlib
    import tempfile

    key = hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"opswap-device-locks-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _device_slot(out_dir: Path, devices: tuple[str, ...], per_device: int = 1) -> Iterator[str | None]:
    """Hold one of `per_device` slots of a device for this trial; None when a stop came while waiting.

    A slot is an flock on `claims/device-<host>-<gpu>-<k>.lock`: per host, released when the
    process dies. Slots are tried round-robin (slot 0 of every device first), so trials spread
    over the GPUs before they share one.
    """
    if all(d == "cpu" for d in devices):
        yield "cpu"
        return
    lock_dir = out_dir / "claims"
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    slots = [(device, k) for k in range(max(1, per_device)) for device in devices]
    while True:
        for device, k in slots:
            f = open(lock_dir / f"device-{host}-{_physical(device)}-{k}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            except OSError:  # no flock on this file system (Lustre `noflock`): these locks are per host anyway
                f.close()
                if lock_dir == _local_lock_dir(out_dir):
                    raise
                lock_dir = _local_lock_dir(out_dir)
                break
            try:
                yield device
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        if stop.stop_requested():
            yield None
            return
        time.sleep(0.2)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _default_trial_fn() -> TrialFn:
    from opswap.run.trial import run_trial

    return run_trial


def _takes(fn: TrialFn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind == p.VAR_KEYWORD for p in params)


_SINKS: dict[tuple, object] = {}


def mirror_record(record: dict, ctx: TrialContext) -> None:
    """Mirror a written record into the context's tracking sinks; a failure only warns."""
    if not ctx.track:
        return
    from opswap import track

    root = ctx.track_root or str(Path(ctx.out_dir).parent)
    for name in ctx.track:
        key = (name, root, ctx.study, ctx.tracking_uri)
        try:
            sink = _SINKS.get(key)
            if sink is None:
                sink = _SINKS[key] = track.make_sink(name, root=root, study=ctx.study, tracking_uri=ctx.tracking_uri)
            sink.log_record(record)
        except Exception as err:  # the record is written; the copy can be made later (opswap export)
            _SINKS.pop(key, None)
            log_.warning(f"tracking: {name} could not log trial {record.get('trial_id')} "
                         f"({type(err).__name__}: {err}); the record is kept, `opswap export` retries it")


def _attempt(trial: Trial, ctx: TrialContext, attempt: int, device: str, log, claim: Claim | None = None) -> dict | None:
    """Run the trial function once and write its record; an exception becomes a failed record,
    `Preempted` a preempted one. None (nothing written) when the claim was lost meanwhile."""
    out_dir = Path(ctx.out_dir)
    fn = ctx.trial_fn or _default_trial_fn()
    started, t0 = _now(), time.perf_counter()
    log.write(f"[{started}] attempt {attempt} of {trial.trial_id} ({trial.label}) on {device}, "
              f"pid {os.getpid()} on {socket.gethostname()}\n")
    log.flush()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            kwargs = {"attempt": attempt} if _takes(fn, "attempt") else {}
            if _takes(fn, "checkpoint_path"):
                path = stop.checkpoint_path(out_dir, trial.trial_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                kwargs["checkpoint_path"] = path
            record = fn(trial.spec, trial_id=trial.trial_id, study=ctx.study, teacher=ctx.teacher,
                        bank=ctx.bank, device=device, progress=False,
                        weights_path=out_dir / f"{trial.trial_id}.safetensors", **kwargs)
        if not isinstance(record, dict):
            raise TypeError(f"the trial function returned {type(record).__name__}, not a record dict")
    except stop.Preempted as err:
        record = failed_record(trial.settings, trial_id=trial.trial_id, study=ctx.study,
                               error=f"pre-empted ({stop.stop_reason() or 'stop requested'}): {err}".rstrip(": "),
                               started=started, seconds=time.perf_counter() - t0)
        record["status"] = "preempted"
    except Exception as err:  # a failed trial never stops the study
        tb = traceback.format_exc()
        log.write(tb)
        lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
        error = "\n".join(lines[-6:]) or repr(err)
        record = failed_record(trial.settings, trial_id=trial.trial_id, study=ctx.study, error=error,
                               started=started, seconds=time.perf_counter() - t0)
    record["attempt"] = attempt
    if claim is not None:
        claim.beat()  # look once more, now: a runner that took the trial over owns its record
        if claim.lost:
            log.write(f"[{_now()}] attempt {attempt}: the claim was taken over by another runner; "
                      f"this result ({record.get('status')}) is dropped\n")
            log.flush()
            return None
    write_record(record, out_dir)  # the one write of this attempt's record
    log.write(f"[{_now()}] attempt {attempt}: {record.get('status')} in {time.perf_counter() - t0:.1f} s\n"
              + (f"{record.get('error')}\n" if record.get("error") else ""))
    log.flush()
    mirror_record(record, ctx)
    return record


def execute_trial(trial: Trial, ctx: TrialContext) -> TrialOutcome:
    """Worker side: claim the trial, run it (retrying failures), release the claim.

    SIGTERM / SIGUSR1 / SIGUSR2 become stop requests meanwhile (in the process's main thread):
    the trial checkpoints and gets a `preempted` record, and no further attempt starts.
    """
    with stop.handle_signals(), stop.watch_runner(ctx.runner_pid):
        return _execute(trial, ctx)


def _execute(trial: Trial, ctx: TrialContext) -> TrialOutcome:
    out_dir = Path(ctx.out_dir)
    previous = _done(out_dir, trial.trial_id)
    if previous is not None:
        return TrialOutcome(trial.trial_id, "done", int(previous.get("attempt") or 1))
    if stop.stop_requested():
        return TrialOutcome(trial.trial_id, "stopped")
    claim = try_claim(out_dir / "claims", trial.trial_id, stale_after=ctx.stale_after)
    if claim is None:
        return TrialOutcome(trial.trial_id, "busy")
    t0 = time.perf_counter()
    with claim:
        # Read again under the claim: another runner may have finished it meanwhile.
        previous = load_record(out_dir, trial.trial_id)
        if isinstance(previous, dict) and previous.get("status") in DONE:
            return TrialOutcome(trial.trial_id, "done", int(previous.get("attempt") or 1))
        if not isinstance(previous, dict):
            previous = None  # none yet, or corrupt (re-run from scratch)
        if previous is not None and previous.get("status") == "preempted":
            first = int(previous.get("attempt") or 1)  # the pre-empted attempt resumes: none used up
        else:
            first = int(previous.get("attempt") or 1) + 1 if previous is not None else 1
        last = first + ctx.retries if ctx.retry_failed else ctx.retries + 1
        if previous is not None and previous.get("status") == "preempted":
            last = max(last, first)  # a pre-empted attempt always resumes
        if first > last:
            return TrialOutcome(trial.trial_id, "failed", first - 1, 0.0, previous.get("error"))
        if ctx.trial_fn is None or "torch" in sys.modules:  # a stand-in trial need not pay for torch
            import torch

            torch.set_num_threads(ctx.threads)
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        record, attempt = None, first
        with open(out_dir / "logs" / f"{trial.trial_id}.log", "a", encoding="utf-8") as log, \
                _device_slot(out_dir, ctx.devices, ctx.trials_per_device) as device:
            if device is None:
                return TrialOutcome(trial.trial_id, "stopped")
            handler = logging.StreamHandler(log)
            logging.getLogger().addHandler(handler)
            try:
                for attempt in range(first, last + 1):
                    if attempt > first:  # a retry starts afresh, not from the failed attempt's checkpoint
                        stop.remove_checkpoint(out_dir, trial.trial_id)
                    record = _attempt(trial, ctx, attempt, device, log, claim)
                    if record is None or record.get("status") != "failed" or stop.stop_requested():
                        break
            finally:
                logging.getLogger().removeHandler(handler)
        if record is None:
            return TrialOutcome(trial.trial_id, "lost", attempt, time.perf_counter() - t0)
        if record.get("status") != "preempted":
            stop.remove_checkpoint(out_dir, trial.trial_id)
    return TrialOutcome(trial.trial_id, str(record.get("status")), attempt, time.perf_counter() - t0,
                        record.get("error"))


def _workers(workers: int | str, devices: tuple[str, ...], per_device: int = 1) -> int:
    if workers != "auto":
        return int(workers)
    if any(d != "cpu" for d in devices):
        return len(devices) * max(1, per_device)
    return max(1, available_cpus() // 4)


def check_scheduler(backend: str, address: str | None, timeout: float = 30.0) -> None:
    """Refuse, before any stage runs or anything is written, a dask scheduler that does not answer."""
    if backend != "dask" or address is None:
        return
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("the dask backend needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        Client(address, timeout=timeout).close()
    except (OSError, TimeoutError) as err:
        raise ValueError(f"run.address {address!r}: no dask scheduler answered within {timeout:g} s ({err}); "
                         "start one (dask scheduler) or fix the address") from None


@contextlib.contextmanager
def _backend(backend: str, address: str | None, workers: int) -> Iterator[int]:
    """Configure joblib for the backend; yield the n_jobs to use."""
    import joblib

    if backend == "loky":
        with joblib.parallel_config(backend="loky", inner_max_num_threads=None):
            yield workers
        return
    if backend != "dask":
        raise ValueError(f"backend {backend!r} does not run trials here; use loky or dask (a SLURM job array of "
                         "workers is submitted by `opswap run --backend slurm`, opswap.study.slurm)")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("the dask backend needs dask.distributed: pip install 'dask[distributed]'") from None
    with contextlib.ExitStack() as stack:
        if address is None:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       host="127.0.0.1", dashboard_address=None))
            address = cluster.scheduler_address
        stack.enter_context(Client(address))
        stack.enter_context(joblib.parallel_config(backend="dask"))
        yield workers


def run_trials(trials: Sequence[Trial], *, study: str, out_dir: str | Path, trial_fn: TrialFn | None = None,
               workers: int | str = 1, backend: str = "loky", address: str | None = None,
               devices: str | Sequence[str] = "auto", retries: int = 1, retry_failed: bool = False,
               stale_after: float = 120.0, teacher: str | None = None, bank: str | None = None,
               progress: bool = True, poll: float = 2.0, log: Callable[[str], None] | None = None,
               trials_per_device: int = 1, track: Sequence[str] = (), tracking_uri: str | None = None,
               track_root: str | Path | None = None) -> RunSummary:
    """Run every trial not done yet, in parallel; wait for trials that other runners hold.

    `trials_per_device` trials share one GPU; `track` names the sinks every record is mirrored
    into (`opswap.track`, stored under `track_root`, default the folder above `out_dir`).
    """
    import warnings

    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    # loky replaces a worker whose memory grew during a trial; the trial is not lost.
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given", category=UserWarning)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slots = resolve_devices(devices)
    n_jobs = _workers(workers, slots, trials_per_device)
    threads = max(1, available_cpus() // n_jobs)
    ctx = TrialContext(study, str(out_dir), trial_fn, retries, retry_failed, stale_after, slots, threads, teacher,
                       bank, trials_per_device, tuple(track), tracking_uri,
                       str(track_root) if track_root is not None else None,
                       os.getpid() if backend == "loky" else None)
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    outcomes: dict[str, TrialOutcome] = {}
    todo = [t for t in trials if _done(out_dir, t.trial_id) is None]
    labels = {t.trial_id: t.label for t in trials}
    bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc=study, unit="trial",
               disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        with _backend(backend, address, n_jobs) as jobs:
            while todo:
                parallel = Parallel(n_jobs=min(jobs, len(todo)), return_as="generator_unordered")
                busy = []
                for outcome in parallel(delayed(execute_trial)(t, ctx) for t in todo):
                    if outcome.status == "busy":
                        busy.append(outcome.trial_id)
                        continue
                    outcomes[outcome.trial_id] = outcome
                    bar.update(1)
                    if outcome.status not in ("done", "stopped"):
                        say(f"{outcome.status:>8}  {outcome.trial_id}  {labels[outcome.trial_id]}"
                            f"  ({outcome.seconds:.1f} s, attempt {outcome.attempt})")
                # Trials held by another live runner: wait until they are done or their claim dies.
                todo = [t for t in trials if t.trial_id in busy] if not stop.stop_requested() else []
                while todo:
                    states = {t.trial_id: trial_state(out_dir, t.trial_id, retries=retries,
                                                      stale_after=stale_after) for t in todo}
                    for tid, state in states.items():
                        if state in ("done", "failed"):
                            outcomes[tid] = TrialOutcome(tid, "done" if state == "done" else "failed")
                            bar.update(1)
                    todo = [t for t in todo if states[t.trial_id] in ("pending", "retry", "preempted", "corrupt")] + \
                           [t for t in todo if states[t.trial_id] == "running"]
                    if all(states[t.trial_id] == "running" for t in todo) and todo and not stop.stop_requested():
                        time.sleep(poll)
                        continue
                    break
    finally:
        bar.close()
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    return RunSummary(tuple(outcomes.values()), counts)
