"""Training throughput: opswap's engine (auto, bf16, fp32) against a plain PyTorch loop, same run.

Engine: `opswap.training.train` — uint8 data held on the device, batched crop/flip, in each of
`--precisions` (default auto, bf16 and fp32): `bf16` is bf16 autocast + channels_last, `auto` what
`opswap.precision.resolve_precision` picks on the device, `fp32` the engine as it was before
(fp32, contiguous on CPU). Reference: torchvision's CIFAR10 dataset object with PIL transforms (RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader, fp32. All three train the same
model on the same images for the same number of steps after the same warm-up, interleaved;
the figure is training images per second (evaluation excluded), median of the repeats.

    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --data ../shared/data/cifar10-mini.npz --steps 4 --threads 2
    python benchmarks/train_throughput.py --device cuda --steps 100 --batch-size 512
    python benchmarks/train_throughput.py --device cuda --concurrent 1,2,4,8   # trials/hour per device
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's opswap

import opswap  # noqa: E402
from opswap.data import cifar_reader, load_dataset, synthetic, write_cifar_root  # noqa: E402
from opswap.training import TrainConfig, resolve_device, train  # noqa: E402


def engine_images_per_s(model_name: str, data, steps: int, batch_size: int, device, precision: str,
                        compile_: bool | None) -> tuple[float, str]:
    """Steady-state images/s of `train` and the resolved precision: two epochs, the second timed."""
    n = steps * batch_size
    subset = replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n],
                     x_test=data.x_test[:batch_size], y_test=data.y_test[:batch_size])
    torch.manual_seed(0)
    model = opswap.build_model(model_name, num_classes=data.num_classes)
    config = TrainConfig(epochs=2, batch_size=batch_size, optimizer="sgd", lr=0.05, compile=compile_,
                         precision=precision)
    result = train(model, subset, config, device=device)
    return result.history[-1]["images_per_s"], result.precision


def reference_images_per_s(model_name: str, root: str, data, steps: int, batch_size: int, device,
                           workers: int) -> float:
    """Images/s of a plain loop: torchvision dataset, PIL transforms, DataLoader, fp32."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    dataset = cifar_reader("cifar10")(root, train=True, transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = opswap.build_model(model_name, num_classes=data.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def epoch() -> tuple[int, float]:
        seen, t0 = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen, time.perf_counter() - t0

    epoch()  # warm-up, as the engine's first epoch
    seen, seconds = epoch()
    return seen / seconds


def throughput(args, device) -> None:
    steps = 3 if args.quick else args.steps or (100 if device.type == "cuda" else 10)
    batch = 64 if args.quick else args.batch_size
    repeats = 1 if args.quick else args.repeats
    n = steps * batch
    data = load_dataset("npz", args.data) if args.data else synthetic(max(n, 1000), batch)
    if len(data.y_train) < n:
        raise SystemExit(f"{len(data.y_train)} training images < steps × batch = {n}; lower --steps")
    print(f"device: {_where(device)}; {steps} timed steps of batch {batch} per loop after a warm-up of the "
          f"same, median of {repeats} interleaved repeats; reference: {args.workers} DataLoader workers, fp32;"
          f" load average {os.getloadavg()[0]:.1f} at start")
    precisions = args.precisions.split(",")
    print(f"{'model':<10} " + " ".join(f"{p + ' img/s':>11}" for p in precisions) + f" {'reference':>10} "
          + " ".join(f"{p + '/ref':>9}" for p in precisions)
          + " ".join(f" {p + '/' + precisions[-1]:>10}" for p in precisions[:-1])
          + f" {'s per 50k epoch (' + precisions[0] + ')':>24}")
    with tempfile.TemporaryDirectory() as root:
        x = lambda t: t[:n].permute(0, 2, 3, 1).numpy()  # noqa: E731
        write_cifar_root(root, x(data.x_train), data.y_train[:n].numpy(), x(data.x_test),
                         data.y_test[:n].numpy(), data.classes)
        for model_name in args.models.split(","):
            runs: dict[str, list[float]] = {p: [] for p in precisions + ["ref"]}
            resolved = {}
            for _ in range(repeats):  # interleaved, so a change in machine load hits every loop
                runs["ref"].append(reference_images_per_s(model_name, root, data, steps, batch, device, args.workers))
                for p in precisions:
                    ips, resolved[p] = engine_images_per_s(model_name, data, steps, batch, device, p, args.compile)
                    runs[p].append(ips)
            med = {k: statistics.median(v) for k, v in runs.items()}
            first, last = med[precisions[0]], med[precisions[-1]]
            print(f"{model_name:<10} " + " ".join(f"{med[p]:11.0f}" for p in precisions) + f" {med['ref']:10.0f} "
                  + " ".join(f"{med[p] / med['ref']:8.2f}x" for p in precisions)
                  + "".join(f" {med[p] / last:9.2f}x" for p in precisions[:-1])
                  + f" {50000 / first:24.1f}   (resolved {json.dumps(resolved)}; runs {json.dumps(runs)})",
                  flush=True)


def _where(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


def worker(args) -> int:
    """One small trial (the unit of --concurrent): train `--trial-model` for `--trial-epochs`."""
    device = resolve_device(args.device)
    data = synthetic(args.trial_images, 1000)
    torch.manual_seed(args.seed)
    model = opswap.build_model(args.trial_model, num_classes=data.num_classes)
    config = TrainConfig(epochs=args.trial_epochs, batch_size=args.batch_size, seed=args.seed, compile=args.compile)
    if args.ensemble > 1:
        from opswap.ensemble import train_ensemble

        builder = lambda: opswap.build_model(args.trial_model, num_classes=data.num_classes)  # noqa: E731
        results = train_ensemble(builder, range(args.seed, args.seed + args.ensemble), data, config, device)
    else:
        results = [train(model, data, config, device=device)]
    print(json.dumps({"status": [r.status for r in results], "precision": results[0].precision}))
    return 0


def concurrent(args, device) -> None:
    """Trials/hour with N trials at once on one device: N processes, or one ensemble of N."""
    counts = [int(c) for c in args.concurrent.split(",")]
    print(f"device: {_where(device)}; one trial = {args.trial_model}, {args.trial_epochs} epochs of "
          f"{args.trial_images} synthetic images, batch {args.batch_size}")
    print(f"{'at once':>8} {'processes: s':>13} {'trials/hour':>12} {'ensemble: s':>12} {'trials/hour':>12}")
    base = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", str(device),
            "--trial-model", args.trial_model, "--trial-epochs", str(args.trial_epochs),
            "--trial-images", str(args.trial_images), "--batch-size", str(args.batch_size)]
    if args.compile is not None:
        base.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(counts)))} \
        if device.type == "cpu" else dict(os.environ)
    for n in counts:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(base + ["--seed", str(i)], env=env, stdout=subprocess.PIPE) for i in range(n)]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
        if any(codes):
            raise SystemExit(f"a worker failed (exit codes {codes})")
        t0 = time.perf_counter()
        code = subprocess.call(base + ["--seed", "0", "--ensemble", str(n)], env=env, stdout=subprocess.DEVNULL)
        ens = time.perf_counter() - t0
        ens_txt = f"{ens:12.1f} {n * 3600 / ens:12.0f}" if code == 0 else f"{'failed':>12} {'':>12}"
        print(f"{n:8d} {seconds:13.1f} {n * 3600 / seconds:12.0f} {ens_txt}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wrn-40-2,wrn-16-2,tf-cnn")
    p.add_argument("--data", help="an .npz dataset (x_train, y_train, ...); default: synthetic")
    p.add_argument("--steps", type=int, default=None, help="timed batches per model (default 10, GPU 100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile in the engine (default: the engine's choice, on for CUDA only)")
    p.add_argument("--precisions", default="auto,bf16,fp32",
                   help="engine precisions to compare, each against the last (fp32) and the reference")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are printed")
    p.add_argument("--quick", action="store_true", help="3 steps of batch 64, one repeat, for a smoke test")
    p.add_argument("--concurrent", help="e.g. 1,2,4,8: trials/hour with that many trials at once per device")
    p.add_argument("--trial-model", default="wrn-16-2")
    p.add_argument("--trial-epochs", type=int, default=2)
    p.add_argument("--trial-images", type=int, default=5000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ensemble", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    device = resolve_device(args.device)
    if args.concurrent:
        concurrent(args, device)
    else:
        throughput(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
