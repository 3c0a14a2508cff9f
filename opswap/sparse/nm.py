"""N:M structured sparsity: of every M consecutive weights of a row, at most N are nonzero.

The pattern of NVIDIA's sparse tensor cores (2:4, Mishra et al., "Accelerating Sparse Deep
Neural Networks", 2021). Rows are output channels, columns the layer's reduction axis
(c_in/groups·k·k for a conv, in_features for a linear), so a GEMM over im2col columns sees the
pattern along its inner dimension. A row whose length is not a multiple of M ends in a shorter
group that keeps at most N (all of it if it is shorter than N).

`NMPruner` sets the pattern by magnitude before training and holds it; with `period > 0` it
recomputes it every `period` steps from dense weights trained with straight-through gradients
(SR-STE without its extra decay; Zhou et al., ICLR 2021). `to_semi_structured` hands 2:4 layers
to `torch.sparse.to_sparse_semi_structured`, which is fast only on CUDA GPUs of compute
capability >= 8.0 in fp16/bf16; everywhere else N:M is stored, not accelerated.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from opswap.sparse.layers import DynamicConv2d, DynamicLinear, dynamic_layers
from opswap.sparse.pruning import MaskPruner


@dataclass(frozen=True)
class NMSettings:
    """N:M pattern settings (2:4 by default)."""

    n: int = 2                  # nonzeros kept per group
    m: int = 4                  # group length along a row
    period: int = 0             # 0: pattern fixed at the start; > 0: recomputed every `period` steps
    stop_fraction: float = 1.0  # no recomputation after this fraction of the steps

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m):
            raise ValueError(f"prune method 'nm' needs integers 1 <= n < m (e.g. n=2, m=4), got n={self.n!r}, m={self.m!r}")
        if (not isinstance(self.period, int) or isinstance(self.period, bool) or self.period < 0
                or not isinstance(self.stop_fraction, (int, float)) or not 0.0 <= self.stop_fraction <= 1.0):
            raise ValueError(f"prune method 'nm' needs period >= 0 (0: fixed pattern) and 0 <= stop_fraction <= 1, "
                             f"got period={self.period}, stop_fraction={self.stop_fraction}")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


def _groups(rows: torch.Tensor, m: int, fill: float) -> tuple[torch.Tensor, int]:
    cols = rows.shape[1]
    pad = (-cols) % m
    if pad:
        rows = F.pad(rows, (0, pad), value=fill)
    return rows.reshape(rows.shape[0], -1, m), cols


@torch.no_grad()
def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the `n` largest |w| of every `m` consecutive weights of each row."""
    scores, cols = _groups(weight.detach().reshape(weight.shape[0], -1).abs().float(), m, -1.0)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(2, torch.topk(scores, n, dim=2).indices, True)
    return keep.reshape(weight.shape[0], -1)[:, :cols].reshape(weight.shape)


def is_nm(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when no group of `m` consecutive entries of a row holds more than `n` True."""
    counts, _ = _groups(mask.reshape(mask.shape[0], -1).float(), m, 0.0)
    return bool((counts.sum(2) <= n).all())


def nm_nbytes(layer: DynamicConv2d | DynamicLinear, n: int = 2, m: int = 4, value_bytes: int = 4) -> int:
    """Bytes of the weight stored as N:M: `n` values and ceil(log2 m)-bit positions per group."""
    rows = layer.weight.shape[0]
    cols = layer.weight[0].numel()
    full, rest = divmod(cols, m)
    slots = rows * (full * n + min(n, rest))
    return slots * value_bytes + math.ceil(slots * math.ceil(math.log2(m)) / 8)


class NMPruner(MaskPruner):
    """Holds an N:M pattern on every dynamic layer; optionally recomputes it (straight-through)."""

    method = "nm"

    def __init__(self, model, sparsity, total_steps, settings: NMSettings):
        super().__init__(model, sparsity, total_steps)
        self.settings = settings
        self.recomputations = 0

    @property
    def _dense_phase(self) -> bool:
        s = self.settings
        return s.period > 0 and self.step < min(self.total_steps, s.stop_fraction * self.total_steps)

    def before_training(self, model=None, optimizer=None) -> None:
        if model is not None:
            self.model = model
        if self.step == 0:
            for _, layer in self.layers:
                layer.mask.copy_(nm_mask(layer.weight, self.settings.n, self.settings.m))
        for _, layer in self.layers:
            layer.nm_pattern = (self.settings.n, self.settings.m)
        self._set_straight_through()
        super().before_training(None, optimizer)

    def _set_straight_through(self) -> None:
        for _, layer in self.layers:
            layer.straight_through = self._dense_phase

    def after_step(self, step: int) -> None:
        self.step = int(step)
        if self._dense_phase and step % self.settings.period == 0:
            for _, layer in self.layers:  # the dense weights kept training: re-rank them
                layer.mask.copy_(nm_mask(layer.weight, self.settings.n, self.settings.m))
            self.recomputations += 1
        self._set_straight_through()
        self.enforce_masks()

    def enforce_masks(self) -> None:
        """Zero masked weights once the pattern is final; while it may change, masked weights train on."""
        if not self._dense_phase:
            super().enforce_masks()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "recomputations": self.recomputations, "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.recomputations = int(state.get("recomputations", 0))
        self._set_straight_through()


# --- semi-structured (2:4) inference on CUDA ------------------------------------------------

def semi_structured_support(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(whether 2:4 semi-structured kernels can speed up `device`, the reason in words)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return False, (f"no speed-up on this device ({device.type}): PyTorch's 2:4 semi-structured kernels "
                       "run on CUDA GPUs of compute capability >= 8.0 (Ampere or newer) only")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return False, (f"no speed-up on this device: {torch.cuda.get_device_name(device)} has compute "
                       f"capability {major}.{minor}; 2:4 sparse tensor cores need >= 8.0")
    return True, f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"


class SemiStructuredLinear(nn.Module):
    """A linear layer (or a 1x1 conv computed as one) with a 2:4 semi-structured weight."""

    def __init__(self, layer: DynamicConv2d | DynamicLinear, dtype: torch.dtype):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        weight = layer.masked_weight().detach().reshape(layer.weight.shape[0], -1).to(dtype).contiguous()
        self.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)
        self.conv_stride = tuple(layer.stride) if isinstance(layer, nn.Conv2d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_stride is None:
            return F.linear(x, self.weight, self.bias)
        x = x[:, :, :: self.conv_stride[0], :: self.conv_stride[1]]
        n, c, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(-1, c), self.weight, self.bias)
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _eligible(layer, dtype) -> str | None:
    """Why `layer` cannot become semi-structured, or None when it can."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS as backend

    if isinstance(layer, nn.Conv2d) and (tuple(layer.kernel_size) != (1, 1) or layer.groups != 1
                                         or tuple(layer.padding) != (0, 0) or layer.padding_mode != "zeros"):
        return "only Linear layers and unpadded, ungrouped 1x1 convs map onto a 2:4 matmul"
    if not is_nm(layer.mask, 2, 4):
        return "the mask is not a 2:4 pattern (sparse tensor cores support 2:4 only)"
    rows, cols = layer.weight.shape[0], layer.weight[0].numel()
    limits = backend._DTYPE_SHAPE_CONSTRAINTS[dtype]
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return (f"weight {rows}x{cols} is not a multiple of ({limits.sparse_min_rows}, "
                f"{limits.sparse_min_cols}), the kernel's tile for {dtype}")
    return None


def to_semi_structured(model: nn.Module, *, dtype: torch.dtype = torch.float16) -> tuple[nn.Module, dict]:
    """A `dtype` eval copy whose eligible 2:4 dynamic layers use semi-structured weights, and a report.

    On a device without 2:4 kernels (CPU; CUDA below compute capability 8.0) nothing is converted:
    the model is returned as it is and the report says why there is no speed-up there.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"semi-structured sparsity needs dtype torch.float16 or torch.bfloat16, got {dtype}")
    param = next(model.parameters())
    supported, reason = semi_structured_support(param.device)
    report = {"speedup_possible": supported, "device": reason, "converted": [], "skipped": {}}
    if not supported:
        report["reason"] = reason
        return model, report
    copied = copy.deepcopy(model).to(dtype).eval()
    from opswap.sparse.layers import _set_child

    for name, layer in dynamic_layers(copied):
        why = _eligible(layer, dtype)
        if why:
            report["skipped"][name] = why
            continue
        _set_child(copied, name, SemiStructuredLinear(layer, dtype))
        report["converted"].append(name)
    return copied, report
