"""Compressed Sparse Row storage and inference for dynamic layers (the seed-000 CSR export).

Export writes one safetensors file: each dynamic layer's weight as CSR arrays (int32 row
pointers and column indices, fp32 values; conv weights as (c_out, c_in/groups·k·k)), every
other tensor of the state dict dense, and the shapes in the metadata. The CSR structure is the
layer's mask, so an active weight that happens to be zero survives the round trip exactly.
`to_sparse_inference` swaps dynamic layers for modules that compute with CSR matmul (linear),
CSR matmul over (c_in, N·H·W) (1x1 conv) and im2col + CSR matmul (other convs), or, given an
example input, picks per layer between dense, CSR and a channel-compacted form by measurement.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from opswap.sparse.layers import DynamicConv2d, DynamicLinear, dynamic_layers, is_dynamic, to_dynamic

FORMAT = "opswap-csr"
_CSR_PARTS = ("crow_indices", "col_indices", "values")



def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """torch.sparse_csr_tensor with its invariants checked and its beta-state notice silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=True)


def _csr_arrays(layer: DynamicConv2d | DynamicLinear) -> dict[str, torch.Tensor]:
    """The layer's masked weight as (crow, col, values), rows = output channels; arrays are fresh."""
    mask = layer.mask.detach().cpu().reshape(layer.mask.shape[0], -1)
    weight = layer.weight.detach().cpu().reshape(mask.shape)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int32)
    crow[1:] = mask.sum(1).cumsum(0)
    col = mask.nonzero()[:, 1].to(torch.int32)
    return {"crow_indices": crow, "col_indices": col, "values": weight[mask].float()}


def export_csr(model: nn.Module, path: str | Path) -> int:
    """Write `model` to `path` (safetensors) with dynamic-layer weights in CSR; returns file bytes."""
    dynamic = dict(dynamic_layers(model))
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in dynamic and leaf in ("weight", "mask"):
            continue
        tensors[key] = value.detach().cpu().contiguous().clone()  # clone: no oversized storage
    for name, layer in dynamic.items():
        for part, array in _csr_arrays(layer).items():
            tensors[f"{name}.weight.{part}"] = array.contiguous().clone()
        shapes[name] = list(layer.weight.shape)
    metadata = {"format": FORMAT, "version": "1", "csr_shapes": json.dumps(shapes)}
    from opswap.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path.stat().st_size


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, child)


def read_csr_metadata(path: str | Path) -> dict[str, list[int]]:
    """The dense weight shape of every CSR layer stored in `path`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an opswap CSR file (metadata format is "
                         f"{metadata.get('format')!r}, expected {FORMAT!r}); write one with export_csr")
    return {name: list(shape) for name, shape in json.loads(metadata["csr_shapes"]).items()}


@torch.no_grad()
def load_csr(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a CSR file written by `export_csr` into `model` (same architecture), in place.

    Layers stored in CSR become dynamic layers whose mask is the CSR structure; returns `model`.
    """
    shapes = read_csr_metadata(path)
    tensors = load_file(str(path))
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not any(key.endswith(f".weight.{part}") for part in _CSR_PARTS):
            state[key] = value
    for name, shape in shapes.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: CSR layer {name!r} does not exist in the model "
                             f"({type(model).__name__}); is it the same architecture?") from None
        if tuple(layer.weight.shape) != tuple(shape):
            raise ValueError(f"{path}: layer {name!r} has shape {tuple(shape)} in the file but "
                             f"{tuple(layer.weight.shape)} in the model")
        if not is_dynamic(layer):
            layer = to_dynamic(layer)
            _set_child(model, name, layer)
        crow = tensors[f"{name}.weight.crow_indices"].long()
        col = tensors[f"{name}.weight.col_indices"].long()
        rows = torch.repeat_interleave(torch.arange(shape[0]), crow[1:] - crow[:-1])
        mask = torch.zeros(shape[0], col.new_tensor(shape[1:]).prod().item(), dtype=torch.bool)
        mask[rows, col] = True
        mask = mask.reshape(shape)
        weight = torch.zeros(shape, dtype=torch.float32)
        weight[mask] = tensors[f"{name}.weight.values"]
        state[f"{name}.weight"] = weight
        state[f"{name}.mask"] = mask
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model


class SparseLinear(nn.Module):
    """Linear layer computing with a CSR weight (torch.sparse.mm)."""

    def __init__(self, layer: DynamicLinear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        arrays = _csr_arrays(layer)
        weight = _csr_tensor(*(arrays[p] for p in _CSR_PARTS), (self.out_features, self.in_features))
        self.register_buffer("weight", weight.to(layer.weight.device), persistent=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """Conv2d computing as im2col (F.unfold) followed by a CSR matmul."""

    def __init__(self, layer: DynamicConv2d):
        super().__init__()
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"sparse inference supports zero padding given as numbers, got "
                             f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r}")
        self.out_channels, self.kernel_size = layer.out_channels, layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        arrays = _csr_arrays(layer)
        cols = layer.weight[0].numel()  # c_in/groups·k·k
        group_rows = layer.out_channels // layer.groups
        # groups > 1: the weight is block-diagonal over the unfolded channels; shift each
        # group's column indices to its own block.
        row_of = torch.repeat_interleave(torch.arange(layer.out_channels),
                                         (arrays["crow_indices"][1:] - arrays["crow_indices"][:-1]).long())
        offset = (row_of // group_rows) * cols
        col = (arrays["col_indices"].long() + offset).to(torch.int32)
        weight = _csr_tensor(arrays["crow_indices"], col, arrays["values"],
                             (layer.out_channels, cols * layer.groups))
        self.register_buffer("weight", weight.to(layer.weight.device), persistent=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        h_out = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        w_out = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        cols = F.unfold(x, k, dilation=d, padding=p, stride=s)           # (n, c·k·k, L)
        # One CSR matmul per image: cheaper than transposing the whole im2col matrix.
        y = torch.stack([torch.sparse.mm(self.weight, image) for image in cols])  # (n, c_out, L)
        y = y.view(n, self.out_channels, h_out, w_out)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class SparseConv1x1(nn.Module):
    """1x1 conv as one CSR matmul on (c_in, N·H·W): no im2col; stride by slicing the input."""

    def __init__(self, layer: DynamicConv2d):
        super().__init__()
        if not is_pointwise(layer):
            raise ValueError(f"SparseConv1x1 needs an ungrouped, unpadded 1x1 conv, got {layer}")
        self.out_channels, self.stride = layer.out_channels, tuple(layer.stride)
        arrays = _csr_arrays(layer)
        weight = _csr_tensor(*(arrays[p] for p in _CSR_PARTS), (layer.out_channels, layer.in_channels))
        self.register_buffer("weight", weight.to(layer.weight.device), persistent=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        n, c, h, w = x.shape
        y = torch.sparse.mm(self.weight, x.transpose(0, 1).reshape(c, n * h * w))  # (c_out, N·H·W)
        y = y.view(self.out_channels, n, h, w).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous()


def is_pointwise(layer: nn.Module) -> bool:
    """An ungrouped 1x1 conv without padding: a matmul over channels."""
    return (isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1
            and tuple(layer.padding) == (0, 0) and tuple(layer.dilation) == (1, 1))


def csr_module(layer: DynamicConv2d | DynamicLinear) -> nn.Module:
    """The CSR inference module of one dynamic layer (1x1 convs without im2col)."""
    if isinstance(layer, DynamicLinear):
        return SparseLinear(layer)
    return SparseConv1x1(layer) if is_pointwise(layer) else SparseConv2d(layer)


def csr_stored_nbytes(module: nn.Module) -> int:
    """Bytes a CSR inference module stores: int32 indices, fp32 values, and its bias."""
    weight = module.weight
    nnz = weight.values().numel()
    bias = 0 if module.bias is None else 4 * module.bias.numel()
    return nnz * 8 + weight.crow_indices().numel() * 4 + bias
