"""Numeric precision of a run: fp32, or bf16 autocast with channels_last where the device is fast at it.

bf16 (Kalamkar et al., 2019, "A study of BFLOAT16 for deep learning training") keeps fp32's
exponent range, so mixed-precision training needs no loss scaling: weights, optimiser state
and losses stay fp32 and `torch.autocast` runs convolutions and matrix products in bf16.
`auto` picks bf16 on CUDA GPUs with native bf16 (Ampere and later) and fp32 elsewhere. On
CPUs with AMX or AVX-512 BF16 it would pick bf16 only once bf16 has been shown equal to fp32
in accuracy (`CPU_BF16_VALIDATED`); on cifar10-mini it was not (docs/training.md: wrn-16-2
lost 1.2 points, every one of 5 seeds lower), so `auto` is fp32 on every CPU for now and bf16
there is `precision="bf16"`, asked for explicitly.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# Set from the fp32-vs-bf16 accuracy comparison on cifar10-mini in docs/training.md
# (benchmarks/precision_accuracy.py, 5 seeds each): tf-cnn +1.06 points (Welch p = 0.29), but
# wrn-16-2 -1.21 points (Welch p = 0.08; lower in 5 of 5 seeds, paired p = 0.048) — not shown
# equal, so `auto` stays fp32 on CPUs. Set True once a check like it passes.
CPU_BF16_VALIDATED = False


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_kind() -> str | None:
    """`"amx"` or `"avx512_bf16"` when this CPU has native bf16 matrix instructions, else None.

    Asks torch (`torch.cpu._is_amx_tile_supported`, `_is_avx512_bf16_supported`: what oneDNN
    will use) and falls back to the /proc/cpuinfo flags `amx_bf16` / `avx512_bf16`.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    for kind, probe, flag in (("amx", "_is_amx_tile_supported", "amx_bf16"),
                              ("avx512_bf16", "_is_avx512_bf16_supported", "avx512_bf16")):
        fn = getattr(torch.cpu, probe, None)
        if fn() if fn is not None else flag in _cpuinfo_flags():
            return kind
    return None


def cuda_bf16_fast(device: torch.device) -> bool:
    """Whether the CUDA device has native bf16 (not the emulation older GPUs offer)."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation to exclude
            return torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """`"fp32"` or `"bf16"`: what `precision` (auto | fp32 | bf16) means on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is invalid; allowed: {' | '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        fast = cuda_bf16_fast(device)
        if precision == "bf16" and not fast:
            name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
            raise ValueError(f"precision 'bf16' needs a GPU with native bf16 (Ampere or later); "
                             f"{device} ({name}) has none: use 'auto' or 'fp32'")
        return "bf16" if fast else "fp32"
    if precision == "bf16":
        return "bf16"  # asked for: runs anywhere autocast does, slowly without native bf16
    return "bf16" if device.type == "cpu" and CPU_BF16_VALIDATED and cpu_bf16_kind() else "fp32"


def memory_format(device: str | torch.device, precision: str) -> torch.memory_format:
    """channels_last where it pays: CUDA (cuDNN's NHWC kernels) and bf16 on CPU (oneDNN).

    fp32 on CPU stays contiguous, so `precision="fp32"` reproduces earlier fp32 runs exactly.
    """
    return (torch.channels_last if torch.device(device).type == "cuda" or precision == "bf16"
            else torch.contiguous_format)


def autocast(device: str | torch.device, precision: str):
    """bf16 autocast on `device` for a resolved precision `"bf16"`; a no-op context for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def use_compile(compile: bool | None, device: str | torch.device) -> bool:
    """`compile`, or when None: on CUDA (pays for itself), off on CPU (slower there, measured)."""
    return bool(compile) if compile is not None else torch.device(device).type == "cuda"
