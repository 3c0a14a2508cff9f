"""Wall time of a small study end to end, fp32 against bf16 (or auto) precision, via `opswap run`.

A copy of studies/quickstart.toml (WRN-10-1 on synthetic data: a teacher, one-pass
distillation, trials with LANA init) is shrunk to fit a benchmark and run from scratch, once
with `--set train.precision=fp32 --set distill.precision=fp32` and once per other precision
(default bf16; `auto` is what the device resolves to), each into
its own empty results directory, interleaved over the repeats. The time includes everything a
study does: process start-up, the teacher, the weight bank, every trial and its record (no
report).

    python benchmarks/study_throughput.py --repeats 3
    python benchmarks/study_throughput.py --model wrn-16-2 --epochs 2     # heavier trials
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def small_study(args: argparse.Namespace) -> str:
    """quickstart.toml with the model, positions, seeds, epochs and budgets of `args`."""
    text = (ROOT / "studies" / "quickstart.toml").read_text()
    candidates = ", ".join(f'"{c.strip()}"' for c in args.candidates.split(","))
    subs = {"name": '"study-throughput"', "model": f'"{args.model}"', "positions": f"[{args.positions}]",
            "candidates": f"[{candidates}]", "seeds": f"[{args.seeds}]", "epochs": f"[{args.epochs}]"}
    for key, value in subs.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
    text = re.sub(r"(?ms)(^\[teacher\].*?^epochs = )\d+", rf"\g<1>{args.teacher_epochs}", text)
    text = re.sub(r"(?ms)(^\[distill\].*?^steps = )\d+", rf"\g<1>{args.distill_steps}", text)
    text = re.sub(r"(?m)^workers = \d+", f"workers = {args.workers}", text)
    if args.data_fraction < 1:
        text = text.replace("sparsity = [0.0]", f"sparsity = [0.0]\ndata_fraction = [{args.data_fraction}]")
    return text


def run_once(study: Path, precision: str, threads: int | None) -> float:
    """Seconds of `opswap run` on `study` into a fresh results directory."""
    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "opswap", "run", str(study), "--results", results, "--no-report",
               "--no-progress", "--set", f"train.precision={precision}", "--set", f"distill.precision={precision}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(f"opswap run failed with precision={precision}:\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-4000:]}")
        return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-10-1")
    p.add_argument("--positions", default="1, 2")
    p.add_argument("--candidates", default="baseline,conv_bn_e1,mbconv")
    p.add_argument("--seeds", default="0")
    p.add_argument("--data-fraction", type=float, default=1.0, help="share of the 5,000 synthetic training images")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--distill-steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=1, help="parallel trials ([run] workers)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the study processes")
    p.add_argument("--precisions", default="fp32,bf16", help="e.g. fp32,auto,bf16; the first is the reference")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are printed")
    args = p.parse_args(argv)
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study-throughput.toml"
        study.write_text(small_study(args))
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {pr: [] for pr in precisions}
        for _ in range(args.repeats):
            for precision in precisions:  # interleaved: a change in machine load hits both
                times[precision].append(run_once(study, precision, args.threads))
                print(f"  {precision}: {times[precision][-1]:.1f} s", flush=True)
    print(f"study: {args.model}, positions [{args.positions}] x [{args.candidates}], seeds [{args.seeds}], "
          f"data fraction {args.data_fraction}, {args.epochs} epoch(s) per "
          f"trial, teacher {args.teacher_epochs} epoch(s), distillation {args.distill_steps} steps, "
          f"{args.workers} worker(s); median of {args.repeats}; load average {load:.1f} at start")
    base = statistics.median(times[precisions[0]])
    for precision in precisions:
        t = statistics.median(times[precision])
        print(f"  precision {precision:<5}: {t:7.1f} s  ({base / t:4.2f}x vs {precisions[0]})  "
              f"runs {[round(v, 1) for v in times[precision]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
