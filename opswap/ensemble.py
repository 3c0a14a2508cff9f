"""Seed ensembles trained as one vmapped model: k same-architecture runs in one computation.

The model-ensembling recipe of torch.func (functorch): the k members' parameters and buffers
are stacked (`stack_module_state`), one `vmap(functional_call(...))` runs every member on its
own batch, and one optimiser steps the stacked parameters. SGD and Adam act elementwise, so
the stacked optimiser is k independent optimisers, and the summed loss gives each member the
gradient of its own loss. Members differ only by seed: initial weights (when built here), data
order and augmentation. On a GPU this fills the device with several small trials for the cost
of one launch sequence; on a CPU it saves little.

BatchNorm: running statistics are stacked buffers, one set per member, updated in place under
vmap, so each member's statistics are its own (as in separate runs).

A member equals the separate run with its seed up to rounding, not bit for bit: vmap runs the k
convolutions as one grouped convolution. Adam magnifies that rounding where the exact gradient
is zero (a convolution bias right before BatchNorm), so such parameters may differ by steps of
the learning rate; the network's function does not.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from opswap.data import Batches, ImageData
from opswap.precision import autocast, memory_format, resolve_precision
from opswap.training import (TrainConfig, TrainResult, _final, _optimizer, _step_scheduler, evaluate,
                             make_scheduler, resolve_device)

__all__ = ["train_ensemble"]


def _members(models_or_builder, seeds: Sequence[int]) -> list[nn.Module]:
    if callable(models_or_builder) and not isinstance(models_or_builder, nn.Module):
        members = []
        for seed in seeds:  # as a separate run builds its model: seed first, then build
            torch.manual_seed(seed)
            members.append(models_or_builder())
        return members
    members = list(models_or_builder)
    if len(members) != len(seeds):
        raise ValueError(f"train_ensemble got {len(members)} models but {len(seeds)} seeds; one seed per model")
    return members


def _check_same_architecture(members: list[nn.Module]) -> None:
    first = {k: (v.shape, v.dtype) for k, v in members[0].state_dict().items()}
    for i, m in enumerate(members[1:], 1):
        other = {k: (v.shape, v.dtype) for k, v in m.state_dict().items()}
        if type(m) is not type(members[0]) or other != first:
            raise ValueError(f"train_ensemble needs members of one architecture; member {i} "
                             f"({type(m).__name__}) differs from member 0 ({type(members[0]).__name__})")


def _unstack(members: list[nn.Module], params: dict, buffers: dict) -> None:
    """Copy the stacked state back into the member modules."""
    with torch.no_grad():
        for i, m in enumerate(members):
            for name, p in m.named_parameters():
                p.copy_(params[name][i])
            for name, b in m.named_buffers():
                b.copy_(buffers[name][i])


def _clip_per_member(params: dict, max_norm: float) -> None:
    """clip_grad_norm_ for each member separately (a norm over one member's parameters)."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    k = grads[0].shape[0]
    norms = torch.stack([g.detach().float().reshape(k, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(k, *([1] * (g.dim() - 1))).to(g.dtype))


def train_ensemble(models_or_builder: Sequence[nn.Module] | Callable[[], nn.Module], seeds: Sequence[int],
                   data: ImageData, config: TrainConfig, device=None, *,
                   eval_split: str = "test") -> list[TrainResult]:
    """Train one member per seed as one vmapped model; a `TrainResult` per member, as `train` gives.

    `models_or_builder`: k modules of one architecture (trained in place), or a builder called
    once per seed after `torch.manual_seed(seed)` (then member i starts from the weights a
    separate run with that seed starts from). Member i uses `config` with `seed=seeds[i]` for
    its batch order and augmentation. Not supported: a teacher (`kd_weight > 0`), pruners and
    checkpoints — train those separately. `config.compile` unset means no torch.compile here
    (True compiles the vmapped step). Dropout masks are drawn per member, but not from the
    streams separate runs would draw. `images_per_s` in a member's history counts that member's
    images; the ensemble's throughput is k times it.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("train_ensemble needs at least one seed")
    if config.kd_weight > 0:
        raise ValueError("train_ensemble does not distil from a teacher (kd_weight > 0); use train()")
    if eval_split not in ("test", "val", "both", "none"):
        raise ValueError(f"eval_split must be test, val, both or none, got {eval_split!r}")
    if eval_split in ("val", "both") and data.x_val is None:
        raise ValueError("eval_split needs a validation split: load the dataset with val_fraction > 0")
    members = _members(models_or_builder, seeds)
    _check_same_architecture(members)
    device = resolve_device(device)
    cuda = device.type == "cuda"
    precision = resolve_precision(config.precision, device)
    fmt = memory_format(device, precision)
    k = len(members)
    for m in members:
        m.to(device, memory_format=fmt).train()
    params, buffers = torch.func.stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta").train()

    def member_forward(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))

    forward = torch.func.vmap(member_forward, randomness="different")
    if config.compile:  # only when asked for: compiling a vmapped functional_call is not yet tested on a GPU
        forward = torch.compile(forward)
    x_train = data.x_train.to(device)  # held once on the device, read by every member's batches
    batches = [Batches(x_train, data.y_train, config.batch_size, mean=data.mean, std=data.std,
                       normalize=config.normalize, augment=config.augment, shuffle=True, seed=seed,
                       device=device, channels_last=fmt is torch.channels_last) for seed in seeds]
    steps_per_epoch = len(batches[0])
    optimizer = _optimizer(params.values(), config)  # train()'s optimiser over the stacked parameters
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    histories: list[list[dict]] = [[] for _ in seeds]
    errors: list[str | None] = [None] * k
    last_eval: list[dict[str, dict]] = [{} for _ in seeds]
    step = 0

    def evaluate_member(i: int, split: str) -> dict:
        return evaluate(members[i], data, split, batch_size=config.eval_batch_size, device=device,
                        normalize=config.normalize, precision=precision)

    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.int64)
        seen, lr = 0, optimizer.param_groups[0]["lr"]
        for i, pairs in enumerate(zip(*batches)):
            x = torch.stack([xb for xb, _ in pairs])
            y = torch.stack([yb for _, yb in pairs])
            with autocast(device, precision):
                logits = forward(params, buffers, x)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none",
                                     label_smoothing=config.label_smoothing).view(k, -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if config.grad_clip > 0:
                _clip_per_member(params, config.grad_clip)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            _step_scheduler(scheduler)
            step += 1
            loss_sum += losses.detach() * y.shape[1]
            correct += (logits.detach().argmax(2) == y).sum(1)
            seen += y.shape[1]
            if not cuda or i % 25 == 24 or i == steps_per_epoch - 1:
                bad = ~torch.isfinite(loss_sum)
                for j in bad.nonzero().flatten().tolist():
                    if errors[j] is None:  # that member stops here; the others train on
                        errors[j] = f"loss became {losses[j].item()} at epoch {epoch + 1}, step {step}"
        if cuda:
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        _unstack(members, params, buffers)
        losses_, correct_ = loss_sum.tolist(), correct.tolist()
        for j in range(k):
            if errors[j] is not None:
                continue
            row = {"epoch": epoch + 1, "train_loss": losses_[j] / seen, "train_acc": 100.0 * correct_[j] / seen}
            wanted = {"test": eval_split in ("test", "both") or epoch + 1 == config.epochs,
                      "val": eval_split in ("val", "both")}
            for split, now in wanted.items():
                if now:
                    last_eval[j][split] = evaluate_member(j, split)
                row[f"{split}_loss"] = last_eval[j][split]["loss"] if now else None
                row[f"{split}_acc"] = last_eval[j][split]["acc"] if now else None
            row.update(lr=lr, seconds=time.perf_counter() - t0, images_per_s=seen / train_seconds)
            histories[j].append(row)
    results = []
    for j in range(k):
        if errors[j] is not None:
            results.append(TrainResult("diverged", histories[j], _final(histories[j], last_eval[j], precision),
                                       errors[j], precision))
            continue
        for split in ("test", "val") if data.x_val is not None else ("test",):
            if split not in last_eval[j]:
                last_eval[j][split] = evaluate_member(j, split)
        results.append(TrainResult("ok", histories[j], _final(histories[j], last_eval[j], precision),
                                   precision=precision))
    return results

