"""Pruners that drive the dynamic layers: DSR and its comparators.

- "dsr": Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019). Every `period` steps,
  prune active weights with |w| < H (one global threshold); K = number pruned; regrow K weights
  at random inactive positions, zero-initialised, shared among layers in proportion to each
  layer's surviving weights; then halve H if K > (1 + tolerance)·Np, double it if
  K < (1 - tolerance)·Np. Total nonzeros stay constant.
- "static": magnitude pruning once, before training (per layer, or one global ranking); masks fixed.
- "gradual": Zhu & Gupta (2017) cubic ramp s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³),
  per-layer magnitude pruning every `period` steps; pruned weights never return.
- "channel": whole channels (filters) as the unit, static by importance or dynamic (DSR's rule
  per channel); `finalize` removes them physically. See opswap/sparse/channel.py.
- "nm": an N:M pattern (2:4 by default) along each row, held through training. See nm.py.
- "none": masks (if any) are only enforced.

Every pruner keeps masked weights at zero after each optimiser step and clears the optimiser
state (SGD momentum, Adam exp_avg / exp_avg_sq) at masked positions, so no update can
resurrect a pruned weight.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from opswap.sparse.layers import DynamicConv2d, DynamicLinear, dynamic_layers



@dataclass(frozen=True)
class DSRSettings:
    """DSR settings; defaults are the official ones (see docs/sparsity.md)."""

    period: int = 100              # optimiser steps between reallocations
    threshold: float = 1e-3        # initial global pruning threshold H
    prune_fraction: float = 0.01   # Np as a fraction of the weights of the dynamic layers
    tolerance: float = 0.1         # H moves when K leaves [(1 - tol)·Np, (1 + tol)·Np]
    gain: float = 2.0              # H is halved / doubled
    stop_fraction: float = 1.0     # no reallocation after this fraction of the training steps
    seed: int = 0                  # regrowth positions

    def __post_init__(self):
        if (self.period < 1 or self.threshold <= 0 or self.prune_fraction <= 0
                or not 0.0 <= self.stop_fraction <= 1.0):
            raise ValueError("dsr needs period >= 1, threshold > 0, prune_fraction > 0 and "
                             f"0 <= stop_fraction <= 1, got {self}")


@dataclass(frozen=True)
class StaticSettings:
    """Static magnitude pruning: once, before training."""

    scope: str = "layer"           # "layer": each layer at the target; "global": one ranking

    def __post_init__(self):
        if self.scope not in ("layer", "global"):
            raise ValueError(f"static pruning: scope must be 'layer' or 'global', got {self.scope!r}")


@dataclass(frozen=True)
class GradualSettings:
    """Zhu & Gupta gradual magnitude pruning."""

    begin: float = 0.0             # ramp start, as a fraction of the training steps
    end: float = 0.5               # ramp end (target reached), as a fraction of the training steps
    period: int = 100              # optimiser steps between pruning events

    def __post_init__(self):
        if not 0.0 <= self.begin < self.end <= 1.0 or self.period < 1:
            raise ValueError("gradual pruning needs 0 <= begin < end <= 1 and period >= 1, got "
                             f"begin={self.begin}, end={self.end}, period={self.period}")


def _settings(cls, method: str, options: dict):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"prune method {method!r}: unknown option(s) {unknown}; "
                         f"allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in options.items():
        _check_option(method, name, value, hints[name])
    try:
        return cls(**options)
    except TypeError as err:  # a value of the wrong type, e.g. period="ten"
        raise ValueError(f"prune method {method!r}: {err}") from None


def _check_option(method: str, name: str, value, kind) -> None:
    """An option's value has its field's type: an int is an int (not 2.5, not true), a float is finite."""
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        want = "a finite number"
    elif kind is str:
        ok, want = isinstance(value, str), "a string"
    elif kind is bool:
        ok, want = isinstance(value, bool), "true or false"
    else:
        return
    if not ok:
        raise ValueError(f"prune method {method!r}: option {name} = {value!r} is not allowed; {name} is {want}")


class MaskPruner:
    """Base pruner: after every optimiser step, zero masked weights and their optimiser state."""

    method = "none"

    def __init__(self, model: nn.Module, sparsity: float, total_steps: int):
        self.model = model
        self.sparsity = float(sparsity)
        self.total_steps = int(total_steps)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0

    @property
    def layers(self) -> list[tuple[str, DynamicConv2d | DynamicLinear]]:
        return dynamic_layers(self.model)

    def before_training(self, model: nn.Module | None = None,
                        optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remember the model and optimiser and make the stored weights agree with the masks."""
        if model is not None:
            self.model = model
        self.optimizer = optimizer
        self.enforce_masks()

    def after_step(self, step: int) -> None:
        """Called after optimiser step `step` (1 for the first): keep pruned weights at zero."""
        self.step = int(step)
        self.enforce_masks()

    @torch.no_grad()
    def enforce_masks(self) -> None:
        """Zero every masked weight and the optimiser state that belongs to it."""
        for _, layer in self.layers:
            layer.weight.mul_(layer.mask)
            if self.optimizer is None:
                continue
            for value in self.optimizer.state.get(layer.weight, {}).values():
                if torch.is_tensor(value) and value.shape == layer.weight.shape:
                    value.mul_(layer.mask)

    def state_dict(self) -> dict:
        """Pruner state for checkpoints (the masks themselves live in the model's buffers)."""
        return {"method": self.method, "step": self.step, "sparsity": self.sparsity,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        if state.get("method") != self.method:
            raise ValueError(f"pruner state is for method {state.get('method')!r}, not {self.method!r}")
        self.step = int(state["step"])


@torch.no_grad()
def _magnitude_mask_(layer: DynamicConv2d | DynamicLinear, keep: int) -> None:
    """Keep the `keep` largest |w| among the layer's active weights."""
    scores = (layer.weight * layer.mask).abs().flatten()
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat[torch.topk(scores, keep, sorted=False).indices] = True
    layer.mask.copy_(flat.view_as(layer.mask))


class StaticPruner(MaskPruner):
    """Magnitude pruning once at `before_training`; masks stay fixed."""

    method = "static"

    def __init__(self, model, sparsity, total_steps, settings: StaticSettings):
        super().__init__(model, sparsity, total_steps)
        self.settings = settings

    @torch.no_grad()
    def before_training(self, model=None, optimizer=None) -> None:
        if model is not None:
            self.model = model
        layers = [layer for _, layer in self.layers]
        for layer in layers:  # rank the full dense weights, not the random initial mask
            layer.mask.fill_(True)
        if self.settings.scope == "layer":
            for layer in layers:
                _magnitude_mask_(layer, layer.mask.numel() - round(self.sparsity * layer.mask.numel()))
        elif layers:
            scores = torch.cat([layer.weight.abs().flatten() for layer in layers])
            keep = scores.numel() - round(self.sparsity * scores.numel())
            chosen = torch.zeros_like(scores, dtype=torch.bool)
            chosen[torch.topk(scores, keep, sorted=False).indices] = True
            for layer, part in zip(layers, chosen.split([lay.mask.numel() for lay in layers])):
                layer.mask.copy_(part.view_as(layer.mask))
        super().before_training(None, optimizer)


class GradualPruner(MaskPruner):
    """Zhu & Gupta cubic sparsity ramp with per-layer magnitude pruning."""

    method = "gradual"

    def __init__(self, model, sparsity, total_steps, settings: GradualSettings):
        super().__init__(model, sparsity, total_steps)
        self.settings = settings
        self.current = 0.0

    def target_at(self, step: int) -> float:
        """The ramp's sparsity after `step` optimiser steps."""
        t0 = self.settings.begin * self.total_steps
        t1 = self.settings.end * self.total_steps
        progress = min(max((step - t0) / max(t1 - t0, 1e-9), 0.0), 1.0)
        return self.sparsity * (1.0 - (1.0 - progress) ** 3)

    def before_training(self, model=None, optimizer=None) -> None:
        if model is not None:
            self.model = model
        for _, layer in self.layers:  # the ramp starts dense
            layer.mask.fill_(True)
        self.current = 0.0
        super().before_training(None, optimizer)

    def after_step(self, step: int) -> None:
        self.step = int(step)
        target = self.target_at(step)
        last_event = step >= self.settings.end * self.total_steps and self.current < self.sparsity
        if target > self.current and (step % self.settings.period == 0 or last_event):
            if last_event:
                target = self.sparsity
            for _, layer in self.layers:
                _magnitude_mask_(layer, layer.mask.numel() - round(target * layer.mask.numel()))
            self.current = target
        self.enforce_masks()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.current = float(state["current"])


def _share(total: int, weights: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Split `total` into integers proportional to `weights`, none above its `capacity`."""
    counts = torch.zeros_like(capacity)
    remaining = min(int(total), int(capacity.sum()))
    open_ = capacity > 0
    while remaining > 0:
        w = torch.where(open_, weights, torch.zeros_like(weights)).double()
        if w.sum() <= 0:  # nothing survives anywhere: share by free room instead
            w = torch.where(open_, (capacity - counts).double(), torch.zeros_like(w))
        ideal = remaining * w / w.sum()
        share = ideal.floor().long()
        leftover = remaining - int(share.sum())
        if leftover:  # largest remainders get the rest
            share[torch.topk(ideal - share, leftover).indices] += 1
        share = torch.minimum(share, capacity - counts)
        counts += share
        remaining -= int(share.sum())
        open_ = counts < capacity
    return counts


class DSRPruner(MaskPruner):
    """Dynamic Sparse Reparameterization: adaptive global threshold, prune and regrow."""

    method = "dsr"

    def __init__(self, model, sparsity, total_steps, settings: DSRSettings):
        super().__init__(model, sparsity, total_steps)
        self.settings = settings
        self.threshold = settings.threshold
        self.generator = torch.Generator().manual_seed(settings.seed)
        total = sum(layer.weight.numel() for _, layer in self.layers)
        self.target_prunes = max(1, round(settings.prune_fraction * total))  # Np
        self.log: list[dict] = []

    def after_step(self, step: int) -> None:
        self.step = int(step)
        self.enforce_masks()
        last = self.settings.stop_fraction * self.total_steps
        if step > 0 and step % self.settings.period == 0 and step <= last:
            self.reallocate()

    @torch.no_grad()
    def reallocate(self) -> int:
        """One DSR step: prune below H, regrow the same number at random, adapt H; returns K."""
        layers = [layer for _, layer in self.layers]
        if not layers:
            return 0
        survivors, capacity = [], []
        pruned = 0
        for layer in layers:
            drop = layer.mask & (layer.weight.abs() < self.threshold)
            pruned += int(drop.sum())
            layer.mask &= ~drop
            layer.weight.mul_(layer.mask)
            survivors.append(layer.nnz)
            capacity.append(layer.mask.numel() - layer.nnz)
        # Clear the optimiser state of the pruned weights now: a weight regrown below at a
        # position pruned in this same step must start from zero, not from its old momentum.
        self.enforce_masks()
        grow = _share(pruned, torch.tensor(survivors), torch.tensor(capacity))
        for layer, n in zip(layers, grow.tolist()):
            if n:
                flat = layer.mask.flatten()  # logical order, also for channels_last masks
                inactive = (~flat).nonzero().squeeze(1)
                order = torch.randperm(inactive.numel(), generator=self.generator)[:n]
                flat[inactive[order.to(inactive.device)]] = True
                layer.mask.copy_(flat.view_as(layer.mask))  # weights there are zero: zero-initialised regrowth
        self.enforce_masks()
        threshold_before = self.threshold
        if pruned > (1 + self.settings.tolerance) * self.target_prunes:
            self.threshold /= self.settings.gain
        elif pruned < (1 - self.settings.tolerance) * self.target_prunes:
            self.threshold *= self.settings.gain
        self.log.append({"step": self.step, "pruned": pruned, "threshold": threshold_before})
        return pruned

    def state_dict(self) -> dict:
        return {**super().state_dict(), "threshold": self.threshold,
                "generator": self.generator.get_state(), "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.threshold = float(state["threshold"])
        self.generator.set_state(state["generator"].cpu())
