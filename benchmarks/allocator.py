"""What keeping freed memory (opswap.allocator) is worth: training with it on and off, side by side.

Each run is a fresh process (the malloc settings are per process and cannot be undone), with
`OPSWAP_KEEP_FREED_MEMORY=1` or `0`, interleaved: it trains one model for `--epochs` epochs on
the synthetic set (or --data npz) and reports the seconds per epoch, the user and system CPU
seconds and the minor page faults of the whole process. Medians over `--repeats` pairs, and the
ratios off / on.

    python benchmarks/allocator.py --models wrn-10-1,wrn-16-2 --threads 1 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
import opswap
from opswap.allocator import keep_freed_memory
from opswap.data import load_dataset, synthetic
from opswap.training import TrainConfig, train
data = load_dataset("npz", {data!r}) if {data!r} else synthetic()
torch.manual_seed(0)
model = opswap.build_model({model!r}, num_classes=data.num_classes)
result = train(model, data, TrainConfig(epochs={epochs}, optimizer="sgd", lr=0.05, batch_size={batch}, seed=0),
               device="cpu")
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"kept": keep_freed_memory(), "epoch_s": [h["seconds"] for h in result.history],
                   "user_s": use.ru_utime, "sys_s": use.ru_stime, "minflt": use.ru_minflt,
                   "test_acc": result.metrics["test_acc"]}}))
"""


def one(model: str, keep: bool, args) -> dict:
    env = {**os.environ, "OPSWAP_KEEP_FREED_MEMORY": "1" if keep else "0"}
    code = CHILD.format(root=str(ROOT), threads=args.threads, data=args.data or "", model=model,
                        epochs=args.epochs, batch=args.batch_size)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wrn-10-1,wrn-16-2")
    p.add_argument("--data", default=None, help="an npz dataset (default: the synthetic set)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"load average at start {os.getloadavg()[0]:.2f}; {args.threads} thread(s), {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.data or 'synthetic'}; median of {args.repeats} interleaved pairs")
    print("| model | kept | s / epoch | user s | sys s | minor faults | test acc |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        runs = {True: [], False: []}
        for _ in range(args.repeats):
            for keep in (False, True):
                runs[keep].append(one(model, keep, args))
        med = {keep: {k: statistics.median(statistics.median(r["epoch_s"]) if k == "epoch_s" else r[k] for r in rs)
                      for k in ("epoch_s", "user_s", "sys_s", "minflt", "test_acc")} for keep, rs in runs.items()}
        for keep in (False, True):
            m = med[keep]
            print(f"| {model} | {'on' if keep else 'off'} | {m['epoch_s']:.2f} | {m['user_s']:.1f} | {m['sys_s']:.1f} | "
                  f"{m['minflt']:,.0f} | {m['test_acc']:.2f} |")
        off, on = med[False], med[True]
        print(f"| {model} | off / on | {off['epoch_s'] / on['epoch_s']:.2f}× | {off['user_s'] / on['user_s']:.2f}× | "
              f"{off['sys_s'] / on['sys_s']:.2f}× | {off['minflt'] / on['minflt']:.2f}× | same: "
              f"{all(r['test_acc'] == runs[True][0]['test_acc'] for r in runs[False] + runs[True])} |")


if __name__ == "__main__":
    main()
