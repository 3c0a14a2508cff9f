"""Training throughput: opswap's engine against a plain PyTorch reference loop, same run.

Engine: `opswap.training.train` — uint8 data held on the device, batched crop/flip, bf16 autocast
and channels_last on CUDA. Reference: torchvision's CIFAR10 dataset object with PIL transforms
(RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader, fp32.
Both train the same model on the same images for the same number of steps after the same
warm-up; the figure is training images per second (evaluation excluded).

    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --data ../shared/data/cifar10-mini.npz --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

import opswap
from opswap.data import cifar_reader, load_dataset, synthetic, write_cifar_root
from opswap.training import TrainConfig, resolve_device, train


def engine_images_per_s(model_name: str, data, steps: int, batch_size: int, device, compile_: bool) -> float:
    """Steady-state images/s of `train`: two epochs of `steps` batches, the second one timed."""
    n = steps * batch_size
    subset = replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n],
                     x_test=data.x_test[:batch_size], y_test=data.y_test[:batch_size])
    torch.manual_seed(0)
    model = opswap.build_model(model_name, num_classes=data.num_classes)
    config = TrainConfig(epochs=2, batch_size=batch_size, optimizer="sgd", lr=0.05, compile=compile_)
    result = train(model, subset, config, device=device)
    return result.history[-1]["images_per_s"]


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wrn-40-2,wrn-16-1,tf-cnn")
    p.add_argument("--data", help="an .npz dataset (x_train, y_train, ...); default: synthetic")
    p.add_argument("--steps", type=int, default=None, help="timed batches per model (default 10, GPU 100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are printed")
    p.add_argument("--quick", action="store_true", help="3 steps of batch 64, one repeat, for a smoke test")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 3 if args.quick else args.steps or (100 if device.type == "cuda" else 10)
    batch = 64 if args.quick else args.batch_size
    repeats = 1 if args.quick else args.repeats
    n = steps * batch
    data = load_dataset("npz", args.data) if args.data else synthetic(max(n, 1000), batch)
    if len(data.y_train) < n:
        raise SystemExit(f"{len(data.y_train)} training images < steps × batch = {n}; lower --steps")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; {steps} timed steps of batch {batch} per loop after a warm-up of the same, "
          f"median of {repeats} interleaved repeats; reference: {args.workers} DataLoader workers, fp32")
    print(f"{'model':<10} {'engine img/s':>13} {'reference img/s':>16} {'ratio':>7} {'s per 50k epoch':>16}")
    with tempfile.TemporaryDirectory() as root:
        x = lambda t: t[:n].permute(0, 2, 3, 1).numpy()
        write_cifar_root(root, x(data.x_train), data.y_train[:n].numpy(), x(data.x_test),
                         data.y_test[:n].numpy(), data.classes)
        for model_name in args.models.split(","):
            refs, engs = [], []
            for _ in range(repeats):  # interleaved, so a change in machine load hits both loops
                refs.append(reference_images_per_s(model_name, root, data, steps, batch, device, args.workers))
                engs.append(engine_images_per_s(model_name, data, steps, batch, device, args.compile))
            ref, eng = statistics.median(refs), statistics.median(engs)
            print(f"{model_name:<10} {eng:13.0f} {ref:16.0f} {eng / ref:6.2f}x {50000 / eng:16.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
