"""Trial records (schema 1, docs/records.md): the one module that builds, writes, reads and classifies them.

One JSON file per run, `<results>/<trial_id>.json`, written once and atomically
(`opswap.atomic`), so a reader never sees half a record and a crashed writer leaves none. The
trial (`opswap.run.trial`), the study runner, `opswap train`, the analysis and the benchmarks
all go through here.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import platform
import socket
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

from opswap.atomic import write_json

__all__ = ["SCHEMA", "STATUSES", "DONE", "Status", "RecordSchemaError", "new_record", "failed_record", "write_record",
           "read_record", "load_record", "record_path", "record_state", "read_records", "record_files",
           "environment", "git_commit", "json_safe", "now", "CORRUPT"]

SCHEMA = 1
Status = Literal["ok", "failed", "diverged", "preempted"]
STATUSES: tuple[str, ...] = get_args(Status)
# A trial whose record has one of these is finished and never runs again.
DONE = ("ok", "diverged")


class _Corrupt:
    """Marks a record file that exists but cannot be read (it will be re-run)."""

    def __repr__(self) -> str:
        return "CORRUPT"


CORRUPT = _Corrupt()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The git commit of the opswap source tree, `<sha>+dirty` when modified, or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else (sha or "unknown")


def environment(device: Any = None) -> dict:
    """Versions, git commit, device and host of the current process."""
    import torch

    from opswap._version import __version__

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine() or "cpu")
    return {"opswap": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "cuda": torch.version.cuda, "hostname": socket.gethostname()}


def now() -> str:
    """The current UTC time, ISO 8601 with offset."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_record(settings: dict, *, trial_id: str, study: str, attempt: int = 1, device=None,
               env: dict | None = None) -> dict:
    """An empty record for a run about to start (status `failed` until it finishes)."""
    return {"schema": SCHEMA, "trial_id": trial_id, "study": study, "status": "failed", "error": None,
            "attempt": attempt, "settings": settings, "history": [], "metrics": {},
            "env": env if env is not None else environment(device),
            "timing": {"started": now(), "finished": None, "seconds": None}}


def failed_record(settings: dict, *, trial_id: str, study: str, error: str, attempt: int = 1,
                  started: str | None = None, seconds: float | None = None) -> dict:
    """The record of a run that could not even produce its own (its process died or raised)."""
    record = new_record(settings, trial_id=trial_id, study=study, attempt=attempt,
                        env={"opswap_git_commit": git_commit(), "python": platform.python_version(),
                             "hostname": socket.gethostname()})
    record["error"] = error
    record["timing"] = {"started": started or now(), "finished": now(), "seconds": seconds}
    return record


def json_safe(value):
    """JSON-safe copy: NaN/Inf become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) and getattr(value, "ndim", 0):
        return json_safe(value.tolist())  # tensors and arrays
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy and torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def record_path(out_dir: str | os.PathLike, trial_id: str) -> Path:
    """Where a trial's record lives."""
    return Path(out_dir) / f"{trial_id}.json"


def write_record(record: dict, out_dir: str | os.PathLike) -> Path:
    """Write `record` to `out_dir/<trial_id>.json` atomically and return the path."""
    for key in ("trial_id", "status", "settings"):
        if key not in record:
            raise ValueError(f"a trial record needs {key!r}; see docs/records.md")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {record['status']!r} is invalid; allowed: {', '.join(STATUSES)}")
    return write_json(record_path(out_dir, record["trial_id"]), json_safe(record))


def read_record(path: str | os.PathLike) -> dict:
    """Read one record, checking that it is one; ValueError naming the file when not."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON trial record: {err}") from err
    if isinstance(record, dict) and record.get("schema", SCHEMA) != SCHEMA:
        raise RecordSchemaError(f"{path} was written by another opswap version (record schema "
                                f"{record.get('schema')!r}; this one reads schema {SCHEMA}): use that version, or "
                                "move the record away; it is not run again over it")
    if not isinstance(record, dict) or "trial_id" not in record or "settings" not in record:
        raise ValueError(f"{path} is not a trial record (no trial_id / settings)")
    for key, types in _SHAPES.items():
        if key in record and not isinstance(record[key], types):
            raise ValueError(f"{path} is not a trial record: {key!r} is a {type(record[key]).__name__}")
    if isinstance(record.get("attempt"), bool):
        raise ValueError(f"{path} is not a trial record: 'attempt' is a bool")
    return record


class RecordSchemaError(ValueError):
    """A record of another schema: a newer opswap's result, never taken for a corrupt file and re-run."""


# The types of a record's top-level keys (null allowed where a failed or pending record has none).
_SHAPES = {"trial_id": str, "status": str, "settings": dict, "metrics": (dict, type(None)),
           "history": (list, type(None)), "attempt": (int, type(None)), "timing": (dict, type(None)),
           "env": (dict, type(None)), "error": (str, type(None))}


def load_record(out_dir: str | os.PathLike, trial_id: str):
    """A trial's record; None when there is none, `CORRUPT` when the file cannot be read as one."""
    path = record_path(out_dir, trial_id)
    try:
        record = read_record(path)
    except FileNotFoundError:
        return None
    except RecordSchemaError:
        raise  # another version's result: stop rather than run the trial again over it
    except (OSError, ValueError):
        return CORRUPT
    return record if record.get("trial_id") == trial_id else CORRUPT


def record_state(record, *, retries: int = 1) -> str:
    """What a record (from `load_record`) says: done, failed (no retries left), retry, preempted,
    corrupt or pending (no record)."""
    if record is None:
        return "pending"
    if record is CORRUPT:
        return "corrupt"
    status = record.get("status")
    if status in DONE:
        return "done"
    if status == "preempted":
        return "preempted"
    return "failed" if int(record.get("attempt") or 1) > retries else "retry"


def _side_file(name: str) -> bool:
    """JSON beside the records that is not one: an assemble study's plan, a bank's cost table."""
    return name == "assembly.json" or name.endswith(".costs.json")


def record_files(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """The record files of a results directory (not its subfolders), a file, or a list of them."""
    if not isinstance(path, (str, Path)):
        return [f for p in path for f in record_files(p)]
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"results path {str(path)!r} does not exist: give a results directory "
            "(results/<study>/) or a trial record (.json)")
    files = sorted(p for p in path.glob("*.json") if not p.name.startswith(".") and not _side_file(p.name))
    if not files and not any((path / d).is_dir() for d in ("claims", "logs", "teacher")):
        studies = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.glob("*.json")))
        if studies:
            raise ValueError(f"{str(path)!r} holds no trial records but folders of studies that do "
                             f"({', '.join(studies[:6])}{' …' if len(studies) > 6 else ''}): give one of them, "
                             f"e.g. {str(path / studies[0])!r}")
    return files


def read_records(path: str | Path | Iterable[str | Path]) -> list[dict]:
    """Every readable record under `path`; other files are skipped with a warning naming them."""
    records = []
    for file in record_files(path):
        try:
            record = read_record(file)
        except RecordSchemaError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
            continue
        except (OSError, ValueError) as err:
            why = str(err).removeprefix(f"{file} ").removeprefix(f"{file}: ")
            warnings.warn(f"skipping {file}: corrupt trial record, a study run re-runs it ({why})", stacklevel=2)
            continue
        record["_file"] = str(file)
        records.append(record)
    return records
