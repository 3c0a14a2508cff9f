"""Deployed latency of every prune method against dense, side by side; accuracy with --accuracy.

Models (default): tf-cnn and wrn-16-2, whole-model pruning at each `--sparsity` (fraction of the
prunable layers' weights removed), methods
  dsr      unstructured random masks as DSR keeps them (stem, shortcuts, classifier dense),
           deployed by the per-layer dense / CSR chooser;
  channel-static / channel-dynamic
           channel masks on the same layers, channel fraction 1 - sqrt(1 - s) so about `s` of
           the internal conv weights go, physically removed at deployment;
  nm       2:4 (s = 0.5 only; on CPU it deploys dense).
Each row: `deployed_report` at batch 1 and `--batch`, deployed vs dense latency (median ms of
torch.utils.benchmark) and stored bytes ÷ dense bytes.
`--accuracy`: tf-cnn on cifar10-mini ($OPSWAP_CIFAR10_MINI or ../shared/data/cifar10-mini.npz;
skipped when absent), the dynamic-pruning recipe (Adam 1e-3, batch 32, inputs in [0, 1], no
augmentation) for `--epochs` and `--seeds`, test accuracy of every method beside dense; plus
channel-finetune: dense for epochs - `--finetune-epochs`, `channel_prune` (group_norm), then
fine-tuned for the rest — the same total epochs, and the same deployed net as channel-static.
`--layers`: the single-layer CSR table (linear, 3x3 and 1x1 conv at 80 / 90 / 95 %).
Run: `python benchmarks/sparse.py [--threads 2] [--accuracy] [--layers] [--quick]`.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from opswap.models import build_model
from opswap.sparse import (deployed_report, make_pruner, sparsify, sparsity_report, to_sparse_inference)
from opswap.sparse.deploy import median_ms

METHODS = ("dsr", "channel-static", "channel-dynamic", "nm")
MINI = Path(os.environ.get("OPSWAP_CIFAR10_MINI",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini.npz"))


def channel_fraction(sparsity: float) -> float:
    """Channels to remove so that about `sparsity` of an internal conv's weights go (both sides shrink)."""
    return 1.0 - math.sqrt(1.0 - sparsity)


def pruned(model_name: str, method: str, sparsity: float, total_steps: int = 1, seed: int = 0,
           rescale: bool = False):
    """(model, pruner) for one method, masks set as at the start of training."""
    torch.manual_seed(seed)
    model = build_model(model_name)
    if method == "dense":
        return model, None
    if method in ("dsr", "nm"):
        sparsify(model, sparsity, seed=seed, rescale=rescale)
        pruner = make_pruner(method, model, sparsity, total_steps, **({"seed": seed} if method == "dsr" else {}))
    else:
        mode = method.split("-")[1]
        pruner = make_pruner("channel", model, channel_fraction(sparsity), total_steps, mode=mode, seed=seed,
                             **({"period": 50} if mode == "dynamic" else {}))
    pruner.before_training(model, None)
    return model, pruner


def _levels(args):
    """(method, sparsity) pairs: every method at every level, nm at its own 0.5 only."""
    return [(method, s) for method in args.methods for s in args.sparsity if method != "nm" or s == 0.5]


def _cases(args):
    return [(model_name, method, s) for model_name in args.models for method, s in _levels(args)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency_rows(args) -> list[dict]:
    """One deployed_report per (model, method, sparsity)."""
    rows = []
    for model_name, method, sparsity in _cases(args):
        model, _ = pruned(model_name, method, sparsity)
        t0 = time.perf_counter()
        report = deployed_report(model.eval(), batch_sizes=(1, args.batch), device="cpu",
                                 min_run_time=args.min_run_time, rounds=args.rounds)
        nonzero = report["structured_params"]
        if method in ("dsr", "nm"):
            nonzero = sparsity_report(model)["nonzero_params"]
        rows.append(dict(model=model_name, method=method, sparsity=sparsity, report=report,
                         params=nonzero / report["dense_params"], seconds=time.perf_counter() - t0))
        _print_latency(rows[-1], args.batch)
    return rows


def _stored(report: dict, method: str) -> float:
    if method == "nm":
        return report["nm_bytes"] / report["dense_bytes"]
    return report["batches"][-1]["stored_bytes"] / report["dense_bytes"]


def _print_latency(row: dict, batch: int) -> None:
    if not getattr(_print_latency, "header", False):
        print(f"\n{'model':9} {'method':16} {'s':>5} {'params':>6} {'b1 dep':>8} {'b1 dense':>8} {'b1 x':>6} "
              f"{f'b{batch} dep':>9} {f'b{batch} dense':>10} {f'b{batch} x':>7} {'bytes':>6}  forms (b{batch})")
        _print_latency.header = True
    b1, bn = row["report"]["batches"]
    forms = ",".join(sorted(set(bn["forms"].values()))) or "-"
    print(f"{row['model']:9} {row['method']:16} {row['sparsity']:5.2f} {row['params']:6.3f} "
          f"{b1['deployed_ms']:8.3f} {b1['dense_ms']:8.3f} {b1['speedup']:5.2f}x "
          f"{bn['deployed_ms']:9.2f} {bn['dense_ms']:10.2f} {bn['speedup']:6.2f}x "
          f"{_stored(row['report'], row['method']):6.3f}  {forms}", flush=True)


# --- accuracy on cifar10-mini ---------------------------------------------------------------

def _finetuned(data, sparsity: float, seed: int, args) -> float:
    """Dense for the first epochs, channel_prune, fine-tune for the rest; test accuracy."""
    from opswap.sparse import channel_prune
    from opswap.training import TrainConfig, train

    def config(epochs):
        return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-3, normalize="unit",
                           augment=False, seed=seed)

    torch.manual_seed(seed)
    model = build_model("tf-cnn")
    train(model, data, config(args.epochs - args.finetune_epochs), device="cpu")
    small = channel_prune(model, channel_fraction(sparsity), importance="group_norm")
    return train(small, data, config(args.finetune_epochs), device="cpu").metrics["test_acc"]


def accuracy_rows(args, latency: list[dict] = ()) -> list[dict]:
    """Test accuracy of dense and each method on cifar10-mini, `args.seeds` seeds each."""
    from opswap.data import load_dataset
    from opswap.training import TrainConfig, evaluate, train

    if not MINI.is_file():
        print(f"\naccuracy: skipped, {MINI} not found (set OPSWAP_CIFAR10_MINI)")
        return []
    data = load_dataset("npz", MINI)
    cases = [("dense", 0.0)] + _levels(args)
    if "channel-static" in args.methods and 0 < args.finetune_epochs < args.epochs:
        cases += [("channel-finetune", s) for s in args.sparsity]
    speedups = {(r["method"], r["sparsity"]): r["report"]["batches"] for r in latency if r["model"] == "tf-cnn"}
    rows = []
    print(f"\naccuracy: tf-cnn on {MINI.name} ({len(data.y_train)} train / {len(data.y_test)} test), "
          f"Adam 1e-3, batch 32, {args.epochs} epochs, unit inputs, no augmentation, seeds {list(range(args.seeds))}")
    for method, sparsity in cases:
        accs = []
        for seed in range(args.seeds):
            if method == "channel-finetune":
                accs.append(_finetuned(data, sparsity, seed, args))
                continue
            config = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adam", lr=1e-3, normalize="unit",
                                 augment=False, seed=seed)
            steps = config.epochs * -(-len(data.y_train) // config.batch_size)
            model, pruner = pruned("tf-cnn", method, sparsity, steps, seed=seed, rescale=True)
            result = train(model, data, config, device="cpu", pruner=pruner)
            acc = result.metrics["test_acc"]
            if pruner is not None and hasattr(pruner, "finalize"):  # the deployed, smaller model
                small = pruner.finalize()
                acc_small = evaluate(small, data, "test", device="cpu", normalize="unit")["acc"]
                assert abs(acc_small - acc) < 0.2, (acc_small, acc)
            accs.append(acc)
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(dict(method=method, sparsity=sparsity, accs=accs, mean=mean, std=std))
        dense = rows[0]["mean"]
        batches = speedups.get(("channel-static" if method == "channel-finetune" else method, sparsity))
        speed = "  speed-up " + " / ".join(f"b{b['batch_size']} {b['speedup']:.2f}x" for b in batches) if batches else ""
        print(f"{method:16} {sparsity:5.2f}  {mean:6.2f} ± {std:4.2f}  (n={len(accs)}: "
              f"{', '.join(f'{a:.2f}' for a in accs)})  Δ vs dense {mean - dense:+6.2f}{speed}", flush=True)
    return rows


# --- single layers (the original table) -----------------------------------------------------

def layer_rows(args) -> list[dict]:
    """CSR bytes and dense vs CSR latency of single layers."""
    torch.manual_seed(0)
    cases = [("linear 1024x1024, batch 256", nn.Linear(1024, 1024), (256, 1024)),
             ("conv3x3 128->128 @16x16, batch 32", nn.Conv2d(128, 128, 3, padding=1), (32, 128, 16, 16)),
             ("conv1x1 128->128 @16x16, batch 32", nn.Conv2d(128, 128, 1), (32, 128, 16, 16))]
    rows = []
    print(f"\n{'layer':34} {'sparsity':>8} {'CSR/dense':>9} {'dense ms':>9} {'CSR ms':>9} {'speedup':>8}")
    for name, dense, shape in cases:
        for sparsity in (0.8, 0.9, 0.95):
            layer = sparsify(copy.deepcopy(dense), sparsity).eval()
            layer.apply_mask_()
            report = sparsity_report(nn.Sequential(layer))
            bias = 4 * layer.bias.numel()
            ratio = (report["csr_bytes"] - bias) / (report["dense_bytes"] - bias)
            plain = copy.deepcopy(dense).eval()
            with torch.no_grad():
                plain.weight.copy_(layer.weight)
            x = torch.randn(shape)
            t_dense = median_ms(plain, x, args.min_run_time)
            t_csr = median_ms(to_sparse_inference(layer), x, args.min_run_time)
            rows.append(dict(layer=name, sparsity=sparsity, ratio=ratio, dense=t_dense, csr=t_csr))
            print(f"{name:34} {sparsity:8.2f} {ratio:9.3f} {t_dense:9.3f} {t_csr:9.3f} {t_dense / t_csr:7.2f}x",
                  flush=True)
    return rows


def _machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        name = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"torch {torch.__version__}, {name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
            f"load average {load:.1f} at start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tf-cnn", "wrn-16-2"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--batch", type=int, default=256, help="throughput batch size (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing")
    parser.add_argument("--accuracy", action="store_true", help="also train tf-cnn on cifar10-mini")
    parser.add_argument("--epochs", type=int, default=5, help="--accuracy: epochs per run")
    parser.add_argument("--seeds", type=int, default=2, help="--accuracy: seeds per method")
    parser.add_argument("--finetune-epochs", type=int, default=2,
                        help="--accuracy: channel-finetune's fine-tuning epochs (0: leave it out)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the least median counts)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="--accuracy: CPU threads while training (default 1: tiny nets, shared cores)")
    parser.add_argument("--layers", action="store_true", help="also the single-layer CSR table")
    parser.add_argument("--no-latency", action="store_true", help="skip the model latency table")
    parser.add_argument("--quick", action="store_true", help="a reduced run: batch 64, min-run-time 0.05")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.min_run_time = 64, 0.05
    torch.set_num_threads(args.threads)
    print(_machine())
    latency = [] if args.no_latency else latency_rows(args)
    if args.layers:
        layer_rows(args)
    if args.accuracy:
        torch.set_num_threads(args.train_threads)
        accuracy_rows(args, latency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
