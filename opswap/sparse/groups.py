"""Coupled channel groups of a network, found and removed with Torch-Pruning's DependencyGraph.

A *group* is a set of coupled channels (Fang et al., "DepGraph", CVPR 2023): a conv's output
channel is also its BN's channel, the next conv's input channel, and across a residual add
every other layer writing into the same stream. A *unit* is one channel of a group with all its
rows and columns. `analyse` lists the prunable groups, `unit_importance` scores their units
with a Torch-Pruning importance, `remove_units` removes units physically and `zero_units`
finds the units whose whole contribution is exactly zero. Used by channel.py and deploy.py.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from opswap.sparse.layers import _set_child, dynamic_layers, is_dynamic, to_dynamic

IMPORTANCES = ("magnitude", "group_norm", "bn_scale", "lamp", "fpgm", "random")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class _Slot:
    """One module's part of a group: indices along its pruned dim, and the unit of each index."""

    name: str
    role: str                # "out": conv/linear filters (dim 0); "bn": BN channels; "in": input columns
    index: torch.Tensor
    unit: torch.Tensor
    module: nn.Module | None = None


@dataclass
class ChannelGroup:
    """Coupled channels rooted at `root` (a conv/linear whose output channels are the units)."""

    root: str
    size: int
    slots: list[_Slot] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"ChannelGroup({self.root!r}, size={self.size}, modules={sorted({s.name for s in self.slots})})"


# --- finding the groups ---------------------------------------------------------------------

def plain_layer(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """A plain nn.Conv2d / nn.Linear holding `layer`'s weight (masked weight if dynamic)."""
    weight = layer.masked_weight() if is_dynamic(layer) else layer.weight
    if isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                          bias=layer.bias is not None, padding_mode=layer.padding_mode,
                          device=weight.device, dtype=weight.dtype)
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
    plain.train(layer.training)
    return plain


def _plain_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy with dynamic layers replaced by plain ones; returns it and the dynamic names."""
    if is_dynamic(model):
        return plain_layer(model), [""]
    copied = copy.deepcopy(model)
    names = [name for name, _ in dynamic_layers(copied)]
    for name in names:
        _set_child(copied, name, plain_layer(copied.get_submodule(name)))
    return copied, names


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    param = next(model.parameters())
    if example_input is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise ValueError(f"{type(model).__name__} has no input_size: pass example_input, a batch "
                             "the module accepts (e.g. torch.randn(1, c_in, 32, 32) for a candidate op)")
        example_input = torch.randn(1, *size)
    return example_input.to(param.device, param.dtype)


def _name_of(model: nn.Module, module: nn.Module | str | None, what: str) -> str | None:
    if module is None or isinstance(module, str):
        if isinstance(module, str) and module:
            model.get_submodule(module)  # raises AttributeError naming the path
        return module or None
    for name, m in model.named_modules():
        if m is module:
            return name or None
    raise ValueError(f"{what} {type(module).__name__} is not a sub-module of the model being pruned")


def _within(name: str, scope: str | None) -> bool:
    return scope is None or name == scope or name.startswith(scope + ".")


def _role(dg: tp.DependencyGraph, module: nn.Module, handler) -> str | None:
    if isinstance(module, _BN):
        return "bn" if module.affine else None
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and not (module.groups == module.in_channels == module.out_channels):
            return None  # grouped convs: not supported here
        if module.groups > 1:
            return "out"  # depthwise: one filter per channel, in and out coupled
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    if isinstance(module, nn.Linear):
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    return None


def analyse(model: nn.Module, example_input: torch.Tensor | None = None, *, scope=None,
            ignored_layers: Sequence[nn.Module | str] | None = None
            ) -> tuple[tp.DependencyGraph, nn.Module, list[ChannelGroup]]:
    """The prunable channel groups of `model`: (dependency graph, the plain copy it was built on, groups).

    A group is prunable when it does not reach the network's output (the classifier's outputs and
    a bare op's output channels stay), every module it touches lies inside `scope` (a sub-module
    or its dotted path; None: anywhere) and none is in `ignored_layers`, and it holds only convs
    (plain or depthwise), linears and affine BNs. Groups and slots refer to modules by name.
    """
    scope = _name_of(model, scope, "scope")
    ignored = {_name_of(model, m, "ignored layer") for m in (ignored_layers or [])}
    plain, _ = _plain_copy(model)
    was_training = plain.training
    plain.eval()  # tracing runs a forward: keep BN running statistics as they are
    dg = tp.DependencyGraph().build_dependency(plain, _example(plain, example_input), verbose=False)
    plain.train(was_training)
    names = {m: n for n, m in plain.named_modules()}
    groups = []
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        root = names[group[0].dep.target.module]
        size = len(group[0].idxs)
        slots, ok = [], size >= 2
        for item in group:
            dep = item.dep
            module = dep.target.module
            name = names.get(module)
            role = _role(dg, module, dep.handler) if name is not None else None
            if not dep.target.outputs and role != "in":  # the channel itself is a network output
                ok = False
            if name is None:  # Torch-Pruning's own nodes: add, flatten, ...
                if not ok:
                    break
                continue
            if role is None or name in ignored or not _within(name, scope):
                ok = False
            if not ok:
                break
            slots.append(_Slot(name, role, torch.tensor(item.idxs, dtype=torch.long),
                               torch.tensor(item.root_idxs, dtype=torch.long)))
        if ok and any(s.role == "out" for s in slots):
            groups.append(ChannelGroup(root, size, slots))
    return dg, plain, groups


# --- importance and removal -----------------------------------------------------------------

def _scorer(importance: str):
    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer=None),
        "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None),
        "bn_scale": lambda: tp.importance.BNScaleImportance(normalizer=None),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2, normalizer=None),
    }[importance]()


def unit_importance(dg: tp.DependencyGraph, plain: nn.Module, group: ChannelGroup, importance: str,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """One score per unit of `group` (higher = keep); bn_scale without a BN falls back to group_norm."""
    if importance == "random":
        return torch.rand(group.size, generator=generator)
    module = plain.get_submodule(group.root)
    tp_group = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels,
                                    list(range(group.size)))
    scores = _scorer(importance)(tp_group)
    if scores is None and importance == "bn_scale":
        scores = _scorer("group_norm")(tp_group)
    return scores.detach().float().cpu()


def lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the `n` lowest scores (ties: lower index first)."""
    return torch.sort(torch.argsort(scores, stable=True)[:n]).values


def remove_units(model: nn.Module, plan: dict[str, Sequence[int]],
                 example_input: torch.Tensor | None = None) -> nn.Module:
    """A physically smaller copy of `model` without the units `plan` names ({group root: units}).

    Dynamic layers are pruned through their masked weight; afterwards their mask is the weight's
    nonzeros (an active weight that was exactly zero becomes inactive: outputs are unchanged).
    """
    plain, dynamic = _plain_copy(model)
    plan = {root: sorted(int(i) for i in units) for root, units in plan.items() if len(units)}
    if plan:
        was_training = plain.training
        plain.eval()
        dg = tp.DependencyGraph().build_dependency(plain, _example(plain, example_input), verbose=False)
        plain.train(was_training)
        for root, units in plan.items():
            module = plain.get_submodule(root)
            dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, units).prune()
    for name in dynamic:
        layer = to_dynamic(plain.get_submodule(name) if name else plain)
        with torch.no_grad():
            layer.mask.copy_(layer.weight != 0)
        if not name:
            return layer
        _set_child(plain, name, layer)
    return plain


def zero_units(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, list[int]]:
    """Units whose whole contribution is exactly zero (filters, biases, BN γ and β): removable as is."""
    _, _, groups = analyse(model, example_input)
    plan = {}
    for group in groups:
        alive = torch.zeros(group.size)
        for slot in group.slots:
            if slot.role == "in":
                continue
            module = model.get_submodule(slot.name) if slot.name else model
            weight = module.masked_weight() if is_dynamic(module) else module.weight
            for param in (weight, module.bias):
                if param is not None:
                    nonzero = param.detach().reshape(param.shape[0], -1).ne(0).any(1).cpu()
                    alive.index_add_(0, slot.unit, nonzero[slot.index].float())
        units = (alive == 0).nonzero().squeeze(1)
        if units.numel():
            plan[group.root] = units[: group.size - 1].tolist()
    return plan
