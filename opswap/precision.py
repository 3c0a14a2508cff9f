"""Numeric precision of a run: fp32, or bf16 autocast with channels_last where the device is fast at it.

bf16 (Kalamkar et al., 2019, "A study of BFLOAT16 for deep learning training") keeps fp32's
exponent range, so mixed-precision training needs no loss scaling: weights, optimiser state
and losses stay fp32 and `torch.autocast` runs convolutions and matrix products in bf16.
`auto` picks bf16 on CUDA GPUs with native bf16 (Ampere and later) and on CPUs with AMX or
AVX-512 BF16 (where oneDNN runs bf16 convolutions natively), fp32 elsewhere. On CPUs it does so
because bf16 was shown equal to fp32 in accuracy within seed-to-seed noise on cifar10-mini
(`CPU_BF16_VALIDATED`; docs/training.md: wrn-16-2 -0.44 points, Welch p = 0.45, n = 10 each;
tf-cnn +1.06, p = 0.29, n = 5), at about twice the speed. `precision="fp32"` keeps the earlier
fp32 engine exactly.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# Set from the fp32-vs-bf16 accuracy comparison on cifar10-mini in docs/training.md
# (benchmarks/precision_accuracy.py, Welch's t-test, the bar the engine set itself: n >= 3 seeds
# each and no difference beyond seed-to-seed noise): wrn-16-2 (5 epochs, SGD) -0.44 points,
# p = 0.45, n = 10 + 10 (90 % interval of the difference -1.43 to +0.55); tf-cnn (10 epochs,
# Adam) +1.06, p = 0.29, n = 5 + 5. An earlier 5-seed wrn-16-2 run at one thread showed -1.21,
# p = 0.08; the 10-seed run did not confirm it. Set False to make `auto` fp32 on every CPU.
CPU_BF16_VALIDATED = True


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
