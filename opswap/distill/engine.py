"""One-pass block distillation, the initialisation of LANA (Molchanov et al., ECCV 2022).

The teacher runs once per batch, in eval mode and without gradients; hooks capture every
requested position's input x_p and output T_p(x_p). Each (position, candidate) pair S trains on
those tensors in the same pass, with its own optimiser, to minimise the normalised MSE
||S(x_p) - T_p(x_p)||^2 / ||T_p(x_p)||^2, computed per sample and averaged over the batch (so
every image counts the same, whatever the scale of its activations). The teacher's cost is
paid once per step for all pairs, not once per pair. When more pairs are requested than
`max_pairs_at_once`, they are trained in chunks and the teacher runs once per step per chunk.

Every pair sees the same batch sequence and its candidate's initial weights depend only on the
seed, its position and its op, so a pair's result does not depend on which pairs trained beside
it or on the chunking. With `precision` bf16 (what `auto` picks where the device is fast at it,
see `opswap.precision`) the teacher's forward and the candidates run under bf16 autocast in
channels_last; weights, optimiser state and the loss stay fp32.
"""
from __future__ import annotations

import copy
import math
import sys
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from opswap.allocator import keep_freed_memory
from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
from opswap.substitution import positions, valid_ops
from opswap.precision import PRECISIONS, autocast, memory_format, resolve_precision
from opswap.training import MAX_SEED, coerce_float_fields, non_finite_fields, wrong_type_fields

__all__ = ["DistillConfig", "distill_bank", "normalised_mse", "valid_pairs", "resolve_device"]

_OPTIMIZERS = ("adam", "sgd")
_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation pass (all pairs share them)."""

    steps: int = 500
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-2  # Adam; blocks with BN tolerate it, and short budgets need it
    momentum: float = 0.9  # sgd only (Nesterov)
    schedule: str = "cosine"  # cosine (to zero over `steps`) | constant
    weight_decay: float = 0.0
    max_pairs_at_once: int | None = None  # None: every pair in one pass
    seed: int = 0
    augment: bool = True  # random crop (pad 4) and horizontal flip, as in training
    normalize: str = "standard"  # the teacher's input scaling: standard (mean/std) | unit ([0, 1])
    final_window: float = 0.1  # distill_loss = mean loss over this last fraction of the steps
    stop_early: bool = True  # end the teacher's forward after the deepest requested position
    precision: str = "auto"  # auto | fp32 | bf16: autocast + channels_last for teacher and candidates

    def __post_init__(self) -> None:
        wrong = wrong_type_fields(self)
        if wrong:
            raise ValueError("invalid distillation settings: " + "; ".join(
                f"{key} must be {expected}, got {getattr(self, key)!r}" for key, expected in wrong))
        coerce_float_fields(self)
        problems = [f"{key} must be a finite number, got {getattr(self, key)!r}" for key in non_finite_fields(self)]
        if not 0 <= self.seed <= MAX_SEED:  # an int: checked with the other types above
            problems.append(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.optimizer not in _OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in _SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            problems.append("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.max_pairs_at_once is not None and (not isinstance(self.max_pairs_at_once, int)
                                                   or self.max_pairs_at_once < 1):
            problems.append(f"max_pairs_at_once must be None (all) or an integer >= 1, "
                            f"got {self.max_pairs_at_once!r}")
        if self.normalize not in ("standard", "unit"):
            problems.append(f"normalize must be 'standard' or 'unit', got {self.normalize!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {' | '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.final_window <= 1:
            problems.append(f"final_window must be in (0, 1], got {self.final_window!r}")
        if problems:
            raise ValueError("invalid distillation settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (what the bank and trial records store)."""
        return asdict(self)


def normalised_mse(student: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of ||s - t||^2 / ||t||^2, each sample normalised by its own target.

    Summed over every dimension but the first, without flattening: flattening a channels_last
    tensor copies it, and the gradient that comes back is contiguous, which sends the block's
    last BatchNorm backward (input channels_last, gradient contiguous) down a path about 7x
    slower on CPU.
    """
    s, t = student.float(), target.float()
    dims = tuple(range(1, s.dim()))
    return ((s - t).pow(2).sum(dims) / (t.pow(2).sum(dims) + eps)).mean()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def valid_pairs(model: nn.Module, positions: Iterable[int] | str = "all",
                ops: Iterable[Any] | str = "all") -> list[tuple[int, str]]:
    """Every (position, canonical op) that fits; `"all"` ops: the seven candidates plus users' ops.

    With `"all"`, ops that cannot fit a position (identity where the shape changes) are left
    out; an op named explicitly that does not fit is an error.
    """
    from opswap.ops import OpError, create_op, parse_op

    table = _position_table(model)
    wanted = list(table) if positions == "all" else [int(p) for p in positions]
    bad = [p for p in wanted if p not in table]
    if bad:
        raise ValueError(f"position(s) {bad} do not exist; this model has positions 1..{len(table)}")
    if ops == "all":
        return [(p, name) for p in wanted for name in valid_ops(model, p)]
    names = [parse_op(o).name for o in ops]
    out = []
    for p in wanted:
        pos = table[p]
        for name in names:
            try:
                create_op(name, pos.c_in, pos.c_out, pos.stride)
            except OpError as err:
                raise ValueError(f"op {name!r} does not fit position {p}: {err}") from None
            out.append((p, name))
    return out


def _position_table(model: nn.Module) -> dict[int, Any]:
    return {p.index: p for p in positions(model)}


@dataclass
class _Pair:
    """A candidate in training: its module, optimiser, schedule and loss history."""

    position: Any  # opswap.positions.Position
    spec: Any  # opswap.ops.OpSpec
    module: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    history: list[float]
    active: bool = True


def _resolve(teacher: nn.Module, pairs: Sequence[tuple[int, Any]]) -> list[tuple[Any, Any]]:
    """(Position, OpSpec) for every requested pair, with errors that name the bad pair."""
    from opswap.ops import OpError, create_op, parse_op

    table = _position_table(teacher)
    seen, out = set(), []
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"a distillation pair must be (position, op), got {item!r}")
        position, op = item
        if position not in table:
            raise ValueError(f"pair {item!r}: position {position!r} does not exist; "
                             f"this model has positions 1..{len(table)}")
        spec, pos = parse_op(op), table[position]
        if (position, spec.name) in seen:
            raise ValueError(f"pair (position {position}, {spec.name!r}) is listed twice")
        try:
            create_op(spec.name, pos.c_in, pos.c_out, pos.stride)
        except OpError as err:
            raise ValueError(f"pair {item!r} cannot be distilled: {err}") from None
        seen.add((position, spec.name))
        out.append((pos, spec))
    return out


def _pair_seed(seed: int, position: int, op: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{position}/{op}".encode())) % (2**63)


def _make_pair(pos: Any, spec: Any, config: DistillConfig, device: torch.device, steps: int,
               fmt: torch.memory_format = torch.contiguous_format) -> _Pair:
    from opswap.ops import create_op

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(_pair_seed(config.seed, pos.index, spec.name))
        module = create_op(spec.name, pos.c_in, pos.c_out, pos.stride)
    module = module.to(device, memory_format=fmt).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = scheduler = None
    if params:  # identity has nothing to learn: it is scored, not trained
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                        nesterov=config.momentum > 0, weight_decay=config.weight_decay)
        if config.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return _Pair(pos, spec, module, optimizer, scheduler, [])


def _batches(data: Any, config: DistillConfig, device: torch.device,
             channels_last: bool = False) -> Iterable[torch.Tensor]:
    """`config.steps` normalised (and augmented) training batches, epoch after epoch, seeded."""
    from opswap.data import Batches

    batches = Batches(data.x_train, data.y_train, min(config.batch_size, len(data.x_train)),
                      mean=data.mean, std=data.std, normalize=config.normalize, augment=config.augment,
                      shuffle=True, drop_last=True, seed=config.seed, device=device,
                      channels_last=channels_last)
    done = 0
    while True:
        for x, _ in batches:
            if done == config.steps:
                return
            yield x
            done += 1


class _StopForward(Exception):
    """Raised after the deepest requested position: the rest of the teacher is not needed."""


class _Capture:
    """Hooks that record each position's input and output during a teacher forward."""

    def __init__(self, teacher: nn.Module, positions: list[Any], stop_early: bool = True):
        self.tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = []
        deepest = max(p.index for p in positions) if stop_early else None
        inputs: dict[int, torch.Tensor] = {}
        for pos in {p.index: p for p in positions}.values():
            block = teacher.get_submodule(pos.path)

            def pre(_m, args, i=pos.index):
                inputs[i] = args[0].detach().clone()  # clone: later in-place ops must not reach it

            def post(_m, _args, out, i=pos.index):
                self.tensors[i] = (inputs[i], out.detach().clone())
                if i == deepest:
                    raise _StopForward

            self.handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]

    def run(self, teacher: nn.Module, x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        self.tensors = {}
        try:
            teacher(x)
        except _StopForward:
            pass
        return self.tensors

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _train_chunk(teacher: nn.Module, data: Any, chunk: list[tuple[Any, Any]], config: DistillConfig,
                 device: torch.device, precision: str, bar: Any) -> list[BankEntry]:
    """Train every pair of `chunk` in one pass over the teacher."""
    fmt = memory_format(device, precision)
    pairs = [_make_pair(pos, spec, config, device, config.steps, fmt) for pos, spec in chunk]
    capture = _Capture(teacher, [p.position for p in pairs], config.stop_early)
    try:
        for x in _batches(data, config, device, channels_last=fmt is torch.channels_last):
            with torch.no_grad(), autocast(device, precision):
                captured = capture.run(teacher, x)
            losses = []
            for pair in pairs:
                if not pair.active:
                    continue
                xin, target = captured[pair.position.index]
                if pair.optimizer is None:
                    with torch.no_grad():
                        loss = normalised_mse(pair.module(xin), target)
                else:
                    with autocast(device, precision):
                        out = pair.module(xin)
                    loss = normalised_mse(out, target)
                    pair.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    pair.optimizer.step()
                    if pair.scheduler is not None:
                        pair.scheduler.step()
                losses.append(loss.detach())
            values = torch.stack(losses).cpu().tolist() if losses else []
            for pair, v in zip([p for p in pairs if p.active], values):
                pair.history.append(v)
                pair.active = math.isfinite(v)  # a diverged pair stops; its history is kept
            if bar is not None:
                bar.update(1)
                finite = [v for v in values if math.isfinite(v)]
                bar.set_postfix(mean_loss=f"{sum(finite) / max(len(finite), 1):.4f}", refresh=False)
    finally:
        capture.close()
    return [_entry(p, config) for p in pairs]


def _entry(pair: _Pair, config: DistillConfig) -> BankEntry:
    hist = pair.history
    window = hist[-max(1, round(len(hist) * config.final_window)):]
    final = sum(window) / len(window) if pair.active else float("nan")
    module = pair.module.eval()
    # contiguous: a bf16 pass trains in channels_last, the bank stores (safetensors) plain layouts
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    return BankEntry(position=pair.position.index, op=pair.spec.name, family=pair.spec.family,
                     params=pair.spec.kwargs, c_in=pair.position.c_in, c_out=pair.position.c_out,
                     stride=pair.position.stride, state_dict=state, distill_loss=final,
                     history=list(hist), steps=len(hist))


def distill_bank(teacher: nn.Module, data: Any, pairs: Sequence[tuple[int, Any]],
                 config: DistillConfig = DistillConfig(), *, device: str | torch.device | None = None,
                 progress: bool = False, model_name: str | None = None) -> WeightBank:
    """Distil every (position, op) pair from `teacher` on `data.x_train`; return the weight bank."""
    resolved = _resolve(teacher, pairs)
    if not resolved:
        raise ValueError("no (position, op) pairs to distil")
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()  # glibc: no mmap + page faults per step (opswap.allocator)
    precision = resolve_precision(config.precision, device)
    fingerprint = teacher_fingerprint(teacher)
    # A private copy: the caller's teacher keeps its mode, device, memory format and hooks.
    frozen = copy.deepcopy(teacher).to(device, memory_format=memory_format(device, precision))
    frozen.eval().requires_grad_(False)
    size = config.max_pairs_at_once or len(resolved)
    chunks = [resolved[i:i + size] for i in range(0, len(resolved), size)]
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps * len(chunks), desc=f"distil {len(resolved)} pairs", unit="step")
    entries: list[BankEntry] = []
    try:
        for chunk in chunks:
            entries += _train_chunk(frozen, data, chunk, config, device, precision, bar)
    finally:
        if bar is not None:
            bar.close()
    settings = {**config.to_dict(), "precision_resolved": precision}
    return WeightBank(entries, teacher_fingerprint=fingerprint, settings=settings, model=model_name,
                      dataset=getattr(data, "name", None))
