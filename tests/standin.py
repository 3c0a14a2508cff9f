"""A stand-in trial function for the worker, SLURM and tracking tests: sleeps in small steps,
polls `stop_requested()` like the training engine will, checkpoints and resumes, and logs every
start, end and pre-emption (with device, time and pid) to `<results>/ran.log`."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from opswap.run import stop

STEP = 0.05  # seconds per "optimiser step"


def event(out_dir: Path, trial_id: str, what: str, device, step: int = 0) -> None:
    line = f"{trial_id} {what} {device} {time.time():.4f} {os.getpid()} {step}\n"
    fd = os.open(out_dir / "ran.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines of many processes never mix
    finally:
        os.close(fd)


def events(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "ran.log"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        tid, what, device, t, pid, step = line.split()
        rows.append({"trial": tid, "event": what, "device": device, "time": float(t), "pid": int(pid),
                     "step": int(step)})
    return rows


def sleepy_trial(spec, *, trial_id, study, weights_path, teacher=None, bank=None, device=None, progress=False,
                 attempt=1, checkpoint_path=None):
    """Sleep STANDIN_SECONDS (env, default 0.2) in steps; on a stop request checkpoint the step
    reached and return a `preempted` record (or raise `Preempted` with STANDIN_RAISE=1)."""
    settings = spec.to_settings() if hasattr(spec, "to_settings") else dict(spec)
    out_dir = Path(weights_path).parent
    seconds = float(os.environ.get("STANDIN_SECONDS", "0.2"))
    steps = max(1, round(seconds / STEP))
    start = int(Path(checkpoint_path).read_text()) if checkpoint_path and Path(checkpoint_path).is_file() else 0
    t0 = time.perf_counter()
    event(out_dir, trial_id, "start", device, start)
    record = {"schema": 1, "trial_id": trial_id, "study": study, "status": "ok", "error": None, "attempt": attempt,
              "settings": settings, "history": [{"epoch": 1, "train_loss": 1.0, "test_acc": 50.0}],
              "metrics": {"test_acc": 50.0 + settings.get("seed", 0), "resumed_from_step": start},
              "env": {"pid": os.getpid(), "device": str(device)}, "timing": {}}
    for step in range(start, steps):
        if stop.stop_requested():
            if checkpoint_path:
                Path(checkpoint_path).write_text(str(step))
            event(out_dir, trial_id, "preempted", device, step)
            if os.environ.get("STANDIN_RAISE"):
                raise stop.Preempted(f"at step {step}")
            record.update(status="preempted", error=f"pre-empted at step {step}")
            record["timing"] = {"seconds": time.perf_counter() - t0}
            return record
        time.sleep(seconds / steps)
    if settings.get("save_weights"):
        from safetensors.numpy import save_file  # a whole (tiny) safetensors file, as a real trial writes

        save_file({"stand_in": np.zeros(1, np.float32)}, str(weights_path))
    event(out_dir, trial_id, "end", device, steps)
    record["timing"] = {"seconds": time.perf_counter() - t0}
    return record
