"""Held-out distillation loss of a LANA weight bank (Molchanov et al., ECCV 2022): how well each
distilled candidate imitates the teacher's block on images it did not train on.

The teacher runs once per batch, in eval mode and without gradients; the engine's hooks capture
every bank position's input x_p and output T_p(x_p) in that one pass, and each candidate (in eval
mode) is scored by the normalised MSE ||S(x_p) - T_p(x_p)||^2 / ||T_p(x_p)||^2 per image,
averaged over all held-out images. The bank's own `distill_loss` is a training-loss average and
rewards memorising; this one ranks candidates for assembly.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from opswap.distill.bank import WeightBank
from opswap.distill.engine import _Capture, _position_table, normalised_mse, resolve_device

__all__ = ["heldout_distill_loss"]


def _held_out_batches(data: Any, split: str | None, batch_size: int, normalize: str,
                      device: torch.device) -> Iterable[torch.Tensor]:
    from opswap.data import Batches

    if split is None:
        split = "val" if getattr(data, "x_val", None) is not None else "test"
    if split == "train":
        raise ValueError("held-out distillation loss needs images the bank did not train on: split 'val' or 'test'")
    x, y = data.split(split)
    for xb, _ in Batches(x, y, batch_size, mean=data.mean, std=data.std, normalize=normalize, device=device):
        yield xb


def heldout_distill_loss(teacher: nn.Module, bank: WeightBank, data_or_batches: Any, *, batches: int | None = None,
                         batch_size: int = 256, split: str | None = None, device: str | torch.device | None = None,
                         check: bool = True) -> dict[tuple[int, str], float]:
    """{(position, op): normalised MSE on held-out images} for every bank entry, one teacher pass per batch.

    `data_or_batches` is an ImageData (its `split`: val when it has one, else test; scaled as the
    bank was distilled) or an iterable of already scaled image batches (tensors or (x, y) pairs).
    `batches` caps how many batches are used (None: all).
    """
    from opswap.ops import create_op

    if check:
        bank.check_teacher(teacher)
    if len(bank) == 0:
        return {}
    device = resolve_device(device)
    frozen = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    table = _position_table(frozen)
    entries = list(bank)
    bad = sorted({e.position for e in entries} - set(table))
    if bad:
        raise ValueError(f"the bank holds positions {bad} that this teacher does not have (1..{len(table)})")
    students = []
    for e in entries:
        module = create_op(e.op, e.c_in, e.c_out, e.stride)
        module.load_state_dict(e.state_dict)
        students.append(module.to(device).eval())
    if hasattr(data_or_batches, "split") and hasattr(data_or_batches, "mean"):
        source = _held_out_batches(data_or_batches, split, batch_size, bank.settings.get("normalize", "standard"),
                                   device)
    else:
        source = data_or_batches
    sums = torch.zeros(len(entries), dtype=torch.float64, device=device)
    count = 0
    capture = _Capture(frozen, [table[p] for p in sorted({e.position for e in entries})], stop_early=True)
    try:
        with torch.no_grad():
            for i, item in enumerate(source):
                if batches is not None and i >= batches:
                    break
                x = (item[0] if isinstance(item, (tuple, list)) else item).to(device)
                captured = capture.run(frozen, x)
                for j, (e, module) in enumerate(zip(entries, students)):
                    xin, target = captured[e.position]
                    sums[j] += normalised_mse(module(xin), target).double() * len(x)
                count += len(x)
    finally:
        capture.close()
    if count == 0:
        raise ValueError("no held-out images: the data or batches given were empty")
    return {e.key: v for e, v in zip(entries, (sums / count).cpu().tolist())}
