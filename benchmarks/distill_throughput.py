"""Throughput of LANA-style one-pass block distillation against one teacher pass per pair.

Distils every candidate that fits at three positions of a WRN (seven per position where the
identity fits) for the same number of steps, three ways: all pairs in one pass over the teacher;
one full teacher pass per pair (the naive way); and one pass per pair that stops the teacher
after that pair's block (`max_pairs_at_once=1`, the best a per-pair loop can do) — each in every
`--precisions` (default: fp32, the engine as it was, and bf16: bf16 autocast + channels_last;
`auto` is what the device resolves to). Prints the wall-clock and process CPU times and the
ratios to the one-pass run of the same precision, and of each precision to fp32 (CPU time with one thread is the
steadier figure when other jobs share the machine). Weights are random: the cost of a step does
not depend on them.

    python benchmarks/distill_throughput.py                        # wrn-40-2, positions 1,7,18
    python benchmarks/distill_throughput.py --positions 6,12,18    # deeper positions (21 pairs)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's opswap

import opswap  # noqa: E402
from opswap.data import synthetic  # noqa: E402
from opswap.distill import DistillConfig, distill_bank, valid_pairs  # noqa: E402
from opswap.precision import resolve_precision  # noqa: E402


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
    parser.add_argument("--positions", default="1,7,18", help="three (or more) positions, comma-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (CPU); 1 gives steady figures on a shared machine")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, auto, bf16")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are printed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    teacher = opswap.build_model(args.model).eval()
    data = synthetic(max(512, args.batch_size), 64)
    pairs = valid_pairs(teacher, [int(p) for p in args.positions.split(",")])
    precisions = args.precisions.split(",")
    for precision in precisions:  # warm-up
        timed(teacher, data, pairs[:1], DistillConfig(steps=1, batch_size=args.batch_size, precision=precision),
              args.device)

    kinds = {"one pass for all pairs": {}, "one full pass per pair": {"max_pairs_at_once": 1, "stop_early": False},
             "one pass per pair, cut short": {"max_pairs_at_once": 1}}
    variants = {(kind, precision): DistillConfig(steps=args.steps, batch_size=args.batch_size, precision=precision,
                                                 **extra)
                for precision in precisions for kind, extra in kinds.items()}
    # Interleaved repeats and medians: other jobs on a shared machine disturb every variant alike.
    load = os.getloadavg()[0]
    runs = {key: [] for key in variants}
    for _ in range(args.repeats):
        for key, cfg in variants.items():
            runs[key].append(timed(teacher, data, pairs, cfg, args.device))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, positions {args.positions}: {len(pairs)} pairs, {args.steps} steps, "
          f"batch {args.batch_size}, {where}, median of {args.repeats}, load average {load:.1f} at start")
    forwards = [args.steps, args.steps * len(pairs), args.steps * len(pairs)]
    for precision in precisions:
        resolved = resolve_precision(precision, args.device)
        first = ("one pass for all pairs", precision)
        print(f" precision {precision} ({resolved}):")
        for kind, n in zip(kinds, forwards):
            w, c = wall[(kind, precision)], cpu[(kind, precision)]
            print(f"  {kind:<30}: wall {w:8.2f} s ({w / wall[first]:5.2f}x)   "
                  f"cpu {c:8.2f} s ({c / cpu[first]:5.2f}x)   {n} teacher forwards")
    if "fp32" in precisions and len(precisions) > 1:
        for precision in precisions:
            if precision != "fp32":
                key = ("one pass for all pairs", precision)
                ref = ("one pass for all pairs", "fp32")
                print(f" one pass, {precision} vs fp32: wall {wall[ref] / wall[key]:.2f}x faster, "
                      f"cpu {cpu[ref] / cpu[key]:.2f}x; per-pair full passes in fp32 vs one pass in {precision}: "
                      f"wall {wall[('one full pass per pair', 'fp32')] / wall[key]:.2f}x")


if __name__ == "__main__":
    main()
