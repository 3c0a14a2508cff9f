"""`opswap status STUDY`: done / running / failed / pending trials, and the time left."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from opswap.cli._common import add_study_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def main(args: argparse.Namespace) -> int:
    from opswap.study.load import load_study
    from opswap.study.stages import study_status

    study = load_study(args.study, args.overrides)
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise ValueError(f"--results {str(results)!r} is a file, not a results folder")
    root = results / study.name
    if root.exists() and not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file, not the study's results folder")
    status = study_status(study, args.results)
    c = status.counts
    extra = "".join(f", {c[k]} {label}" for k, label in (("preempted", "pre-empted (will resume)"),
                                                         ("corrupt", "corrupt (will be re-run)")) if c.get(k))
    print(f"{status.study}: {status.total} trials — {c['done']} done, {c['running']} running, "
          f"{c['failed']} failed, {c['pending']} pending{extra}")
    if not root.is_dir():
        print(f"nothing run yet: {str(root)!r} does not exist")
    if status.mean_seconds is not None:
        eta = "done" if status.eta_seconds == 0 else f"about {_duration(status.eta_seconds)} left"
        print(f"mean trial {_duration(status.mean_seconds)}; {eta}")
    elif c["pending"]:
        print("no finished trial yet: no estimate of the time left")
    if root.is_dir():
        _workers(study, root)
    return 0


def _workers(study, root: Path) -> None:
    """Where trials run now (hosts of live claims) and the SLURM array's jobs, when one was submitted."""
    from opswap.study.expand import expand_study
    from opswap.study.slurm import array_status
    from opswap.study.worker import running_hosts

    hosts = running_hosts(root, expand_study(study, root).trials, study.run.stale_after)
    if hosts:
        print("running on: " + ", ".join(f"{h} ({n})" for h, n in sorted(hosts.items())))
    array = array_status(root)
    if array is None:
        return
    states = ", ".join(f"{n} {s}" for s, n in sorted(array.states.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(array.states.values())
    print(f"{array.cluster} array {array.array_id}: {total} task{'s' * (total != 1)} — {states}"
          + (f"; prepare job {array.prepare[0]} {array.prepare[1]}" if array.prepare else ""))
    if array.summaries:
        ran = sum(s.ran for s in array.summaries)
        reasons = Counter(s.reason for s in array.summaries)
        print(f"finished tasks ran {ran} trial{'s' * (ran != 1)}; exits: "
              + ", ".join(f"{n}× {r}" for r, n in reasons.most_common()))
