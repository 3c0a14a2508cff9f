"""Wall time of a small study end to end, fp32 against bf16 (or auto) precision, via `opswap run`.

A copy of studies/quickstart.toml (WRN-10-1 on synthetic data: a teacher, one-pass
distillation, trials with LANA init) is shrunk to fit a benchmark and run from scratch, once
with `--set train.precision=fp32 --set distill.precision=fp32` and once per other precision
(default bf16; `auto` is what the device resolves to), each into
its own empty results directory, interleaved over the repeats. The time includes everything a
study does: process start-up, the teacher, the weight bank, every trial and its record (no
report).

With `--trials-per-device 1,2,4,8` it is run once per count with `[run] trials_per_device` set to
it and `workers = "auto"` (one worker per slot), on `--devices` (default: the study's `auto`), and
prints trials per hour against the first count: what packing small trials onto one GPU gains. An
untimed warm-up run comes first, so the file and compile caches are warm for every timed run.

    python benchmarks/study_throughput.py --repeats 3
    python benchmarks/study_throughput.py --model wrn-16-2 --epochs 2     # heavier trials
    python benchmarks/study_throughput.py --precisions auto --devices cuda --trials-per-device 1,2,4,8
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


def run_once(study: Path, precision: str, threads: int | None, per_device: int | None = None,
             devices: str | None = None) -> tuple[float, int]:
    """Seconds of `opswap run` on `study` into a fresh results directory, and the trials it ran."""
    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "opswap", "run", str(study), "--results", results, "--no-report",
               "--no-progress", "--set", f"train.precision={precision}", "--set", f"distill.precision={precision}"]
        if per_device is not None:
            cmd += ["--set", f"run.trials_per_device={per_device}", "--set", 'run.workers="auto"']
        if devices:
            cmd += ["--set", f"run.devices={devices}"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(f"opswap run failed with precision={precision}:\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-4000:]}")
        said = re.findall(r"(\d+) of (\d+) trials done", done.stdout + done.stderr)
        if not said or said[-1][0] != said[-1][1]:
            raise SystemExit(f"opswap run did not finish every trial (precision={precision}):\n{done.stdout[-2000:]}")
        return seconds, int(said[-1][1])


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
    p.add_argument("--trials-per-device", help="e.g. 1,2,4,8: one run per count ([run] trials_per_device, "
                   "workers auto); compared in trials per hour")
    p.add_argument("--devices", help='[run] devices as TOML, e.g. cuda or \'["cuda:0"]\' (default: the study\'s)')
    args = p.parse_args(argv)
    if args.trials_per_device:
        return packing(args)
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study-throughput.toml"
        study.write_text(small_study(args))
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {pr: [] for pr in precisions}
        for _ in range(args.repeats):
            for precision in precisions:  # interleaved: a change in machine load hits both
                times[precision].append(run_once(study, precision, args.threads)[0])
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


def packing(args: argparse.Namespace) -> int:
    """Trials per hour of the study with each `--trials-per-device` count, in the first precision."""
    counts = [int(c) for c in args.trials_per_device.split(",")]
    if min(counts) < 1:
        raise SystemExit("--trials-per-device: counts are at least 1")
    precision = args.precisions.split(",")[0]
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study-throughput.toml"
        study.write_text(small_study(args))
        load = os.getloadavg()[0]
        times: dict[int, list[float]] = {c: [] for c in counts}
        seconds, trials = run_once(study, precision, args.threads, counts[0], args.devices)
        print(f"  warm-up (trials_per_device {counts[0]}, not counted): {seconds:.1f} s", flush=True)
        for _ in range(args.repeats):
            for count in counts:  # interleaved
                seconds, trials = run_once(study, precision, args.threads, count, args.devices)
                times[count].append(seconds)
                print(f"  trials_per_device {count}: {seconds:.1f} s", flush=True)
    print(f"study: {args.model}, positions [{args.positions}] x [{args.candidates}], seeds [{args.seeds}], "
          f"{trials} trials of {args.epochs} epoch(s), teacher {args.teacher_epochs} epoch(s), distillation "
          f"{args.distill_steps} steps, precision {precision}, devices {args.devices or 'auto'}; median of "
          f"{args.repeats}; load average {load:.1f} at start (the teacher and bank are part of every run)")
    base = statistics.median(times[counts[0]])
    for count in counts:
        t = statistics.median(times[count])
        print(f"  trials_per_device {count:<2}: {t:7.1f} s  {trials * 3600 / t:8.0f} trials/hour  "
              f"({base / t:4.2f}x vs {counts[0]})  runs {[round(v, 1) for v in times[count]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
