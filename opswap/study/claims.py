"""Trial claims: at most one runner works on a trial, and a crashed runner's trials are taken over.

A claim is a file `claims/<trial_id>.claim` created atomically (written whole, then hard-linked:
like `O_CREAT | O_EXCL`, the link fails when the claim exists) holding the owner's pid, host and
start time; its modification time is the heartbeat, touched while the
trial runs. A claim whose owner is gone (same host, pid not alive) or whose heartbeat is older
than `stale_after` seconds is taken over under a short takeover lock, so two runners never both
take over the same claim.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Claim", "ClaimInfo", "try_claim", "read_claim", "claim_is_live", "write_json_atomic"]

_HOST = socket.gethostname()


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says about its owner, and its last heartbeat (epoch seconds)."""

    pid: int
    host: str
    started: float
    heartbeat: float


def read_claim(path: str | Path) -> ClaimInfo | None:
    """The claim at `path`, or None when there is none (or it is half-written)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return ClaimInfo(int(data["pid"]), str(data["host"]), float(data["started"]), os.path.getmtime(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_is_live(info: ClaimInfo | None, stale_after: float) -> bool:
    """Whether a claim still belongs to a working runner."""
    if info is None:
        return False
    if info.host == _HOST and not _pid_alive(info.pid):
        return False
    return time.time() - info.heartbeat < stale_after


def _create(path: Path) -> bool:
    """Create `path` with this process's claim, atomically and only if it does not exist."""
    # Written in full to a private file, then hard-linked: readers never see a half-written claim.
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": _HOST, "started": time.time()}, f)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


class Claim:
    """A held claim: touch it with `beat()` (or `start_heartbeat`) and `release()` when done."""

    def __init__(self, path: Path, interval: float):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Touch the claim so other runners see it is alive."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def start_heartbeat(self) -> "Claim":
        """Touch the claim every `interval` seconds from a daemon thread."""
        def loop():
            while not self._stop.wait(self.interval):
                self.beat()

        self._thread = threading.Thread(target=loop, name="opswap-claim-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the claim."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        info = read_claim(self.path)
        if info is not None and info.pid == os.getpid() and info.host == _HOST:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self.start_heartbeat()

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(claims_dir: str | Path, trial_id: str, *, stale_after: float = 120.0) -> Claim | None:
    """Claim a trial for this process; None when a live runner holds it."""
    claims_dir = Path(claims_dir)
    claims_dir.mkdir(parents=True, exist_ok=True)
    path = claims_dir / f"{trial_id}.claim"
    interval = max(0.05, min(10.0, stale_after / 4))
    if _create(path):
        return Claim(path, interval)
    if claim_is_live(read_claim(path), stale_after):
        return None
    # Take over a dead claim under an exclusive flock, so exactly one runner does it; the kernel
    # releases the lock if its holder dies, so a crash mid-takeover cannot let two runners in.
    with open(claims_dir / f"{trial_id}.takeover", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another runner is taking it over right now
        if claim_is_live(read_claim(path), stale_after):
            return None
        path.unlink(missing_ok=True)
        return Claim(path, interval) if _create(path) else None
