"""Trial records (schema 1, docs/records.md): building, atomic writing, reading, environment.

One JSON file per run, written to a temporary file in the same directory and renamed, so a
reader never sees half a record and a crashed writer leaves no record behind.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import tempfile
from pathlib import Path

import torch

SCHEMA = 1
STATUSES = ("ok", "failed", "diverged")


def environment(device: str | torch.device | None = None) -> dict:
    """Versions, device and host of the current process."""
    from opswap import __version__

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"opswap": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "hostname": socket.gethostname()}


def now() -> str:
    """The current UTC time, ISO 8601 with offset."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_record(settings: dict, *, trial_id: str, study: str, attempt: int = 1, device=None) -> dict:
    """An empty record for a run about to start (status `failed` until it finishes)."""
    return {"schema": SCHEMA, "trial_id": trial_id, "study": study, "status": "failed", "error": None,
            "attempt": attempt, "settings": settings, "history": [], "metrics": {},
            "env": environment(device), "timing": {"started": now(), "finished": None, "seconds": None}}


def json_safe(value):
    """JSON-safe copy: NaN/Inf become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_record(record: dict, out_dir: str | os.PathLike) -> Path:
    """Write `record` to `out_dir/<trial_id>.json` atomically and return the path."""
    for key in ("trial_id", "status", "settings"):
        if key not in record:
            raise ValueError(f"a trial record needs {key!r}; see docs/records.md")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {record['status']!r} is invalid; allowed: {', '.join(STATUSES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['trial_id']}.json"
    text = json.dumps(json_safe(record), indent=1, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{record['trial_id']}.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_record(path: str | os.PathLike) -> dict:
    """Read one record, checking its schema."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a JSON trial record: {err}") from err
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: unsupported record schema {found!r}; this opswap reads schema {SCHEMA}")
    return record
