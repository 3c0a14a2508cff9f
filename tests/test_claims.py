"""Trial claims without flock: exclusive takeover under races, crashes mid-takeover, no leftovers."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from opswap.study import claims
from opswap.study.claims import Claim, read_claim, try_claim

HOST = socket.gethostname()
CLAIMS_PY = Path(claims.__file__)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (on this host)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def write(path: Path, *, pid: int, host: str = HOST, token: str | None = "0123456789abcdef", age: float = 0.0):
    data = {"pid": pid, "host": host, "started": 1.0}
    if token is not None:
        data["token"] = token
    path.write_text(json.dumps(data))
    if age:
        old = time.time() - age
        os.utime(path, (old, old))


def leftovers(claims_dir: Path) -> list[str]:
    """Takeover markers and temporary files: anything but the claims themselves."""
    return sorted(p.name for p in claims_dir.iterdir() if not p.name.endswith(".claim"))


# -- processes racing ---------------------------------------------------------------------------

_RACER = textwrap.dedent("""
    import importlib.util, json, os, sys, time
    spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
    claims = sys.modules["claims"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)  # claims.py alone: no torch, quick to start
    root, me, n, rounds, noflock = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    if noflock == "1":  # a file system where flock does nothing
        import fcntl
        fcntl.flock = fcntl.lockf = lambda *a, **k: None

    def barrier(name):
        open(os.path.join(root, f"{name}-{me}"), "w").close()
        deadline = time.time() + 30
        while sum(f.startswith(name + "-") for f in os.listdir(root)) < n and time.time() < deadline:
            time.sleep(0.0005)

    won = {}
    for r in range(rounds):
        barrier(f"ready{r}")
        claim = claims.try_claim(os.path.join(root, "claims"), f"trial{r}", stale_after=30)
        if claim is not None:
            won[r] = claim.token  # held (this process lives on) while the others try
    barrier("done")
    print(json.dumps(won))
""")


@pytest.mark.parametrize("noflock", [False, True], ids=["posix", "flock-is-a-no-op"])
def test_processes_racing_for_a_dead_claim_have_one_winner(tmp_path, dead_pid, noflock):
    n, rounds = 6, 4
    cdir = tmp_path / "claims"
    cdir.mkdir()
    for r in range(rounds):
        path = cdir / f"trial{r}.claim"
        if r % 2 == 0:  # owner's pid gone on this host
            write(path, pid=dead_pid, token=f"{r:016x}")
        else:  # another host, heartbeat stale; written before claims had tokens
            write(path, pid=1, host="gone-host", token=None, age=100)
    # Round 2: a runner also crashed mid-takeover, leaving its marker behind.
    write(cdir / f"trial2.claim.{2:016x}.takeover", pid=dead_pid, token="feedfacefeedface")

    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(CLAIMS_PY), str(tmp_path), str(i), str(n),
                               str(rounds), "1" if noflock else "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append({int(k): v for k, v in json.loads(out).items()})
    for r in range(rounds):
        winners = [won[r] for won in results if r in won]
        assert len(winners) == 1, f"round {r}: {len(winners)} winners"
        assert read_claim(cdir / f"trial{r}.claim").token == winners[0]  # the claim is the winner's
    assert leftovers(cdir) == []


def test_threads_racing_with_flock_a_no_op_have_one_winner(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", lambda *a, **k: None)
    write(tmp_path / "race.claim", pid=1, host="gone-host", age=100)
    wins, barrier = [], threading.Barrier(8)

    def contend():
        barrier.wait()
        claim = try_claim(tmp_path, "race", stale_after=10)
        if claim is not None:
            wins.append(claim)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(wins) == 1 and read_claim(tmp_path / "race.claim").token == wins[0].token
    assert leftovers(tmp_path) == []


# -- live and dead claims -----------------------------------------------------------------------

def test_a_live_claim_is_never_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        write(tmp_path / "a.claim", pid=holder.pid)  # another live process on this host
        write(tmp_path / "b.claim", pid=1, host="other-host", age=5)  # another host, fresh heartbeat
        for _ in range(3):
            assert try_claim(tmp_path, "a", stale_after=30) is None
            assert try_claim(tmp_path, "b", stale_after=30) is None
        assert read_claim(tmp_path / "a.claim").pid == holder.pid
        assert read_claim(tmp_path / "b.claim").host == "other-host"
        assert leftovers(tmp_path) == []
    finally:
        holder.communicate(b"")
    assert try_claim(tmp_path, "a", stale_after=30) is not None  # its owner has gone now


def test_a_dead_claim_is_taken_over_and_gets_a_new_token(tmp_path, dead_pid):
    write(tmp_path / "pid.claim", pid=dead_pid)
    write(tmp_path / "stale.claim", pid=1, host="other-host", age=100)
    for trial in ("pid", "stale"):
        claim = try_claim(tmp_path, trial, stale_after=30)
        info = read_claim(tmp_path / f"{trial}.claim")
        assert claim is not None and (info.pid, info.host, info.token) == (os.getpid(), HOST, claim.token)
        assert len(claim.token) == 16 and claim.token != "0123456789abcdef"
        assert try_claim(tmp_path, trial, stale_after=30) is None  # ours now, and live
        claim.release()
        assert not (tmp_path / f"{trial}.claim").exists()
    assert leftovers(tmp_path) == []


def test_an_unreadable_claim_is_taken_over(tmp_path):
    (tmp_path / "junk.claim").write_text("{not json")
    claim = try_claim(tmp_path, "junk")
    assert claim is not None and read_claim(tmp_path / "junk.claim").token == claim.token


def test_a_slow_runner_does_not_take_over_the_new_live_claim(tmp_path, dead_pid, monkeypatch):
    """B reads the dead claim; before B acts, C takes it over. B must leave C's claim alone."""
    write(tmp_path / "t.claim", pid=dead_pid)
    real, taken = claims.claim_is_live, []

    def live_then_c_takes_over(info, stale_after):
        result = real(info, stale_after)
        if not taken:  # B has just judged the old claim dead; now C runs in full
            taken.append(None)
            taken[0] = try_claim(tmp_path, "t", stale_after=30)
        return result

    monkeypatch.setattr(claims, "claim_is_live", live_then_c_takes_over)
    assert try_claim(tmp_path, "t", stale_after=30) is None  # B
    c = taken[0]
    assert c is not None and read_claim(tmp_path / "t.claim").token == c.token
    assert leftovers(tmp_path) == []


def test_a_runner_taking_over_right_now_is_left_alone(tmp_path, dead_pid):
    write(tmp_path / "t.claim", pid=dead_pid, token="aaaaaaaaaaaaaaaa")
    write(tmp_path / "t.claim.aaaaaaaaaaaaaaaa.takeover", pid=os.getpid(), token="bbbbbbbbbbbbbbbb")  # live
    assert try_claim(tmp_path, "t", stale_after=30) is None
    assert read_claim(tmp_path / "t.claim").token == "aaaaaaaaaaaaaaaa"


# -- crashes and leftovers ----------------------------------------------------------------------

def test_a_runner_that_died_mid_takeover_does_not_block_others(tmp_path, dead_pid):
    """Two runners died one after another holding takeover markers; the third takes over."""
    write(tmp_path / "t.claim", pid=dead_pid, token="aaaaaaaaaaaaaaaa")
    write(tmp_path / "t.claim.aaaaaaaaaaaaaaaa.takeover", pid=dead_pid, token="bbbbbbbbbbbbbbbb")
    write(tmp_path / "t.claim.aaaaaaaaaaaaaaaa.bbbbbbbb.takeover", pid=1, host="other-host", age=100,
          token="cccccccccccccccc")
    claim = try_claim(tmp_path, "t", stale_after=30)
    assert claim is not None and read_claim(tmp_path / "t.claim").token == claim.token
    assert leftovers(tmp_path) == []


def test_leftovers_of_crashed_runners_are_removed(tmp_path, dead_pid):
    """A runner died after replacing the claim but before removing its marker and temporary files."""
    write(tmp_path / "t.claim", pid=dead_pid, token="dddddddddddddddd")  # its new claim, now dead
    write(tmp_path / "t.claim.aaaaaaaaaaaaaaaa.takeover", pid=dead_pid)  # marker for the claim before
    write(tmp_path / f".t.claim.{HOST}.{dead_pid}.0badf00d", pid=dead_pid, age=100)  # old temporary file
    write(tmp_path / "u.claim.aaaaaaaaaaaaaaaa.takeover", pid=dead_pid)  # another trial's: not ours to judge
    fresh = tmp_path / f".t.claim.{HOST}.{os.getpid()}.feedf00d"
    write(fresh, pid=os.getpid())  # a temporary file being written right now: kept
    claim = try_claim(tmp_path, "t", stale_after=30)
    assert claim is not None
    assert leftovers(tmp_path) == sorted([fresh.name, "u.claim.aaaaaaaaaaaaaaaa.takeover"])


def test_a_link_retransmitted_over_nfs_still_counts(tmp_path, monkeypatch):
    """NFS may report EEXIST for a LINK that succeeded (its first reply was lost)."""
    real = os.link

    def link_then_eexist(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        raise FileExistsError(17, "File exists", str(dst))

    monkeypatch.setattr(os, "link", link_then_eexist)
    claim = try_claim(tmp_path, "t")
    assert claim is not None and read_claim(tmp_path / "t.claim").token == claim.token


# -- holding a claim ----------------------------------------------------------------------------

def test_a_claim_taken_from_a_paused_runner_is_noticed_and_left_alone(tmp_path):
    claim = try_claim(tmp_path, "t")
    write(tmp_path / "t.claim", pid=os.getpid(), token="eeeeeeeeeeeeeeee", age=50)  # someone else's now
    claim.beat()
    assert claim.lost
    assert time.time() - os.path.getmtime(tmp_path / "t.claim") > 40  # not kept alive by us
    claim.release()
    assert read_claim(tmp_path / "t.claim").token == "eeeeeeeeeeeeeeee"  # not removed by us


def test_a_claim_without_token_still_works(tmp_path):
    """`Claim(path, interval)` as built before tokens: ownership by pid and host."""
    write(tmp_path / "t.claim", pid=os.getpid(), token=None)
    claim = Claim(tmp_path / "t.claim", 0.1)
    claim.beat()
    assert not claim.lost
    claim.release()
    assert not (tmp_path / "t.claim").exists()
