"""Block positions of a network, which ops fit where, and `swap` (one call, a new model).

Positions are numbered 1..3n in forward order, as in the operation-substitution paper. Shapes,
parameters and multiply-accumulates are read off the modules themselves (a forward pass under
torch.utils.flop_counter), never from hand-kept tables.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from opswap.ops import DEFAULT_CANDIDATES, OpError, OpSpec, create_op, get_op, list_ops, parse_op

__all__ = ["Position", "positions", "valid_ops", "swap", "complexity", "count_params", "op_at"]


@dataclass(frozen=True)
class Position:
    """One block position: where it is, the shape contract, and what sits there now."""

    index: int
    path: str
    c_in: int
    c_out: int
    stride: int
    resolution: int
    params: int
    macs: int

    @property
    def identity_valid(self) -> bool:
        return self.c_in == self.c_out and self.stride == 1


def count_params(module: nn.Module) -> int:
    """Number of parameters (BN affine included, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def complexity(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of one forward pass on a zero input of `input_shape`."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        module.train(was_training)
    return count_params(module), counter.get_total_flops() // 2


def _specs(model: nn.Module):
    specs = getattr(model, "position_specs", None)
    if specs is None:
        raise OpError(f"{type(model).__name__} has no numbered block positions "
                      "(build it with opswap.build_model, e.g. 'wrn-40-2')")
    return specs


def _input_resolutions(model: nn.Module) -> dict[str, int]:
    """Spatial size of each position's input, from one forward pass with pre-hooks."""
    sizes: dict[str, int] = {}
    hooks = [model.get_submodule(s.path).register_forward_pre_hook(
        lambda m, args, path=s.path: sizes.__setitem__(path, args[0].shape[-1])) for s in _specs(model)]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *model.input_size), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def positions(model: nn.Module) -> list[Position]:
    """The model's block positions, 1-based, with shapes, parameters and MACs of the current op."""
    specs = _specs(model)
    if not specs:
        return []
    sizes = _input_resolutions(model)
    out = []
    for s in specs:
        block = model.get_submodule(s.path)
        r = sizes[s.path]
        params, macs = complexity(block, (1, s.c_in, r, r))
        out.append(Position(s.index, s.path, s.c_in, s.c_out, s.stride, r, params, macs))
    return out


def _position(model: nn.Module, position: Any):
    specs = _specs(model)
    if isinstance(position, bool) or not isinstance(position, int):
        raise OpError(f"a position must be an integer 1..{len(specs)}, got {position!r}")
    if not 1 <= position <= len(specs):
        what = f"1..{len(specs)}" if specs else "none (this model has no block positions)"
        raise OpError(f"position {position} is out of range; valid positions: {what}")
    return specs[position - 1]


def op_at(model: nn.Module, position: int) -> nn.Module:
    """The module now sitting at a position."""
    return model.get_submodule(_position(model, position).path)


def _fits(spec: OpSpec, c_in: int, c_out: int, stride: int) -> bool:
    return not get_op(spec.family).same_shape_only or (c_in == c_out and stride == 1)


def valid_ops(model: nn.Module, position: int, candidates: list[str] | None = None) -> list[str]:
    """Canonical names of the candidates (default: the seven of the study plus users' ops) that fit."""
    s = _position(model, position)
    if candidates is None:
        user = [n for n in list_ops() if parse_op(n).family not in {parse_op(c).family for c in DEFAULT_CANDIDATES}]
        candidates = list(DEFAULT_CANDIDATES) + user
    specs = [parse_op(c) for c in candidates]
    return [sp.name for sp in specs if _fits(sp, s.c_in, s.c_out, s.stride)]


def _build(op: Any, s, model: nn.Module) -> nn.Module:
    if isinstance(op, nn.Module):
        module = copy.deepcopy(op)
        # A module given by the user must honour the position's shape contract.
        r = _input_resolutions(model)[s.path]
        probe = next(module.parameters(), None)
        x = torch.zeros(1, s.c_in, r, r, device=probe.device if probe is not None else "cpu")
        was = module.training
        module.eval()
        with torch.no_grad():
            y = module(x)
        module.train(was)
        want = (1, s.c_out, -(-r // s.stride), -(-r // s.stride))
        if tuple(y.shape) != want:
            raise OpError(f"module {type(op).__name__} at position {s.index} maps {tuple(x.shape)} to "
                          f"{tuple(y.shape)}, but the position needs {want}")
        return module
    spec = parse_op(op)
    if not _fits(spec, s.c_in, s.c_out, s.stride):
        raise OpError(f"op {spec.name!r} does not fit position {s.index} ({s.c_in}→{s.c_out} channels, "
                      f"stride {s.stride}): it cannot change the shape. Ops that fit there: "
                      f"{', '.join(valid_ops(model, s.index))}")
    return create_op(spec, s.c_in, s.c_out, s.stride)


def swap(model: nn.Module, ops: Mapping[int, Any]) -> nn.Module:
    """A new model with `ops[position]` at each given position; the input model is untouched.

    An op is a registry name (`"mbconv_e3_k5"`), a `(name, params)` pair, or an nn.Module.
    Everything not swapped keeps its weights; a new op gets the device and dtype of the block it
    replaces and the model's train/eval mode.
    """
    if not isinstance(ops, Mapping) or not ops:
        raise OpError("swap needs a non-empty mapping {position: op}, e.g. {7: 'mbconv'}")
    specs = {p: _position(model, p) for p in ops}
    built = {p: _build(op, specs[p], model) for p, op in ops.items()}  # validate all before copying
    new = copy.deepcopy(model)
    for p, module in built.items():
        parent_path, _, leaf = specs[p].path.rpartition(".")
        parent = new.get_submodule(parent_path) if parent_path else new
        old = getattr(parent, leaf)
        ref = next(old.parameters(), None)
        if ref is not None:
            module = module.to(device=ref.device, dtype=ref.dtype)
        module.train(new.training)
        setattr(parent, leaf, module)
    return new


def positions_table(model_name: str, num_classes: int = 10, candidates: list[str] | None = None) -> list[dict]:
    """One row per position: shape contract, the block's params/MACs, each candidate's params."""
    from opswap.models import build_model

    model = build_model(model_name, num_classes)
    names = [parse_op(c).name for c in (candidates or DEFAULT_CANDIDATES)]
    rows = []
    for p in positions(model):
        row = {"pos": p.index, "path": p.path, "c_in": p.c_in, "c_out": p.c_out, "stride": p.stride,
               "input": f"{p.resolution}x{p.resolution}", "identity_valid": p.identity_valid,
               "params": p.params, "macs": p.macs}
        for name in names:
            fits = not get_op(parse_op(name).family).same_shape_only or p.identity_valid
            row[name] = count_params(create_op(name, p.c_in, p.c_out, p.stride)) if fits else None
        rows.append(row)
    return rows
