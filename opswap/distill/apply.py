"""Using a LANA weight bank (Molchanov et al., ECCV 2022): teacher checkpoints, substituted
networks (teacher weights + one bank entry), the random-init ablation and replace-1 accuracy
(the teacher with only one block swapped for its distilled candidate, no fine-tuning).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opswap.distill.bank import WeightBank
from opswap.distill.engine import resolve_device
from opswap.models import build_model
from opswap.ops import create_op
from opswap.substitution import positions, swap

__all__ = ["load_teacher", "substituted_model", "random_init_model", "replace1_accuracy"]


def load_teacher(path: str | Path, model_name: str, num_classes: int = 10) -> nn.Module:
    """Build `model_name` and load its weights from a safetensors checkpoint (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"teacher checkpoint {str(path)!r} is not a safetensors file ({err}); opswap "
                         "loads weights only from safetensors, never from pickled .pt/.pth files") from None
    model = build_model(model_name, num_classes=num_classes)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 "shape mismatches: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in wrong[:3]) if wrong else ""]
        hint = (f" Is num_classes={num_classes} right?" if any(k.startswith("fc.") for k in wrong) else
                f" Was it saved from another model than {model_name!r}?")
        raise ValueError(f"teacher checkpoint {str(path)!r} does not fit {model_name!r}: "
                         + "; ".join(p for p in parts if p) + "." + hint)
    model.load_state_dict(state)
    return model.eval()


def substituted_model(teacher: nn.Module, bank: WeightBank, position: int, op: Any, *,
                      check: bool = True) -> nn.Module:
    """A new model: the teacher with `op` at `position`, weights from the bank; teacher untouched."""
    entry = bank.entry(position, op)
    if check:
        bank.check_teacher(teacher)
    module = create_op(entry.op, entry.c_in, entry.c_out, entry.stride)
    module.load_state_dict(entry.state_dict)
    return swap(teacher, {entry.position: module})


def random_init_model(teacher: nn.Module, position: int, op: Any, seed: int = 0) -> nn.Module:
    """The `init = "random"` ablation: a freshly initialised `op` at `position`, the teacher elsewhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pos = {p.index: p for p in positions(teacher)}.get(position)
        if pos is None:
            return swap(teacher, {position: op})  # swap names the valid positions
        module = create_op(op, pos.c_in, pos.c_out, pos.stride)
    return swap(teacher, {position: module})


def replace1_accuracy(teacher: nn.Module, bank: WeightBank, data: Any, *, split: str = "test",
                      batch_size: int = 1000, device: str | torch.device | None = None,
                      progress: bool = False, precision: str = "auto") -> dict[tuple[int, str], float]:
    """Accuracy (percent) of the teacher with only one block swapped, for every bank entry.

    Fills each entry's `replace1_acc` and returns {(position, op): accuracy}. Evaluation runs
    under inference mode in `precision` (auto | fp32 | bf16, as in `opswap.precision`).
    """
    from opswap.precision import memory_format, resolve_precision
    from opswap.training import evaluate

    bank.check_teacher(teacher)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    fmt = memory_format(device, precision)
    normalize = bank.settings.get("normalize", "standard")
    entries = list(bank)
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        entries = tqdm(entries, desc="replace-1 accuracy", unit="pair")
    out = {}
    for entry in entries:
        model = substituted_model(teacher, bank, entry.position, entry.op, check=False)
        model = model.to(device, memory_format=fmt)
        entry.replace1_acc = evaluate(model, data, split, batch_size=batch_size, normalize=normalize,
                                      precision=precision)["acc"]
        out[entry.key] = entry.replace1_acc
    return out
