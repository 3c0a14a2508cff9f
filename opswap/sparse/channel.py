"""Channel (filter) pruning: fewer channels, a physically smaller dense network.

Channels are found and removed with Torch-Pruning's DependencyGraph (Fang et al., "DepGraph",
CVPR 2023), so every coupled layer — a conv's BN, the next conv's input, the two sides of a
residual add, a flatten feeding a linear layer — loses the same channel. One *group* is a set
of coupled channels; a *unit* is one channel of a group (all its rows and columns together).

- `channel_prune`: static, one shot. Rank each group's units with a Torch-Pruning importance
  (filter L2 norm, Li et al. 2017; group norm, DepGraph; BN scale, Liu et al. 2017; LAMP; FPGM)
  and remove the lowest fraction: a smaller dense network.
- `ChannelPruner` (`make_pruner("channel", ...)`): the same units as *masks* during training,
  so the optimiser keeps its parameters. mode "static" sets them once by importance; mode
  "dynamic" is DSR (Mostafa & Wang, ICML 2019) at channel granularity — every `period` steps
  prune active units whose relative filter norm is below a global threshold H (at most
  (1 + tolerance)·Np, lowest first), regrow as many at random (shared in proportion to each
  group's surviving units) and halve / double H to keep the count under H near Np. `finalize` removes the masked units physically.

A masked unit contributes nothing: its filters (conv/linear rows), their biases and the BN
γ and β of the channel are held at zero, so the channel is exactly 0 before and after BN (in
train and eval mode), and every activation used here (ReLU, ReLU6, pooling, +) keeps 0 at 0.
Removing it is therefore exact: the smaller model computes what the masked one computes.
A regrown unit is function-preserving rather than all-zero: its *outgoing* weights (the
consumers' input columns) start at zero, so the network's output does not change at regrowth,
while its filter is drawn afresh (kaiming-uniform, BN γ = 1, β = 0). An all-zero filter behind
a ReLU would never receive a gradient (relu'(0) = 0) and stay dead. See docs/sparsity.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from opswap.sparse.groups import (IMPORTANCES, ChannelGroup, _Slot, analyse, lowest, remove_units,
                                  unit_importance)
from opswap.sparse.layers import is_dynamic
from opswap.sparse.pruning import MaskPruner, _share

__all__ = ["channel_prune", "ChannelPruner", "ChannelSettings", "IMPORTANCES", "analyse"]

CHANNEL_MODES = ("static", "dynamic")
CRITERIA = ("l2", "bn")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class ChannelSettings:
    """Channel pruning settings; the dynamic ones mirror DSRSettings (docs/sparsity.md)."""

    mode: str = "static"           # "static": masks once by importance; "dynamic": channel DSR
    importance: str = "magnitude"  # static ranking (and the dynamic initial mask with initial="importance")
    scope: str | None = None       # dotted path of the sub-module whose internal channels are pruned
    initial: str = "random"        # dynamic: initial masks "random" (as DSR) or by "importance"
    criterion: str = "l2"          # dynamic: unit score, filter "l2" norm or |BN γ| ("bn")
    period: int = 100              # dynamic: optimiser steps between reallocations
    threshold: float = 0.5         # dynamic: initial H, relative to the group's mean active score
    prune_fraction: float = 0.02   # dynamic: Np as a fraction of the prunable units
    tolerance: float = 0.1
    gain: float = 2.0
    stop_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for key in ("period", "threshold", "prune_fraction", "tolerance", "gain", "stop_fraction", "seed"):
            value, kind = getattr(self, key), int if key in ("period", "seed") else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"prune method 'channel': {key} must be "
                                 f"{'an integer' if kind is int else 'a number'}, got {value!r}")
        if self.scope is not None and not isinstance(self.scope, str):
            raise ValueError(f"prune method 'channel': scope must be a dotted module path, got {self.scope!r}")
        for key, allowed in (("mode", CHANNEL_MODES), ("importance", IMPORTANCES),
                             ("initial", ("random", "importance")), ("criterion", CRITERIA)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"prune method 'channel': {key} = {getattr(self, key)!r} is not "
                                 f"allowed; choose one of {', '.join(allowed)}")
        if (self.period < 1 or self.threshold <= 0 or self.prune_fraction <= 0 or self.gain <= 1
                or not 0.0 <= self.stop_fraction <= 1.0 or not 0.0 <= self.tolerance < 1.0):
            raise ValueError("prune method 'channel' needs period >= 1, threshold > 0, prune_fraction > 0, "
                             f"gain > 1, 0 <= tolerance < 1 and 0 <= stop_fraction <= 1, got {self}")



def _n_off(sparsity: float, size: int) -> int:
    return min(round(sparsity * size), size - 1)  # a group keeps at least one unit



def channel_prune(model_or_block: nn.Module, sparsity: float, *, importance: str = "magnitude",
                  example_input: torch.Tensor | None = None, ignored_layers=None, scope=None,
                  seed: int = 0) -> nn.Module:
    """A physically smaller copy with `sparsity` of each prunable group's channels removed.

    `scope` (a sub-module, e.g. the candidate op at a position, or its dotted path) limits pruning
    to channels inside it, so its input and output channels (the residual stream) stay; without
    it, all of the model's internal channels are candidates and the classifier's outputs and the
    stem's input stay. The input model is left untouched.
    """
    if importance not in IMPORTANCES:
        raise ValueError(f"channel_prune: importance {importance!r} is not known; choose one of "
                         f"{', '.join(IMPORTANCES)}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"channel_prune: sparsity must be in [0, 1) (fraction of channels removed), got {sparsity!r}")
    dg, plain, groups = analyse(model_or_block, example_input, scope=scope, ignored_layers=ignored_layers)
    if not groups:
        raise ValueError("channel_prune: no prunable channel group" + (f" inside {scope!r}" if scope else ""))
    generator = torch.Generator().manual_seed(seed)
    plan = {g.root: lowest(unit_importance(dg, plain, g, importance, generator), _n_off(sparsity, g.size)).tolist()
            for g in groups}
    return remove_units(model_or_block, plan, example_input)


# --- masks during training ------------------------------------------------------------------

class ChannelPruner(MaskPruner):
    """Channel masks held through training (static) or reallocated on DSR's schedule (dynamic)."""

    method = "channel"

    def __init__(self, model: nn.Module, sparsity: float, total_steps: int, settings: ChannelSettings,
                 example_input: torch.Tensor | None = None):
        super().__init__(model, sparsity, total_steps)
        self.settings = settings
        self.example_input = example_input
        self.threshold = settings.threshold
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.log: list[dict] = []
        self.masks: dict[str, torch.Tensor] = {}
        self._bind(model)
        if not self.groups:
            where = f" inside {settings.scope!r}" if settings.scope else ""
            raise ValueError(f"prune method 'channel': no prunable channel group{where} (a group must "
                             "not reach the network's output nor leave the scope)")
        total = sum(g.size for g in self.groups)
        self.target_prunes = max(1, round(settings.prune_fraction * total))  # Np

    def _bind(self, model: nn.Module) -> None:
        self.model = model
        _, _, self.groups = analyse(model, self.example_input, scope=self.settings.scope)
        for group in self.groups:
            for slot in group.slots:
                slot.module = model.get_submodule(slot.name)

    def before_training(self, model=None, optimizer=None) -> None:
        if model is not None and model is not self.model:
            self._bind(model)
        self.optimizer = optimizer
        with torch.no_grad():
            for group in self.groups:  # random initial masks of `sparsify` are not channel masks
                for slot in group.slots:
                    if is_dynamic(slot.module):
                        slot.module.mask.fill_(True)
        if not self.masks:
            self.masks = self._initial_masks()
        self.enforce_masks()

    def _initial_masks(self) -> dict[str, torch.Tensor]:
        by_importance = self.settings.mode == "static" or self.settings.initial == "importance"
        dg, plain, _ = analyse(self.model, self.example_input, scope=self.settings.scope) if by_importance else (None,) * 3
        masks = {}
        for group in self.groups:
            n_off = _n_off(self.sparsity, group.size)
            if by_importance:
                off = lowest(unit_importance(dg, plain, group, self.settings.importance, self.generator), n_off)
            else:
                off = torch.randperm(group.size, generator=self.generator)[:n_off]
            mask = torch.ones(group.size, dtype=torch.bool)
            mask[off] = False
            masks[group.root] = mask
        return masks

    def after_step(self, step: int) -> None:
        self.step = int(step)
        self.enforce_masks()
        last = self.settings.stop_fraction * self.total_steps
        if self.settings.mode == "dynamic" and step > 0 and step % self.settings.period == 0 and step <= last:
            self.reallocate()

    def _params(self, slot: _Slot):
        if slot.role == "in":
            return [slot.module.weight]
        return [p for p in (slot.module.weight, slot.module.bias) if p is not None]

    @torch.no_grad()
    def _zero(self, group: ChannelGroup, units: torch.Tensor, roles=("out", "bn")) -> None:
        """Zero the parameters (and their optimiser state) of `units` in the slots of `roles`."""
        chosen = torch.zeros(group.size, dtype=torch.bool)
        chosen[units] = True
        for slot in group.slots:
            if slot.role not in roles:
                continue
            index = slot.index[chosen[slot.unit]]
            if not index.numel():
                continue
            for param in self._params(slot):
                dim = 1 if slot.role == "in" else 0  # input columns, else filters / channels
                idx = index.to(param.device)
                param.index_fill_(dim, idx, 0.0)
                if self.optimizer is not None:
                    for value in self.optimizer.state.get(param, {}).values():
                        if torch.is_tensor(value) and value.shape == param.shape:
                            value.index_fill_(dim, idx, 0.0)

    def enforce_masks(self) -> None:
        """Hold every masked unit's filters, biases and BN affine (and their optimiser state) at zero."""
        for group in self.groups:
            off = (~self.masks[group.root]).nonzero().squeeze(1)
            if off.numel():
                self._zero(group, off)

    def unit_scores(self, group: ChannelGroup) -> torch.Tensor:
        """Each unit's score: L2 norm of its filters, or |γ| of its BNs (criterion "bn", when present)."""
        score = torch.zeros(group.size)
        use_bn = self.settings.criterion == "bn" and any(s.role == "bn" for s in group.slots)
        for slot in group.slots:
            if slot.role != ("bn" if use_bn else "out"):
                continue
            w = slot.module.weight.detach()
            w = (w.abs() if use_bn else w.reshape(w.shape[0], -1).pow(2).sum(1)).float().cpu()
            score.index_add_(0, slot.unit, w[slot.index])
        return score if use_bn else score.sqrt()

    @torch.no_grad()
    def reallocate(self) -> int:
        """One channel-DSR step: prune units below H (relative), regrow as many at random, adapt H."""
        below = []  # (relative score, group index, unit) of every active unit under H
        for g, group in enumerate(self.groups):
            mask = self.masks[group.root]
            scores = self.unit_scores(group)
            relative = scores / scores[mask].mean().clamp_min(1e-12)
            candidates = (mask & (relative < self.threshold)).nonzero().squeeze(1).tolist()
            if len(candidates) == int(mask.sum()):  # keep the group's best unit
                candidates.remove(int(torch.where(mask, relative, torch.full_like(relative, -1.0)).argmax()))
            below += [(float(relative[u]), g, u) for u in candidates]
        # Few units per layer: relative norms crowd near 1, and one doubling of H could prune
        # half a layer at once. Take at most (1 + tolerance)·Np, the lowest first.
        cap = int((1 + self.settings.tolerance) * self.target_prunes)
        chosen = sorted(below)[:cap]
        for _, g, u in chosen:
            self.masks[self.groups[g].root][u] = False
        pruned = len(chosen)
        survivors = [int(self.masks[g.root].sum()) for g in self.groups]
        capacity = [int((~self.masks[g.root]).sum()) for g in self.groups]
        self.enforce_masks()
        grow = _share(pruned, torch.tensor(survivors), torch.tensor(capacity))
        for group, n in zip(self.groups, grow.tolist()):
            if n:
                mask = self.masks[group.root]
                inactive = (~mask).nonzero().squeeze(1)
                units = inactive[torch.randperm(inactive.numel(), generator=self.generator)[:n]]
                mask[units] = True
                self._regrow(group, units)
        threshold_before = self.threshold
        if len(below) > cap:
            self.threshold /= self.settings.gain
        elif pruned < (1 - self.settings.tolerance) * self.target_prunes:
            self.threshold *= self.settings.gain
        self.log.append({"step": self.step, "pruned": pruned, "below": len(below), "threshold": threshold_before})
        return pruned

    @torch.no_grad()
    def _regrow(self, group: ChannelGroup, units: torch.Tensor) -> None:
        """Function-preserving regrowth: outgoing columns zero, fresh filter, BN γ = 1, β = 0."""
        self._zero(group, units, roles=("out", "bn", "in"))  # also clears the optimiser state
        chosen = torch.zeros(group.size, dtype=torch.bool)
        chosen[units] = True
        for slot in group.slots:
            index = slot.index[chosen[slot.unit]].to(slot.module.weight.device)
            if not index.numel():
                continue
            if slot.role == "out":
                w = slot.module.weight
                fresh = torch.empty((index.numel(), *w.shape[1:]), dtype=w.dtype)
                nn.init.kaiming_uniform_(fresh, a=5 ** 0.5, generator=self.generator)  # nn.Conv2d's default
                w.index_copy_(0, index, fresh.to(w.device))
            elif slot.role == "bn":
                bn = slot.module
                bn.weight.index_fill_(0, index, 1.0)
                if bn.running_mean is not None:
                    bn.running_mean.index_fill_(0, index, 0.0)
                    bn.running_var.index_fill_(0, index, 1.0)

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        """A physically smaller copy of the (masked) model without its masked channels."""
        model = model if model is not None else self.model
        plan = {g.root: (~self.masks[g.root]).nonzero().squeeze(1).tolist() for g in self.groups}
        return remove_units(model, plan, self.example_input)

    def channel_sparsity(self) -> float:
        """Fraction of the prunable units that are masked."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "masks": {k: v.clone() for k, v in self.masks.items()},
                "threshold": self.threshold, "generator": self.generator.get_state(),
                "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.masks = {k: v.cpu().bool().clone() for k, v in state["masks"].items()}
        self.threshold = float(state["threshold"])
        self.generator.set_state(state["generator"].cpu())
