"""The SLURM backend: a study as one job array of workers, submitted with submitit.

`submit_study` submits `[run.slurm] array` array tasks (at most `parallel` at once). Each task
is one job on one node with `gpus_per_task` GPUs, running `gpus_per_task × trials_per_device`
worker processes (SLURM tasks, `srun`), so that several trials share a GPU when asked; each
process runs `run_worker` with `until` set from the time limit, so it starts no trial it cannot
finish, and stops on the signal submitit asks SLURM to send `signal_delay_s` before the limit.

The teacher and bank stages run as their own job first (one task, same resources) when they are
not done, and the array waits for it (`--dependency=afterok`, cancelled if it fails); with
the local executor the submitting process waits for that job instead. Every worker also runs
the stages under their claims when it finds them not done, so a lost prepare job costs time,
not correctness.

Submitted jobs are listed in `<results>/<study>/slurm/jobs.json` (submitit's logs and pickles
in `slurm/logs/`), which `array_status` (`opswap status`) reads back with their states.
"""
from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opswap.atomic import write_json
from opswap.study.claims import pid_alive
from opswap.study.execute import TrialFn
from opswap.study.expand import expand_study
from opswap.study.schema import SlurmConfig, Study
from opswap.study.stages import prepare_stages, stages_pending
from opswap.study.worker import WorkerSummary, run_worker

__all__ = ["Submission", "ArrayStatus", "submit_study", "wait_for", "array_status", "worker_until",
           "executor_parameters", "array_task", "prepare_task", "JOBS_FILE"]

log = logging.getLogger("opswap")

JOBS_FILE = Path("slurm") / "jobs.json"
_STARTUP_S = 60  # time from the job's start to the worker's: Python, torch, the study's expansion


@dataclass
class Submission:
    """Jobs submitted for a study: the optional prepare job and the array of workers."""

    study: str
    root: str
    cluster: str
    folder: str
    prepare_id: str | None
    job_ids: list[str]
    until: float
    jobs: list = field(default_factory=list, repr=False)  # submitit Job objects (this process only)
    prepare_job: Any = field(default=None, repr=False)

    @property
    def array_id(self) -> str:
        """The SLURM array's id (`1234` of `1234_0`), or the first local job's."""
        return self.job_ids[0].split("_")[0] if self.job_ids else ""


def worker_until(config: SlurmConfig) -> float:
    """Seconds a worker may plan trials for: the time limit less the stop signal's lead and start-up."""
    return float(max(60, config.time_min * 60 - config.signal_delay_s - _STARTUP_S))


def _processes(study: Study) -> int:
    return max(1, study.run.slurm.gpus_per_task) * study.run.trials_per_device


def executor_parameters(study: Study, *, name: str, tasks: int) -> dict[str, Any]:
    """submitit `update_parameters` keywords for one array task of this study (or its prepare job)."""
    cfg = study.run.slurm
    params: dict[str, Any] = {"name": name, "timeout_min": cfg.time_min, "nodes": 1, "tasks_per_node": tasks,
                              "cpus_per_task": cfg.cpus_per_task, "gpus_per_node": cfg.gpus_per_task}
    if cfg.mem_gb is not None:
        params["mem_gb"] = float(cfg.mem_gb)
    if cfg.cluster == "slurm":
        params.update(slurm_partition=cfg.partition, slurm_account=cfg.account, slurm_qos=cfg.qos,
                      slurm_array_parallelism=cfg.parallel or cfg.array, slurm_signal_delay_s=cfg.signal_delay_s,
                      slurm_setup=list(cfg.setup) or None, slurm_additional_parameters=dict(cfg.extra) or None)
    elif cfg.setup:
        params["local_setup"] = list(cfg.setup)
    return {k: v for k, v in params.items() if v is not None}


def _executor(study: Study, folder: Path, *, name: str, tasks: int, extra: dict | None = None):
    try:
        import submitit
    except ImportError:
        raise ValueError('backend slurm needs submitit: pip install "opswap[cluster]"') from None
    executor = submitit.AutoExecutor(folder=folder, cluster=study.run.slurm.cluster)
    params = executor_parameters(study, name=name, tasks=tasks)
    if extra:
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), **extra}
    executor.update_parameters(**params)
    return executor


def _cli_logging() -> None:
    """A job's opswap log goes to its stderr (submitit keeps it in slurm/logs/<job>_<task>_log.err)."""
    logger = logging.getLogger("opswap")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def array_task(study: Study, results_dir: str, until: float, trial_fn: TrialFn | None = None,
               wait: bool = False) -> WorkerSummary:
    """What one array task's process runs: the worker loop. Its summary is the job's result."""
    _cli_logging()
    summary = run_worker(study, results_dir=results_dir, until=until, wait=wait, trial_fn=trial_fn)
    log.info(summary.line())
    return summary


def prepare_task(study: Study, results_dir: str, trial_fn: TrialFn | None = None
                 ) -> tuple[str | None, str | None, str | None, str | None]:
    """The prepare job: the teacher, bank and features (or assembly plan) stages, each under its claim;
    the paths of their files."""
    _cli_logging()
    root = Path(results_dir) / study.name
    stages = prepare_stages(study, expand_study(study, root), root, trial_fn=trial_fn, progress=False)
    return stages.teacher, stages.bank, stages.features, stages.plan


def submit_study(study: Study, results_dir: str | Path = "results", *, trial_fn: TrialFn | None = None,
                 array: int | None = None, wait_held: bool = False) -> Submission:
    """Submit the prepare job (when the stages are not done) and the array of workers."""
    cfg = study.run.slurm
    results_dir = Path(results_dir).resolve()  # jobs may start in another directory
    root = results_dir / study.name
    folder = root / "slurm" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    n = array or cfg.array
    pending = stages_pending(study, expand_study(study, root), root)
    prepare_id, prepare_job, dependency = None, None, None
    if pending:
        ex = _executor(study, folder, name=f"opswap-{study.name}-prepare", tasks=1)
        prepare_job = ex.submit(prepare_task, study, str(results_dir), trial_fn)
        prepare_id = str(prepare_job.job_id)
        log.info(f"{study.name}: {' and '.join(pending)} stage{'s' * (len(pending) > 1)} submitted as job {prepare_id}")
        if cfg.cluster == "slurm":
            dependency = {"dependency": f"afterok:{prepare_id}", "kill-on-invalid-dep": "yes"}
        else:  # the local executor has no dependencies: wait here
            prepare_job.result()
    until = worker_until(cfg)
    ex = _executor(study, folder, name=f"opswap-{study.name}", tasks=_processes(study), extra=dependency)
    jobs = ex.map_array(array_task, [study] * n, [str(results_dir)] * n, [until] * n, [trial_fn] * n,
                        [wait_held] * n)
    sub = Submission(study.name, str(root), cfg.cluster, str(folder), prepare_id, [str(j.job_id) for j in jobs],
                     until, jobs, prepare_job)
    write_json(root / JOBS_FILE, {"study": study.name, "cluster": cfg.cluster, "folder": str(folder),
                                  "submitted": time.time(), "prepare": prepare_id, "jobs": sub.job_ids,
                                  "tasks_per_job": _processes(study), "until_s": until,
                                  "time_min": cfg.time_min})
    log.info(f"{study.name}: job array {sub.array_id} submitted: {n} task{'s' * (n > 1)} × {_processes(study)} "
             f"worker{'s' * (_processes(study) > 1)}, {cfg.time_min} min each (workers plan {until / 60:.0f} min)")
    return sub


def wait_for(submission: Submission, poll: float = 5.0) -> list[WorkerSummary | str]:
    """Wait until every job of the submission has ended; each task's summary, or its error text."""
    out: list[WorkerSummary | str] = []
    for job in submission.jobs:
        try:
            results = job.results()
        except Exception as err:  # a job that failed or was cancelled: its log says why
            out.append(f"job {job.job_id}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            continue
        out.extend(r for r in results if r is not None)
    return out


@dataclass(frozen=True)
class ArrayStatus:
    """A submitted array's jobs by state (submitit's names: RUNNING, PENDING, COMPLETED, ...)."""

    cluster: str
    array_id: str
    prepare: tuple[str, str] | None  # (job id, state)
    states: dict[str, int]
    summaries: tuple[WorkerSummary, ...] = ()  # of the tasks that finished


def _result(folder: Path, job_id: str) -> tuple[str, Any] | None:
    path = folder / f"{job_id}_0_result.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # unreadable (written by another version): the job is over all the same
        return ("error", "unreadable result")


def _state(cluster: str, folder: Path, job_id: str) -> str:
    result = _result(folder, job_id)
    if result is not None:
        return "COMPLETED" if result[0] == "success" else "FAILED"
    if cluster == "local":
        return "RUNNING" if job_id.isdigit() and pid_alive(int(job_id)) else "INTERRUPTED"
    try:
        import submitit

        return str(submitit.SlurmJob(folder=folder, job_id=job_id).state)
    except Exception:  # no sacct here (not a login node), or SLURM forgot the job
        return "UNKNOWN"


def array_status(root: str | Path) -> ArrayStatus | None:
    """The state of the jobs listed in `<root>/slurm/jobs.json`; None when there is none."""
    path = Path(root) / JOBS_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        cluster, folder, ids = info["cluster"], Path(info["folder"]), list(info["jobs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    states: Counter = Counter()
    summaries = []
    for job_id in ids:
        states[_state(cluster, folder, job_id)] += 1
        result = _result(folder, job_id)
        if result is not None and result[0] == "success" and isinstance(result[1], WorkerSummary):
            summaries.append(result[1])
    prepare = (info["prepare"], _state(cluster, folder, info["prepare"])) if info.get("prepare") else None
    return ArrayStatus(cluster, ids[0].split("_")[0] if ids else "", prepare, dict(states), tuple(summaries))
