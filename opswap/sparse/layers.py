"""Masked layers for Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019).

`DynamicConv2d` and `DynamicLinear` are drop-in subclasses of `nn.Conv2d` / `nn.Linear` that
hold the dense weight plus a boolean `mask` buffer; the forward pass uses `weight * mask`, so a
masked weight receives no gradient. `sparsify` converts the layers of a model (or of one
candidate op) and draws the initial masks uniformly at random at the target sparsity, keeping
the DSR paper's dense layers (stem, 1x1 shortcut/projection convs, classifier) dense.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

KeepDense = Callable[[str, nn.Module], bool] | Sequence[str] | None

_INDEX_BYTES = 4  # CSR indices are int32
_VALUE_BYTES = 4  # values are fp32


class _Masked:
    """Shared behaviour of the masked layers: counts and mask bookkeeping."""

    weight: nn.Parameter
    mask: torch.Tensor

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    @property
    def nnz(self) -> int:
        """Number of active (unmasked) weights."""
        return int(self.mask.sum())

    @property
    def sparsity(self) -> float:
        """Fraction of masked weights."""
        return 1.0 - self.nnz / self.mask.numel()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the stored weight where the mask is off."""
        self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        """The weight the forward pass uses.

        With `straight_through` set (the N:M pruner's recomputation phase) the value is still
        weight * mask, but the gradient reaches every weight, masked ones included.
        """
        if getattr(self, "straight_through", False):
            return self.weight + (self.weight * self.mask - self.weight).detach()
        return self.weight * self.mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparsity={self.sparsity:.3f}"


class DynamicConv2d(_Masked, nn.Conv2d):
    """nn.Conv2d whose weight is multiplied by a boolean mask in the forward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> "DynamicConv2d":
        """A DynamicConv2d with `conv`'s settings and a copy of its parameters (mask all on)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_state_dict(conv.state_dict(), strict=False)
        layer.train(conv.training)
        return layer


class DynamicLinear(_Masked, nn.Linear):
    """nn.Linear whose weight is multiplied by a boolean mask in the forward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "DynamicLinear":
        """A DynamicLinear with `linear`'s settings and a copy of its parameters (mask all on)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict(), strict=False)
        layer.train(linear.training)
        return layer


DYNAMIC_TYPES = (DynamicConv2d, DynamicLinear)


def is_dynamic(module: nn.Module) -> bool:
    """True for DynamicConv2d / DynamicLinear."""
    return isinstance(module, DYNAMIC_TYPES)


def dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConv2d | DynamicLinear]]:
    """The (name, layer) pairs of every dynamic layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if is_dynamic(m)]


def to_dynamic(module: nn.Conv2d | nn.Linear) -> DynamicConv2d | DynamicLinear:
    """The dynamic version of one Conv2d / Linear (parameters copied, mask all on)."""
    if is_dynamic(module):
        return module
    if isinstance(module, nn.Conv2d):
        return DynamicConv2d.from_dense(module)
    if isinstance(module, nn.Linear):
        return DynamicLinear.from_dense(module)
    raise TypeError(f"only nn.Conv2d and nn.Linear can be made dynamic, got {type(module).__name__}")


def _candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            yield name, m


def default_keep_dense(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """The DSR paper's dense layers for `model`.

    A whole network (one holding an nn.Linear) keeps its first conv (the stem), its last
    Linear (the classifier) and every 1x1 conv whose name contains "shortcut" or "proj"; a
    candidate op (no Linear) keeps only its 1x1 shortcut/projection convs.
    """
    layers = list(_candidates(model))
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    whole_network = bool(linears)
    edges = {convs[0], linears[-1]} if whole_network and convs else set(linears[-1:])

    def keep(name: str, module: nn.Module) -> bool:
        if name in edges:
            return True
        lowered = name.lower()
        is_1x1 = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
        return is_1x1 and ("shortcut" in lowered or "proj" in lowered)

    return keep


def _keep_rule(model: nn.Module, keep_dense: KeepDense) -> Callable[[str, nn.Module], bool]:
    if keep_dense is None:
        return default_keep_dense(model)
    if callable(keep_dense):
        return keep_dense
    if isinstance(keep_dense, str):
        keep_dense = [keep_dense]
    patterns = list(keep_dense)
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of zero weights), got {sparsity!r}")
    return float(sparsity)


@torch.no_grad()
def random_mask_(layer: DynamicConv2d | DynamicLinear, sparsity: float,
                 generator: torch.Generator | None = None) -> None:
    """Set `layer.mask` uniformly at random with exactly round(sparsity * numel) zeros."""
    n = layer.mask.numel()
    n_off = round(_check_sparsity(sparsity) * n)
    order = torch.randperm(n, generator=generator)
    flat = torch.ones(n, dtype=torch.bool)
    flat[order[:n_off]] = False
    layer.mask.copy_(flat.view_as(layer.mask))


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, child)


def _convert(layer: nn.Conv2d | nn.Linear, sparsity: float, generator: torch.Generator,
             rescale: bool) -> DynamicConv2d | DynamicLinear:
    dynamic = to_dynamic(layer)
    random_mask_(dynamic, sparsity, generator)
    if rescale and sparsity > 0:
        with torch.no_grad():  # keep each output's variance: fan-in shrank by (1 - sparsity)
            dynamic.weight.mul_((1.0 - sparsity) ** -0.5)
    return dynamic


def sparsify(module: nn.Module, sparsity: float, *, keep_dense: KeepDense = None,
             seed: int = 0, rescale: bool = False) -> nn.Module:
    """Replace Conv2d/Linear layers of `module` by dynamic ones with random masks, in place.

    `module` is converted in place and returned (a bare Conv2d/Linear cannot be converted in
    place: its dynamic copy is returned). `keep_dense` is a callable(name, layer) -> bool or a
    list of fnmatch patterns on dotted layer names; None applies `default_keep_dense`. Each
    converted layer gets exactly round(sparsity * numel) masked weights; the stored weights are
    left as they are (the pruner decides what to zero) unless `rescale`, which multiplies them by
    1/sqrt(1 - sparsity) so a freshly initialised sparse layer keeps the dense activation scale
    (for training from scratch; leave it off for weights taken from a teacher). Layers that are
    already dynamic are kept.
    """
    sparsity = _check_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return _convert(module, sparsity, generator, rescale)
    keep = _keep_rule(module, keep_dense)
    for name, layer in list(_candidates(module)):
        if is_dynamic(layer) or keep(name, layer):
            continue
        _set_child(module, name, _convert(layer, sparsity, generator, rescale))
    return module


def csr_nbytes(layer: DynamicConv2d | DynamicLinear) -> int:
    """Bytes of the layer's weight in CSR: fp32 values, int32 column indices and row pointers."""
    rows = layer.weight.shape[0]
    nnz = layer.nnz
    return nnz * (_VALUE_BYTES + _INDEX_BYTES) + (rows + 1) * _INDEX_BYTES


def sparsity_report(model: nn.Module) -> dict:
    """Sparsity and storage of `model`: total and per-layer sparsity, dense and CSR bytes.

    `sparsity` is the fraction of masked weights over all dynamic layers (0.0 without any);
    `nonzero_params` counts parameters outside the masks; `dense_bytes` counts every parameter as fp32; `csr_bytes` counts the dynamic layers' weights
    in CSR (int32 indices) and every other parameter as dense fp32.
    """
    layers = dynamic_layers(model)
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    sparse_weights = sum(layer.weight.numel() for _, layer in layers)
    nnz = sum(layer.nnz for _, layer in layers)
    csr_bytes = dense_bytes - 4 * sparse_weights + sum(csr_nbytes(layer) for _, layer in layers)
    params = sum(p.numel() for p in model.parameters())
    return {
        "nonzero_params": int(params - sparse_weights + nnz),
        "sparsity": (1.0 - nnz / sparse_weights) if sparse_weights else 0.0,
        "layer_sparsity": {name: layer.sparsity for name, layer in layers},
        "dense_bytes": int(dense_bytes),
        "csr_bytes": int(csr_bytes),
    }
