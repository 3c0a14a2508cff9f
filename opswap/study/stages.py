"""Running a study in stages — teacher → distillation bank → cheap features (assemble studies: costs
and picks, `opswap.study.assembly`) → trials → summary.

Each stage is idempotent, in the manner of pycls/NASLib: the teacher is a trial (skipped when its
record and weights exist), the LANA weight bank is rebuilt only when its inputs change, trials
already done never run again, and the summary is re-read from the records. The report is the
caller's last stage (`opswap.report.write_report`, from what `report_inputs` gives it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opswap.atomic import atomic_path, write_text
from opswap.run.record import load_record, record_path
from opswap.study.assembly import bank_pairs, check_budgets, load_plan, plan_trial_fn, prepare_plan
from opswap.study.claims import build_once
from opswap.study.execute import RunSummary, TrialFn, resolve_devices, run_trials, trial_state
from opswap.study.schema import Study
from opswap.study.expand import Expansion, Trial, expand_study, teacher_spec
from opswap.study.features import feature_pairs, features_current, prepare_features
from opswap.study.order import order_trials

__all__ = ["StudyRun", "StudyStatus", "run_study", "study_status", "prepare_teacher", "prepare_bank",
           "Stages", "prepare_stages", "stages_pending", "write_summary", "plan"]

log = logging.getLogger("opswap")


@dataclass(frozen=True)
class StudyRun:
    """What `run_study` did: the expansion, the trials' outcome counts and the files it wrote."""

    study: str
    results_dir: str
    expansion: Expansion
    summary: RunSummary
    teacher: str | None = None
    bank: str | None = None
    summary_csv: str | None = None
    features: str | None = None


@dataclass(frozen=True)
class StudyStatus:
    """Trial counts by state and an estimate of the time left."""

    study: str
    total: int
    counts: dict[str, int]
    mean_seconds: float | None
    eta_seconds: float | None


def _say(msg: str) -> None:
    log.info(msg)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _teacher_trial(study: Study) -> Trial:
    spec = teacher_spec(study)
    return Trial(spec.trial_id, spec, f"teacher {study.model} {study.teacher.epochs} epochs")


def _teacher_done(study: Study, results_dir: Path) -> str | None:
    """The trained teacher's weights when its stage is done (or not needed: ""), else None."""
    if not study.needs_teacher:
        return ""
    if study.teacher.checkpoint is not None:
        return str(Path(study.teacher.checkpoint).expanduser())
    trial = _teacher_trial(study)
    out = results_dir / "teacher"
    weights = out / f"{trial.trial_id}.safetensors"
    record = load_record(out, trial.trial_id)
    ok = isinstance(record, dict) and record.get("status") == "ok"
    return str(weights) if ok and _intact(weights) else None


def _intact(path: Path) -> bool:
    """Whether `path` is a whole safetensors file (its header is read: a cut-off file is not)."""
    from opswap.run.trial import check_safetensors

    try:
        check_safetensors(path, "weights")
    except (ValueError, OSError):
        return False
    return True


def prepare_teacher(study: Study, results_dir: Path, *, trial_fn: TrialFn | None = None,
                    devices: Any = "auto", progress: bool = True) -> str | None:
    """Stage 1: the teacher checkpoint (given, already trained, or trained now as a trial)."""
    done = _teacher_done(study, results_dir)
    if done is not None:
        return done or None
    trial = _teacher_trial(study)
    out = results_dir / "teacher"
    weights = out / f"{trial.trial_id}.safetensors"
    record = load_record(out, trial.trial_id)
    ok = isinstance(record, dict) and record.get("status") == "ok"
    if ok:
        record_path(out, trial.trial_id).unlink()  # weights lost or damaged: train it again
    _say(f"teacher: training {trial.label} ({trial.trial_id})")
    run_trials([trial], study=f"{study.name}-teacher", out_dir=out, trial_fn=trial_fn, workers=1,
               devices=devices, retries=study.run.retries, stale_after=study.run.stale_after,
               progress=progress, retry_failed=True, track=study.run.track, tracking_uri=study.run.tracking_uri,
               track_root=results_dir.parent)
    record = load_record(out, trial.trial_id)
    record = record if isinstance(record, dict) else {}
    if record.get("status") != "ok" or not weights.is_file():
        why = record.get("error") or record.get("status") or "no record"
        raise RuntimeError(f"the teacher of study {study.name!r} did not train ({why}); see "
                           f"{out / 'logs' / (trial.trial_id + '.log')}")
    return str(weights)


def _bank_pairs(study: Study, expansion: Expansion) -> list[tuple[int, str]]:
    """The (position, op) pairs the bank holds: every pair for assemble studies, else those of lana trials."""
    if study.kind == "assemble":
        return bank_pairs(study)
    pairs = {(t.settings["position"], t.settings["op"]) for t in expansion.trials
             if t.settings.get("init") == "lana" and t.settings.get("position") is not None}
    return sorted(pairs)


def prepare_bank(study: Study, expansion: Expansion, teacher: str | None, results_dir: Path, *,
                 device: str | None = None, progress: bool = True) -> str | None:
    """Stage 2: the LANA weight bank of every (position, op) pair the trials need, with scores."""
    pairs = _bank_pairs(study, expansion)
    if teacher is None or not pairs:
        return None
    path, key_file = results_dir / "bank.safetensors", results_dir / "bank.key"
    key = _bank_key(study, pairs, teacher)

    def current() -> bool:
        return _bank_current(results_dir, key)

    build_once(results_dir / "claims", "bank", current,
               lambda: _build_bank(study, pairs, teacher, path, key_file, key, device, progress),
               stale_after=study.run.stale_after, doing="builds the bank")
    return str(path)


def _bank_key(study: Study, pairs: list[tuple[int, str]], teacher: str) -> str:
    return hashlib.sha256(json.dumps({"teacher": _sha256(Path(teacher)), "pairs": pairs, "distill": study.distill,
                                      "dataset": study.dataset, "data": study.data},
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bank_current(results_dir: Path, key: str) -> bool:
    path, key_file = results_dir / "bank.safetensors", results_dir / "bank.key"
    # A bank cut short (a full disk, a copy interrupted) is built again, not handed to the trials.
    return key_file.is_file() and key_file.read_text().strip() == key and _intact(path)


def stages_pending(study: Study, expansion: Expansion, results_dir: Path) -> list[str]:
    """The stages before the trials that still have to run: "teacher", "bank", "features", "plan"."""
    teacher = _teacher_done(study, results_dir)
    pairs = _bank_pairs(study, expansion)
    wants_features = study.predict.features and bool(feature_pairs(expansion))
    wants_plan = study.kind == "assemble"
    if teacher is None:
        return (["teacher"] + (["bank"] if pairs else []) + (["features"] if wants_features else [])
                + (["plan"] if wants_plan else []))
    if not teacher:
        return []
    pending = []
    bank: str | None = None
    if pairs:
        if _bank_current(results_dir, _bank_key(study, pairs, teacher)):
            bank = str(results_dir / "bank.safetensors")
        else:
            pending.append("bank")
    if wants_features and ("bank" in pending or not features_current(study, expansion, teacher, bank, results_dir)):
        pending.append("features")
    if wants_plan and ("bank" in pending or load_plan(study, results_dir) is None):
        pending.append("plan")
    return pending


@dataclass(frozen=True)
class Stages:
    """What the stages before the trials gave: their files, and the trials with their trial function
    (an assemble study's trials are the plan's picks, run by a function that adds its predictions)."""

    teacher: str | None
    bank: str | None
    features: str | None
    plan: str | None
    expansion: Expansion
    trial_fn: TrialFn | None


def prepare_stages(study: Study, expansion: Expansion, results_dir: Path, *, trial_fn: TrialFn | None = None,
                   progress: bool = True) -> Stages:
    """The stages before the trials (teacher, bank, features or the assembly plan), each under its claim."""
    teacher = prepare_teacher(study, results_dir, trial_fn=trial_fn, devices=study.run.devices, progress=progress)
    bank = prepare_bank(study, expansion, teacher, results_dir, progress=progress)
    features = prepare_features(study, expansion, teacher, bank, results_dir)
    plan_file = None
    if study.kind == "assemble":  # costs and picks, then the trials they give
        plan_file = str(prepare_plan(study, teacher, bank, results_dir, device=resolve_devices(study.run.devices)[0],
                                     stale_after=study.run.stale_after))
        expansion, trial_fn = expand_study(study, results_dir), plan_trial_fn(plan_file, trial_fn)
    return Stages(teacher, bank, features, plan_file, expansion, trial_fn)


def _build_bank(study: Study, pairs: list[tuple[int, str]], teacher: str, path: Path, key_file: Path, key: str,
                device: str | None, progress: bool) -> None:
    import torch

    from opswap.data import load_dataset
    from opswap.distill.apply import load_teacher, replace1_accuracy
    from opswap.distill.engine import DistillConfig, distill_bank

    torch.set_num_threads(os.cpu_count() or 1)
    device = device or resolve_devices("auto")[0]
    _say(f"bank: distilling {len(pairs)} (position, op) pairs from the teacher on {device}")
    model = load_teacher(teacher, study.model, study.num_classes)
    data = load_dataset(study.dataset, study.data)
    t0 = time.perf_counter()
    bank = distill_bank(model, data, pairs, DistillConfig(**study.distill), device=device, progress=progress,
                        model_name=study.model)
    replace1_accuracy(model, bank, data, device=device, progress=progress)
    key_file.unlink(missing_ok=True)
    bank.save(path)
    write_text(key_file, key + "\n")
    _say(f"bank: {len(pairs)} pairs in {time.perf_counter() - t0:.0f} s → {path}")


def write_summary(study: Study, expansion: Expansion, results_dir: Path) -> str | None:
    """Stage 4: results/<study>/summary.csv, one row per finished trial of this study."""
    files = [record_path(results_dir, t.trial_id) for t in expansion.trials]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    from opswap.analysis.results import load_results

    path = results_dir / "summary.csv"
    frame = load_results(files)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return str(path)


def run_study(study: Study, *, results_dir: str | Path = "results", trial_fn: TrialFn | None = None,
              workers: int | str | None = None, backend: str | None = None, address: str | None = None,
              retry_failed: bool = False, progress: bool = True) -> StudyRun:
    """Run every stage of a study; finished work is never redone."""
    run = study.run
    run = run.model_copy(update={"workers": workers or run.workers, "backend": backend or run.backend,
                                 "address": address or run.address})
    if run.backend == "slurm":
        raise ValueError("backend slurm submits a job array of workers; use opswap.study.slurm.submit_study "
                         "(`opswap run --backend slurm`), or run this study with backend loky or dask")
    check_budgets(study)  # an assemble budget out of reach, before the teacher is trained
    if run.backend == "loky" or (run.backend == "dask" and not run.address):  # the trials run here
        _check_local_devices(run.devices)
    root = Path(results_dir) / study.name
    expansion = expand_study(study, root)
    _say(plan(study, expansion, root, run.retries))
    root.mkdir(parents=True, exist_ok=True)
    try:
        stages = prepare_stages(study, expansion, root, trial_fn=trial_fn, progress=progress)
        teacher, bank, features, trial_fn = stages.teacher, stages.bank, stages.features, stages.trial_fn
        if stages.expansion is not expansion:  # an assemble study: its trials are the plan's picks
            expansion = stages.expansion
            _say(plan(study, expansion, root, run.retries))
        summary = run_trials(order_trials(study, expansion, root), study=study.name, out_dir=root, trial_fn=trial_fn,
                             workers=run.workers, backend=run.backend, address=run.address, devices=run.devices,
                             retries=run.retries, retry_failed=retry_failed, stale_after=run.stale_after,
                             teacher=teacher, bank=bank, progress=progress, trials_per_device=run.trials_per_device,
                             track=run.track, tracking_uri=run.tracking_uri, track_root=Path(results_dir))
    except KeyboardInterrupt as err:
        _say(f"\n{study.name}: interrupted; what finished (trials, a trained teacher or bank) is kept, "
             "run the same command again to finish the rest")
        err.explained = True  # the command line adds nothing
        raise
    csv = write_summary(study, expansion, root)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    states = [trial_state(root, t.trial_id, retries=run.retries, stale_after=run.stale_after)
              for t in expansion.trials]  # the whole study, with what earlier runs finished
    failed = states.count("failed")
    _say(f"{study.name}: {states.count('done')} of {len(states)} trials done"
         + (f", {failed} failed" if failed else "") + (f" (this run: {counts})" if counts else " (nothing left to run)")
         + f"; records in {root}"
         + (f", summary {csv}" if csv else ""))
    return StudyRun(study.name, str(root), expansion, summary, teacher, bank, csv, features)


def _check_local_devices(devices) -> None:
    """Refuse devices this machine lacks before anything runs (every trial would fail on them).

    A study is checked at load without this: it may be loaded on a login node without the GPUs
    its SLURM jobs or dask workers get."""
    from opswap.training import resolve_device

    for device in resolve_devices(devices):
        try:
            resolve_device(device)
        except ValueError as err:
            raise ValueError(f"run.devices: {err}; nothing was run") from None


def _slurm_processes(study: Study) -> int:
    """Worker processes of one array task: one per GPU slot (or one without GPUs)."""
    return max(1, study.run.slurm.gpus_per_task) * study.run.trials_per_device


def plan(study: Study, expansion: Expansion, root: Path, retries: int) -> str:
    states = [trial_state(root, t.trial_id, retries=retries, stale_after=study.run.stale_after)
              for t in expansion.trials]
    done, running, failed = states.count("done"), states.count("running"), states.count("failed")
    corrupt = states.count("corrupt")
    lines = [f"study {study.name} ({study.path}): {len(expansion.trials)} trials, {done} already done, "
             f"{running} running elsewhere, {failed} failed (no retries left), "
             f"{len(expansion.trials) - done - running - failed} to run"
             + (f" ({corrupt} of them with a corrupt record, which will be re-run)" if corrupt else "")]
    lines += [f"  skipped: position {s.position} × {s.op}: {s.reason}" for s in expansion.skipped]
    return "\n".join(lines)


def study_status(study: Study, results_dir: str | Path = "results") -> StudyStatus:
    """Counts of done / running / failed / pending trials and an estimate of the time left."""
    root = Path(results_dir) / study.name
    expansion = expand_study(study, root)
    counts = {"done": 0, "running": 0, "failed": 0, "pending": 0, "preempted": 0, "corrupt": 0}
    seconds = []
    for t in expansion.trials:
        state = trial_state(root, t.trial_id, retries=study.run.retries, stale_after=study.run.stale_after)
        counts["pending" if state == "retry" else state] += 1
        record = load_record(root, t.trial_id) if state == "done" else None
        if isinstance(record, dict) and (record.get("timing") or {}).get("seconds") is not None:
            seconds.append(float(record["timing"]["seconds"]))
    mean = sum(seconds) / len(seconds) if seconds else None
    slots = resolve_devices(study.run.devices)
    workers = study.run.workers if study.run.workers != "auto" else \
        (len(slots) * study.run.trials_per_device if slots[0] != "cpu" else max(1, (os.cpu_count() or 1) // 4))
    if study.run.backend == "slurm":  # the array's workers: tasks × worker processes per task
        workers = min(study.run.slurm.array, study.run.slurm.parallel or study.run.slurm.array) * _slurm_processes(study)
    left = counts["pending"] + counts["preempted"] + counts["corrupt"] + counts["running"] * 0.5
    eta = mean * left / max(1, int(workers)) if mean is not None else None
    return StudyStatus(study.name, len(expansion.trials), counts, mean, eta)
