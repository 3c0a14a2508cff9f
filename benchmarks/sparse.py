"""CSR storage and CSR-inference latency of dynamic layers at 80 / 90 / 95 % sparsity.

Prints, as measured: CSR bytes ÷ dense bytes of a weight matrix (DESIGN.md expects about
0.40 / 0.20 / 0.10), and the forward latency of a dense layer against its CSR inference module
(`opswap.sparse.to_sparse_inference`) for a Linear and a 3x3 Conv2d, on CPU and on CUDA when
present. Run: `python benchmarks/sparse.py [--device cpu cuda] [--threads N]`.
"""
from __future__ import annotations

import argparse
import copy
import platform

import torch
from torch import nn
from torch.utils import benchmark

from opswap.sparse import sparsify, sparsity_report, to_sparse_inference


def _median_ms(fn, x: torch.Tensor, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _cases(args) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    f, c, r = args.features, args.channels, args.resolution
    return [
        (f"linear {f}x{f}, batch {args.batch}", nn.Linear(f, f), (args.batch, f)),
        (f"conv3x3 {c}->{c} @{r}x{r}, batch {args.conv_batch}", nn.Conv2d(c, c, 3, padding=1),
         (args.conv_batch, c, r, r)),
    ]


@torch.no_grad()
def run(args) -> list[dict]:
    """Measure every (layer, sparsity, device) case; returns one row per case."""
    rows = []
    for device in args.device:
        for name, dense, shape in _cases(args):
            for sparsity in args.sparsity:
                layer = sparsify(copy.deepcopy(dense), sparsity).eval()
                layer.apply_mask_()
                weight_only = nn.Sequential(layer)
                report = sparsity_report(weight_only)
                bias_bytes = 4 * layer.bias.numel()
                ratio = (report["csr_bytes"] - bias_bytes) / (report["dense_bytes"] - bias_bytes)
                plain = copy.deepcopy(dense).eval()
                plain.weight.copy_(layer.weight)  # the same (masked) weights, computed densely
                plain, sparse = plain.to(device), to_sparse_inference(layer).to(device)
                x = torch.randn(shape, device=device)
                err = (sparse(x) - plain(x)).abs().max().item()
                t_dense = _median_ms(plain, x, args.min_run_time)
                t_sparse = _median_ms(sparse, x, args.min_run_time)
                rows.append(dict(device=device, layer=name, sparsity=sparsity, csr_ratio=ratio,
                                 dense_ms=t_dense, csr_ms=t_sparse, speedup=t_dense / t_sparse, max_err=err))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", default=None, help="devices (default: cpu, and cuda if present)")
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--features", type=int, default=1024, help="linear in = out features")
    parser.add_argument("--batch", type=int, default=256, help="linear batch size")
    parser.add_argument("--channels", type=int, default=128, help="conv in = out channels")
    parser.add_argument("--resolution", type=int, default=16, help="conv input H = W")
    parser.add_argument("--conv-batch", type=int, default=32, help="conv batch size")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in args.device else ""))
    print(f"{'device':6} {'layer':34} {'sparsity':>8} {'CSR/dense':>9} {'dense ms':>9} {'CSR ms':>9} "
          f"{'speedup':>8} {'max err':>8}")
    for row in run(args):
        print(f"{row['device']:6} {row['layer']:34} {row['sparsity']:8.2f} {row['csr_ratio']:9.3f} "
              f"{row['dense_ms']:9.3f} {row['csr_ms']:9.3f} {row['speedup']:7.2f}x {row['max_err']:8.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
