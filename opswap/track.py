"""Experiment tracking: mirror trial records (docs/records.md) into MLflow or TensorBoard.

Records stay the source of truth, and a sink only copies them. Logging a record again replaces
its copy and never adds a second one. Both libraries are optional: `pip install "opswap[track]"`.

- MLflow: one experiment per study and one run per trial, tagged `opswap.trial_id`. Params are
  the flattened settings (`train.lr`). The per-epoch history becomes metrics with `step=epoch`
  (`train/loss`, `test/acc`, `lr`, ...). The final metrics keep their record names (`test_acc`).
- TensorBoard: one run folder per trial, `<root>/tensorboard/<study>/<trial_id>`, holding the
  same per-epoch scalars and an HParams entry (flattened settings with the final metrics).

Where MLflow runs go when no tracking URI is given: the file store `<root>/mlruns`. MLflow 3.x
keeps that store in maintenance mode and refuses it unless `MLFLOW_ALLOW_FILE_STORE` is true,
so this module sets that variable (unless it is already set) when it uses a `file:` store. The
SQLite store (`sqlite:///.../mlflow.db`) needs SQLAlchemy and Alembic. Those come with the full
`mlflow` package but not with `mlflow-skinny`. The file store works offline with both packages.
Pass `tracking_uri` for a server or a database. To browse the runs you need the full `mlflow`:
`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <root>/mlruns`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Iterable

__all__ = ["SINKS", "FINISHED", "MlflowSink", "TensorBoardSink", "make_sink", "export_records", "flatten",
           "history_tag", "epoch_scalars", "final_metrics"]

SINKS = ("mlflow", "tensorboard")
FINISHED = ("ok", "diverged", "failed")  # records that `export_records` mirrors
_INSTALL = 'pip install "opswap[track]"'
_SPLITS = ("train", "test", "val")
_MLFLOW_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


def _require(module: str, sink: str):
    """Import an optional dependency, or say which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(f"the {sink} sink needs the {package!r} package, which is not installed; "
                          f"install it with: {_INSTALL}") from err


def flatten(settings: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as one level with dotted keys (`train.lr`). An empty dict stays as `{}`."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _number(value: object) -> float | None:
    """A finite int or float as float. Anything else (None, bool, list, text) gives None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def history_tag(key: str) -> str:
    """The scalar name of a history column: `train_loss` → `train/loss`, `lr` → `lr`."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in _SPLITS and rest else key


def epoch_scalars(record: dict) -> list[tuple[int, dict[str, float]]]:
    """(epoch, {scalar name: value}) for each history row. None values are left out."""
    rows = []
    for i, row in enumerate(record.get("history") or []):
        scalars = {history_tag(k): v for k, v in ((k, _number(v)) for k, v in row.items() if k != "epoch")
                   if v is not None}
        rows.append((int(row.get("epoch") or i + 1), scalars))
    return rows


def final_metrics(record: dict) -> dict[str, float]:
    """The record's numeric final metrics. A name that is also an epoch scalar gets `final/`."""
    history = {tag for _, scalars in epoch_scalars(record) for tag in scalars}
    out = {}
    for key, value in (record.get("metrics") or {}).items():
        value = _number(value)
        if value is not None:
            out[f"final/{key}" if key in history else key] = value
    return out


def _epoch_seconds(value: str | None) -> float | None:
    try:
        return _dt.datetime.fromisoformat(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def _walltimes(record: dict) -> tuple[float, list[float], float]:
    """Start time, one time per epoch (start plus the epochs' seconds so far), end time."""
    timing = record.get("timing") or {}
    start = _epoch_seconds(timing.get("started")) or time.time()
    times, t = [], start
    for row in record.get("history") or []:
        t += _number(row.get("seconds")) or 0.0
        times.append(t)
    end = _epoch_seconds(timing.get("finished")) or (times[-1] if times else start)
    return start, times, end


def _file_store(tracking_uri: str) -> Path | None:
    """The folder of a local file-store tracking URI (`file:` or a path); None for anything else."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    return Path(local_file_uri_to_path(tracking_uri)) if is_local_uri(tracking_uri) else None


def _trial_id(record: dict) -> str:
    if not record.get("trial_id"):
        raise ValueError("a trial record needs 'trial_id' to be tracked; see docs/records.md")
    return str(record["trial_id"])


class MlflowSink:
    """Mirror records into MLflow: experiment = study, one run per trial."""

    name = "mlflow"

    def __init__(self, *, root: str | os.PathLike, study: str, tracking_uri: str | None = None):
        mlflow_client = _require("mlflow.tracking", "mlflow")
        self._entities = _require("mlflow.entities", "mlflow")
        self._exceptions = _require("mlflow.exceptions", "mlflow")
        if tracking_uri is None:
            tracking_uri = (Path(root) / "mlruns").resolve().as_uri()
        if _file_store(tracking_uri) is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri, self.study = tracking_uri, study
        store = _file_store(tracking_uri)
        if store is None:
            self.client = mlflow_client.MlflowClient(tracking_uri)
            self.experiment_id = self._find_or_create(study)
            return
        # Runners that start together on one new file store race twice: opening it makes the
        # default experiment (two writers of one meta.yaml: one fails), and each found the study's
        # experiment missing and made one (two experiments of one name; a later lookup saw only
        # one's runs). Both happen under one file lock.
        import filelock

        store.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(store / ".opswap-experiments.lock"):
            self.client = mlflow_client.MlflowClient(tracking_uri)
            self.experiment_id = self._find_or_create(study)

    def _find_or_create(self, name: str) -> str:
        for _ in range(3):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                return found.experiment_id
            try:
                return self.client.create_experiment(name)
            except self._exceptions.MlflowException:
                continue  # made by another runner just now
        raise RuntimeError(f"could not create or find the MLflow experiment {name!r} at {self.tracking_uri}")

    def _runs_of(self, trial_id: str) -> list:
        quoted = trial_id.replace("\\", "\\\\").replace("'", "\\'")
        return self._search(f"tags.`opswap.trial_id` = '{quoted}'")

    def _search(self, where: str = "") -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], where, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def log_record(self, record: dict) -> str:
        """Log one record as a run (or find its identical run) and return the run id."""
        return self._log(record, self._runs_of(_trial_id(record)))

    def log_records(self, records: Iterable[dict]) -> int:
        """Log many records, looking up the experiment's runs once (a file store searches slowly)."""
        known: dict[str, list] = {}
        for run in self._search():
            known.setdefault(run.data.tags.get("opswap.trial_id"), []).append(run)
        count = 0
        for record in records:
            trial_id = _trial_id(record)
            run_id = self._log(record, known.get(trial_id, []))
            known[trial_id] = [self.client.get_run(run_id)]
            count += 1
        return count

    def _log(self, record: dict, runs: list) -> str:
        """Log `record` unless one of its trial's `runs` holds it already; drop the other runs."""
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

        trial_id = _trial_id(record)
        digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
        same = [r for r in runs if r.data.tags.get("opswap.record") == digest]
        if same:  # logged before, unchanged: nothing to do but drop any other copies
            for run in runs:
                if run.info.run_id != same[0].info.run_id:
                    self.client.delete_run(run.info.run_id)
            return same[0].info.run_id

        Metric, Param, RunTag = self._entities.Metric, self._entities.Param, self._entities.RunTag
        env, start, times, end = record.get("env") or {}, *_walltimes(record)
        from opswap._version import __version__

        tags = {"opswap.trial_id": trial_id, "opswap.study": str(record.get("study") or self.study),
                "opswap.status": str(record.get("status")), "opswap.attempt": str(record.get("attempt") or 1),
                "opswap.version": str(env.get("opswap") or __version__), "opswap.device": str(env.get("device"))}
        if record.get("error"):
            tags["opswap.error"] = str(record["error"])[-MAX_TAG_VAL_LENGTH:]
        run = self.client.create_run(self.experiment_id, start_time=int(start * 1000), tags=tags,
                                     run_name=str(record.get("label") or trial_id))
        run_id = run.info.run_id
        params = [Param(re.sub(r"[^\w./\- :]", "_", k)[:MAX_ENTITY_KEY_LENGTH], _text(v)[:MAX_PARAM_VAL_LENGTH])
                  for k, v in flatten(record.get("settings") or {}).items()]
        metrics = [Metric(tag, value, int(t * 1000), epoch)
                   for (epoch, scalars), t in zip(epoch_scalars(record), times) for tag, value in scalars.items()]
        last = max((epoch for epoch, _ in epoch_scalars(record)), default=0)
        metrics += [Metric(k, v, int(end * 1000), last) for k, v in final_metrics(record).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(run_id, _MLFLOW_STATUS.get(record.get("status"), "KILLED"),
                                   end_time=int(end * 1000))
        # Marked complete last: a run left half-logged by a crash has no digest and is replaced.
        self.client.log_batch(run_id, tags=[RunTag("opswap.record", digest)])
        for old in runs:
            self.client.delete_run(old.info.run_id)
        return run_id

    def close(self) -> None:
        """Nothing to flush: every call to `log_record` writes through."""


class TensorBoardSink:
    """Mirror records into TensorBoard run folders `<root>/tensorboard/<study>/<trial_id>`."""

    name = "tensorboard"

    def __init__(self, *, root: str | os.PathLike, study: str):
        _require("tensorboard", "tensorboard")
        self._writer = _require("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self.study, self.log_dir = study, Path(root) / "tensorboard" / study

    def log_record(self, record: dict) -> Path:
        """Write one record's scalars and hparams, replacing what an earlier call wrote."""
        run_dir = self.log_dir / _trial_id(record)
        for old in run_dir.glob("events.out.tfevents.*"):
            old.unlink()
        _, times, _ = _walltimes(record)
        writer = self._writer(log_dir=str(run_dir))
        try:
            rows = epoch_scalars(record)
            for (epoch, scalars), t in zip(rows, times):
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, epoch, walltime=t)
            hparams = {k: v if isinstance(v, (bool, int, float, str)) else _text(v)
                       for k, v in flatten(record.get("settings") or {}).items()}
            hparams.update(trial_id=_trial_id(record), status=str(record.get("status")))
            writer.add_hparams(hparams, final_metrics(record), run_name=".",
                               global_step=max((e for e, _ in rows), default=0))
        finally:
            writer.close()
        return run_dir

    def log_records(self, records: Iterable[dict]) -> int:
        """Log many records; return how many."""
        count = 0
        for record in records:
            self.log_record(record)
            count += 1
        return count

    def close(self) -> None:
        """Nothing to flush: every call to `log_record` closes its writer."""


def make_sink(name: str, *, root: str | os.PathLike, study: str, tracking_uri: str | None = None):
    """A sink by name (one of SINKS), storing under `root` (MLflow: or at `tracking_uri`)."""
    if name == "mlflow":
        return MlflowSink(root=root, study=study, tracking_uri=tracking_uri)
    if name == "tensorboard":
        return TensorBoardSink(root=root, study=study)
    raise ValueError(f"unknown tracking sink {name!r}; allowed: {', '.join(SINKS)}")


def export_records(records: Iterable[dict], to: str, *, root: str | os.PathLike, study: str,
                   tracking_uri: str | None = None) -> int:
    """Mirror the finished records (status in FINISHED) into sink `to`; return how many were logged."""
    sink = make_sink(to, root=root, study=study, tracking_uri=tracking_uri)
    try:
        return sink.log_records(r for r in records if r.get("status") in FINISHED)
    finally:
        sink.close()
