"""Throughput of LANA-style one-pass block distillation against one teacher pass per pair.

Distils every candidate that fits at three positions of a WRN (seven per position where the
identity fits) for the same number of steps, three ways: all pairs in one pass over the teacher;
one full teacher pass per pair (the naive way); and one pass per pair that stops the teacher
after that pair's block (`max_pairs_at_once=1`, the best a per-pair loop can do). Prints the
times and the speedups. Weights are random: the cost of a step does not depend on them.

    python benchmarks/distill_throughput.py                        # wrn-40-2, positions 6,12,18
    python benchmarks/distill_throughput.py --positions 1,7,18     # the paper's positions (19 pairs)
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

import opswap
from opswap.data import synthetic
from opswap.distill import DistillConfig, distill_bank, valid_pairs


def timed(teacher, data, pairs, config: DistillConfig, device: str) -> float:
    """Wall-clock seconds of one distill_bank call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    distill_bank(teacher, data, pairs, config, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wrn-40-2")
    parser.add_argument("--positions", default="6,12,18", help="three (or more) positions, comma-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    teacher = opswap.build_model(args.model).eval()
    data = synthetic(max(512, args.batch_size), 64)
    pairs = valid_pairs(teacher, [int(p) for p in args.positions.split(",")])
    config = DistillConfig(steps=args.steps, batch_size=args.batch_size)
    timed(teacher, data, pairs[:1], DistillConfig(steps=1, batch_size=args.batch_size), args.device)  # warm-up

    one_pass = timed(teacher, data, pairs, config, args.device)
    naive = timed(teacher, data, pairs, replace(config, max_pairs_at_once=1, stop_early=False), args.device)
    per_pair = timed(teacher, data, pairs, replace(config, max_pairs_at_once=1), args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, positions {args.positions}: {len(pairs)} pairs, {args.steps} steps, "
          f"batch {args.batch_size}, {where}")
    n = args.steps * len(pairs)
    print(f"  one pass for all pairs        : {one_pass:8.2f} s  ({args.steps} teacher forwards)")
    print(f"  one full pass per pair        : {naive:8.2f} s  ({n} teacher forwards)  "
          f"speedup {naive / one_pass:.2f}x")
    print(f"  one pass per pair, cut short  : {per_pair:8.2f} s  ({n} partial teacher forwards)  "
          f"speedup {per_pair / one_pass:.2f}x")


if __name__ == "__main__":
    main()
