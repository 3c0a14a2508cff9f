"""Throughput of LANA-style one-pass block distillation against one teacher pass per pair.

Distils every candidate that fits at three positions of a WRN (seven per position where the
identity fits) for the same number of steps, three ways: all pairs in one pass over the teacher;
one full teacher pass per pair (the naive way); and one pass per pair that stops the teacher
after that pair's block (`max_pairs_at_once=1`, the best a per-pair loop can do). Prints the
wall-clock and process CPU times and the ratios to the one-pass run (CPU time with one thread is
the steadier figure when other jobs share the machine). Weights are random: the cost of a step
does not depend on them.

    python benchmarks/distill_throughput.py                        # wrn-40-2, positions 6,12,18
    python benchmarks/distill_throughput.py --positions 1,7,18     # the paper's positions (19 pairs)
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import opswap
from opswap.data import synthetic
from opswap.distill import DistillConfig, distill_bank, valid_pairs


def timed(teacher, data, pairs, config: DistillConfig, device: str) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one distill_bank call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    distill_bank(teacher, data, pairs, config, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wrn-40-2")
    parser.add_argument("--positions", default="6,12,18", help="three (or more) positions, comma-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (CPU); 1 gives steady figures on a shared machine")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are printed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    teacher = opswap.build_model(args.model).eval()
    data = synthetic(max(512, args.batch_size), 64)
    pairs = valid_pairs(teacher, [int(p) for p in args.positions.split(",")])
    config = DistillConfig(steps=args.steps, batch_size=args.batch_size)
    timed(teacher, data, pairs[:1], DistillConfig(steps=1, batch_size=args.batch_size), args.device)  # warm-up

    variants = {"one pass for all pairs": config,
                "one full pass per pair": replace(config, max_pairs_at_once=1, stop_early=False),
                "one pass per pair, cut short": replace(config, max_pairs_at_once=1)}
    # Interleaved repeats and medians: other jobs on a shared machine disturb every variant alike.
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, cfg in variants.items():
            runs[name].append(timed(teacher, data, pairs, cfg, args.device))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, positions {args.positions}: {len(pairs)} pairs, {args.steps} steps, "
          f"batch {args.batch_size}, {where}, median of {args.repeats}")
    forwards = [args.steps, args.steps * len(pairs), args.steps * len(pairs)]
    base_w, base_c = wall["one pass for all pairs"], cpu["one pass for all pairs"]
    for (name, w), c, n in zip(wall.items(), cpu.values(), forwards):
        print(f"  {name:<30}: wall {w:8.2f} s ({base_w and w / base_w:5.2f}x)   "
              f"cpu {c:8.2f} s ({base_c and c / base_c:5.2f}x)   {n} teacher forwards")


if __name__ == "__main__":
    main()
