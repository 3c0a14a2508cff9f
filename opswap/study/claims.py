"""Trial claims: at most one runner works on a trial, and a crashed runner's trials are taken over.

Safe on shared file systems (NFS, Lustre) without `flock`: only rename and hard-link decide who
wins, never a lock whose semantics differ between file systems (`flock` is node-local on NFS
mounted `nolock` and on Lustre `localflock`, and fails on Lustre `noflock`).

Protocol
--------
A claim is `claims/<id>.claim`: JSON with the owner's pid, host, start time and a random token.
Its modification time is the heartbeat, touched every `stale_after / 4` seconds (at most 10 s).
Every file is written whole to a private temporary file first, so nobody reads half of one.

1. Claim: `os.link(tmp, <id>.claim)`. Like `O_CREAT | O_EXCL`, only one runner's link succeeds.
2. A claim is dead when its owner's pid is gone (same host) or its heartbeat is older than
   `stale_after`.
3. Take over the dead claim with token T: create the marker `<id>.claim.<T>.takeover` with
   `os.link`. The marker's name holds the dead claim's token, so one runner holds it per dead
   claim. The holder reads the claim again. If it is still T and still dead, the holder
   `os.rename`s its own new claim over it. Otherwise it gives up. Then it removes the marker.
   The rename replaces the claim in one step, so `<id>.claim` is never missing during a
   takeover: a runner making a fresh claim cannot slip in, and nothing has to be restored.
   A runner that read T late finds the claim changed and gives up. Tokens are never reused.
4. A runner that dies holding a marker leaves it behind. A marker is itself a claim (pid, host,
   token, mtime). Once it is dead, the next runner creates `<id>.claim.<T>.<M>.takeover`, keyed on
   that marker's token M, and so on (8 levels at most). The winner removes the whole chain.
5. Leftovers of crashed runners are removed whenever a runner wins a claim. That covers markers
   keyed on a token that is no longer the claim (they can never be used again) and temporary
   files older than `stale_after`.

What the shared file system must provide
----------------------------------------
- Atomic `rename` and `link` within one directory, with `link` failing when the name exists.
  NFS may retransmit a LINK whose reply was lost and then report EEXIST for its own link. So
  success is also recognised by the temporary file's link count reaching 2 (the open(2) recipe).
- Close-to-open consistency: opening a file by name shows its latest content and attributes.
  NFSv3 and NFSv4 give this by default (do not mount with `nocto`). Lustre is coherent.
- Heartbeats (mtime updates) visible on other hosts well within `stale_after`. NFS attribute
  caching can delay them by up to `acregmax` (60 s by default), so keep `stale_after` above
  that (the default is 120 s) or mount with a smaller `actimeo`.
- Roughly synchronised clocks (NTP): a heartbeat set by the NFS server or a Lustre client is
  compared with the reader's `time.time()`. Clock skew must stay well below `stale_after`.
- Like any lease, this assumes an owner judged dead does not come back. A runner paused (SIGSTOP,
  a hung mount) for longer than `stale_after` can lose its claim. `Claim.beat` then sees a token
  that is not its own and sets `Claim.lost`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Claim", "ClaimInfo", "try_claim", "build_once", "read_claim", "claim_is_live", "pid_alive",
           "write_json_atomic"]

_HOST = socket.gethostname()
_MARKER = ".takeover"
_MAX_DEPTH = 8  # takeover markers of runners that died mid-takeover, one after another
_TOKEN = re.compile(r"[0-9A-Za-z]{1,64}")


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
    token: str = ""  # random, one per claim; empty in claims written before tokens existed


def _parse(raw: bytes, mtime: float) -> ClaimInfo | None:
    try:
        data = json.loads(raw)
        return ClaimInfo(int(data["pid"]), str(data["host"]), float(data["started"]), mtime,
                         str(data.get("token", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _load(path: Path) -> tuple[ClaimInfo | None, str | None]:
    """The claim or marker at `path` and its identity key; (None, None) when there is no file.

    The key is the token, or a hash of the content for unreadable or token-less files. Content
    and mtime come from one open file, so both describe the same inode.
    """
    try:
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            raw = f.read()
    except FileNotFoundError:
        return None, None
    info = _parse(raw, mtime)
    if info is not None and _TOKEN.fullmatch(info.token):
        return info, info.token
    return info, hashlib.sha1(raw).hexdigest()[:16]


def read_claim(path: str | Path) -> ClaimInfo | None:
    """The claim at `path`, or None when there is none (or it is unreadable)."""
    try:
        return _load(Path(path))[0]
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def claim_is_live(info: ClaimInfo | None, stale_after: float) -> bool:
    """Whether a claim still belongs to a working runner."""
    if info is None:
        return False
    if info.host == _HOST and not pid_alive(info.pid):
        return False
    return time.time() - info.heartbeat < stale_after


def _write_private(target: Path, token: str) -> Path:
    """This process's claim for `target`, written whole to a new private file beside it."""
    tmp = target.with_name(f".{target.name}.{_HOST[:32]}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": _HOST, "started": time.time(), "token": token}, f)
    return tmp


def _create(target: Path, token: str) -> bool:
    """Create `target` holding this process's claim, only if it does not exist."""
    tmp = _write_private(target, token)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        # On NFS a retransmitted LINK can fail with EEXIST although the first one succeeded.
        return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def _replace(target: Path, token: str) -> None:
    """Put this process's claim at `target` in one step, over whatever is there."""
    tmp = _write_private(target, token)
    try:
        os.rename(tmp, target)
    except FileNotFoundError:
        # On NFS a retransmitted RENAME can fail although the first one succeeded.
        if _load(target)[1] != token:
            raise
    finally:
        tmp.unlink(missing_ok=True)


def _unlink_own(path: Path, token: str) -> None:
    if _load(path)[1] == token:
        path.unlink(missing_ok=True)


def _sweep(claims_dir: Path, trial_id: str, current: str, stale_after: float) -> None:
    """Remove leftovers of crashed runners for this trial.

    That means markers keyed on a claim token other than `current`, which can never be used
    again, and temporary files older than `stale_after`.
    """
    markers = f"{trial_id}.claim."
    temporary = f".{trial_id}.claim"
    now = time.time()
    try:
        entries = list(os.scandir(claims_dir))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        try:
            if name.startswith(markers) and name.endswith(_MARKER):
                if name[len(markers):].split(".", 1)[0] != current:
                    os.unlink(entry.path)
            elif name.startswith(temporary) and now - entry.stat().st_mtime > stale_after:
                os.unlink(entry.path)
        except OSError:
            pass  # removed by another runner meanwhile


class Claim:
    """A held claim: touch it with `beat()` (or `start_heartbeat`) and `release()` when done."""

    def __init__(self, path: Path, interval: float, token: str | None = None):
        self.path, self.interval, self.token = Path(path), interval, token
        self.lost = False  # set when the claim file turns out to be another runner's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _is_mine(self, info: ClaimInfo | None) -> bool:
        if info is None:
            return False
        if self.token is not None:
            return info.token == self.token
        return info.pid == os.getpid() and info.host == _HOST

    def beat(self) -> None:
        """Touch the claim so other runners see it is alive (only while it is still ours)."""
        try:
            with open(self.path, "rb") as f:
                if not self._is_mine(_parse(f.read(), 0.0)):
                    self.lost = True
                    return
                # Touch the very file just checked, not whatever the name points to by now.
                os.utime(f.fileno() if os.utime in os.supports_fd else self.path)
        except FileNotFoundError:
            self.lost = True
        except OSError:
            pass  # a hiccup of the file system; the next beat tries again

    def start_heartbeat(self) -> "Claim":
        """Touch the claim every `interval` seconds from a daemon thread."""
        def loop():
            while not self._stop.wait(self.interval) and not self.lost:
                self.beat()

        self._thread = threading.Thread(target=loop, name="opswap-claim-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._is_mine(read_claim(self.path)):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self.start_heartbeat()

    def __exit__(self, *exc) -> None:
        self.release()


def _take_over(claims_dir: Path, trial_id: str, path: Path, dead_key: str, stale_after: float) -> str | None:
    """Replace the dead claim `dead_key` at `path` with one of ours.

    Returns our token on success. Returns "" when the claim changed meanwhile (look again), and
    None when another live runner is taking it over.
    """
    name, dead_markers, held = f"{trial_id}.claim.{dead_key}", [], None
    for _ in range(2 * _MAX_DEPTH):
        marker, token = claims_dir / f"{name}{_MARKER}", secrets.token_hex(8)
        if _create(marker, token):
            held = (marker, token)
            break
        info, key = _load(marker)
        if key is None:
            continue  # its holder finished or gave up just now: try this level again
        if claim_is_live(info, stale_after) or len(dead_markers) >= _MAX_DEPTH:
            return None
        dead_markers.append(marker)  # its holder died mid-takeover: take over from it
        name = f"{name}.{key[:8]}"
    if held is None:
        return None
    try:
        info, key = _load(path)
        if key != dead_key or claim_is_live(info, stale_after):
            return ""  # released, taken over by someone else, or alive after all
        token = secrets.token_hex(8)
        _replace(path, token)
        return token
    finally:
        _unlink_own(*held)
        for marker in dead_markers:
            marker.unlink(missing_ok=True)


def try_claim(claims_dir: str | Path, trial_id: str, *, stale_after: float = 120.0) -> Claim | None:
    """Claim a trial for this process; None when a live runner holds it (or is taking it over)."""
    claims_dir = Path(claims_dir)
    claims_dir.mkdir(parents=True, exist_ok=True)
    path = claims_dir / f"{trial_id}.claim"
    interval = max(0.05, min(10.0, stale_after / 4))
    for _ in range(4):  # each round ends in a claim, a live owner, or a change made by someone else
        token = secrets.token_hex(8)
        if not _create(path, token):
            info, key = _load(path)
            if key is None:
                continue  # released just now
            if claim_is_live(info, stale_after):
                return None
            token = _take_over(claims_dir, trial_id, path, key, stale_after)
            if token is None:
                return None
            if not token:
                continue
        _sweep(claims_dir, trial_id, token, stale_after)
        return Claim(path, interval, token)
    return None


def build_once(claims_dir: str | Path, name: str, current, build, *, stale_after: float, doing: str,
               poll: float = 2.0) -> None:
    """Make `current()` true: one runner calls `build()` under the claim `name`, the others wait.

    A runner asked to stop (`opswap.run.stop`) while another one builds does not wait: it raises
    RuntimeError ("stopped (SIGTERM) while another runner <doing>"), and the next worker goes on.
    """
    from opswap.run.stop import stop_reason, stop_requested

    while not current():
        claim = try_claim(claims_dir, name, stale_after=stale_after)
        if claim is None:
            if stop_requested():
                raise RuntimeError(f"stopped ({stop_reason()}) while another runner {doing}")
            time.sleep(poll)
            continue
        with claim:
            if not current():
                build()
