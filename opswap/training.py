"""The one training function every run uses, plus evaluation, latency and checkpoints.

SGD with Nesterov momentum and a cosine schedule is the WRN recipe of Zagoruyko & Komodakis
(2016); Adam is the recipe of the dynamic-pruning study's Keras CNN. Distillation from a
teacher's logits follows Hinton et al. (2015); label smoothing Szegedy et al. (2016).
Batches come from `opswap.data.Batches` (on-device uint8 data, batched augmentation); the
precision (fp32, or bf16 autocast with channels_last) is chosen by `opswap.precision`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from opswap.allocator import keep_freed_memory
from opswap.data import Batches, ImageData
from opswap.precision import PRECISIONS, autocast, memory_format, resolve_precision, use_compile

log = logging.getLogger("opswap")

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "onecycle", "constant")


MAX_SEED = 2**63 - 1  # the largest seed torch.manual_seed and numpy's generators all take


def non_finite_fields(config: Any) -> list[str]:
    """Names of the float-typed fields of a dataclass holding NaN or ±inf (in a tuple too)."""
    out = []
    for f in fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if "float" in str(f.type) and any(isinstance(v, float) and not math.isfinite(v) for v in values):
            out.append(f.name)
    return out


_SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "None": (type(None),)}


def wrong_type_fields(config: Any) -> list[tuple[str, str]]:
    """(name, expected type) of each scalar field of a dataclass whose value has another type.

    Settings come from TOML and the command line (typed there) and from Python, where `True`
    for a learning rate or `1` for a flag would otherwise be stored as given — and hashed into
    another trial id than `True`. bool is no int or float here."""
    out = []
    for f in fields(config):
        names = [part.strip() for part in str(f.type).split("|")]
        if not all(n in _SCALARS for n in names):
            continue  # tuples and other containers are checked where they are used
        value = getattr(config, f.name)
        ok = any(isinstance(value, t) and not (isinstance(value, bool) and n in ("int", "float"))
                 for n in names for t in _SCALARS[n])
        if not ok:
            out.append((f.name, " or ".join(names)))
    return out


def coerce_float_fields(config: Any) -> None:
    """Set every int given for a float-typed field of a frozen dataclass to its float.

    TOML, `--set` and Python callers write `0` as readily as `0.0`; both must give one setting,
    one record and one trial id (the id hashes the settings' JSON, where `0` and `0.0` differ).
    """
    for f in fields(config):
        value = getattr(config, f.name)
        if "float" in str(f.type) and isinstance(value, int) and not isinstance(value, bool):
            try:
                object.__setattr__(config, f.name, float(value))
            except OverflowError:  # past 1.8e308: no float at all
                raise ValueError(f"setting {f.name} = {value} is too large for a float") from None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; `lr`, `weight_decay`, `schedule` default by optimizer when None."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # sgd 0.1, adam 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # sgd 5e-4, adam 0
    schedule: str | None = None  # sgd cosine, adam constant (the Keras recipe)
    warmup_epochs: float = 0.0
    step_milestones: tuple[float, ...] = (0.3, 0.6, 0.8)  # fractions of the run
    step_gamma: float = 0.2
    label_smoothing: float = 0.0
    augment: bool = True
    normalize: str = "standard"  # "unit": inputs in [0, 1]
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    grad_clip: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16 (autocast + channels_last); see opswap.precision
    compile: bool | None = None  # torch.compile; None: on CUDA, off on CPU (slower there)
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        def bad(key, allowed):
            raise ValueError(f"train setting {key} = {getattr(self, key)!r} is invalid; allowed: {allowed}")

        for key, expected in wrong_type_fields(self):
            bad(key, expected)
        coerce_float_fields(self)
        for key in non_finite_fields(self):
            bad(key, "a finite number")
        if not 0 <= self.seed <= MAX_SEED:  # an int: checked with the other types above
            bad("seed", "an integer in [0, 2**63 - 1]")

        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", " | ".join(OPTIMIZERS))
        if self.schedule is None:
            object.__setattr__(self, "schedule", "cosine" if self.optimizer == "sgd" else "constant")
        if self.schedule not in SCHEDULES:
            bad("schedule", " | ".join(SCHEDULES))
        if self.normalize not in ("standard", "unit"):
            bad("normalize", "standard | unit")
        if self.precision not in PRECISIONS:
            bad("precision", " | ".join(PRECISIONS))
        if self.compile not in (None, True, False):
            bad("compile", "true | false | unset (CUDA only)")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        if self.lr is None:
            object.__setattr__(self, "lr", 0.1 if self.optimizer == "sgd" else 1e-3)
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", 5e-4 if self.optimizer == "sgd" else 0.0)
        object.__setattr__(self, "step_milestones", tuple(float(m) for m in self.step_milestones))
        checks = {"lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
                  "momentum": 0 <= self.momentum < 1, "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
                  "label_smoothing": 0 <= self.label_smoothing < 1, "kd_weight": 0 <= self.kd_weight <= 1,
                  "kd_temperature": self.kd_temperature > 0, "grad_clip": self.grad_clip >= 0,
                  "step_gamma": 0 < self.step_gamma <= 1,
                  "step_milestones": all(0 < m < 1 for m in self.step_milestones)}
        for key, ok in checks.items():
            if not ok:
                bad(key, {"lr": "> 0", "weight_decay": ">= 0", "momentum": "[0, 1)",
                          "warmup_epochs": f"[0, epochs={self.epochs}]", "label_smoothing": "[0, 1)",
                          "kd_weight": "[0, 1]", "kd_temperature": "> 0", "grad_clip": ">= 0 (0: off)",
                          "step_gamma": "(0, 1]", "step_milestones": "fractions in (0, 1)"}[key])

    def to_dict(self) -> dict:
        """The settings as plain JSON values."""
        d = asdict(self)
        d["step_milestones"] = list(d["step_milestones"])
        return d


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`: status ok | diverged | preempted, per-epoch history, final metrics, resolved precision."""

    status: str
    history: list[dict]
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    precision: str = "fp32"  # what config.precision resolved to on the device: fp32 | bf16
    prior_seconds: float = 0.0  # training seconds spent before this call, in the runs it resumed


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """`config.schedule` as torch.optim.lr_scheduler objects, stepped after every optimiser step.

    A linear warm-up over `warmup_epochs` (from lr/warmup_steps; one-cycle: from lr/25, over
    30 % of the run when no warm-up is set) is followed by cosine annealing to zero, steps of
    `step_gamma` at the `step_milestones` fractions of the run, a linear decay to zero
    (one-cycle) or a constant rate.
    """
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle" and warmup == 0:
        warmup = round(0.3 * total)
    warmup = min(warmup, total)
    rest = max(1, total - warmup)
    if config.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest)
    elif config.schedule == "onecycle":
        main = lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=rest)
    elif config.schedule == "step":  # milestones count the whole run's steps, warm-up included
        milestones = [max(0, math.ceil(m * total) - warmup) for m in config.step_milestones]
        main = lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.step_gamma)
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    start = 0.04 if config.schedule == "onecycle" else 0.0
    ramp = (lr_scheduler.LinearLR(optimizer, start + (1 - start) / warmup, 1.0, total_iters=warmup - 1)
            if warmup > 1 else lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    with warnings.catch_warnings():  # SequentialLR steps its schedulers with an epoch argument
        warnings.simplefilter("ignore", UserWarning)
        return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def _step_scheduler(scheduler: lr_scheduler.LRScheduler) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def _optimizer(params, config: TrainConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam over the trainable `params`.

    `fused`: one kernel per parameter for weight decay, momentum and update (torch's `fused=True`)
    instead of a handful of elementwise ops each, where this torch and device have it; its sums
    may differ from the loop's in the last bit, so the engine uses it only off the fp32 path
    (`precision="fp32"` keeps the earlier arithmetic exactly). Measured on wrn-40-2 bf16 steps
    (2 CPU threads): 2-4 % per step.
    """
    params = [p for p in params if p.requires_grad]

    def build(**extra) -> torch.optim.Optimizer:
        if config.optimizer == "adam":
            return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **extra)
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay, **extra)

    if fused and params:
        try:
            return build(fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for these params: the loop
            pass
    return build()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when available, else CPU; ValueError for a device this machine does not have."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{device!r} is not a device; use cpu, cuda, cuda:N or auto ({err})") from None
    if resolved.type == "cpu" and resolved.index not in (None, 0):
        raise ValueError(f"device {device!r}: the CPU is one device; use cpu (its threads follow "
                         "OMP_NUM_THREADS or torch.set_num_threads)")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: opswap runs on cpu, cuda, cuda:N or mps")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: this machine has no Apple GPU that torch can use; use cpu or auto")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU that torch can use; use cpu or auto")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return resolved


def train(model: nn.Module, data: ImageData, config: TrainConfig, *, device=None,
          teacher: nn.Module | None = None, pruner=None, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = False, eval_split: str = "test",
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train `model` in place on `data`; per-epoch history, a NaN/Inf loss ends as `diverged`.

    `eval_split`: which split is evaluated after every epoch (test, val, both or none); the
    final metrics always hold the test split (and the validation split when there is one).
    `checkpoint` (a .safetensors path) is written after every epoch; `resume` continues from it,
    inside an epoch too. `should_stop` is polled after every optimiser step: when it says true
    the run saves the checkpoint at that step (when it has one) and returns status "preempted";
    resumed, it goes on with the same batches, the same RNG state and the same result.
    """
    if eval_split not in ("test", "val", "both", "none"):
        raise ValueError(f"eval_split must be test, val, both or none, got {eval_split!r}")
    if eval_split in ("val", "both") and data.x_val is None:
        raise ValueError("eval_split needs a validation split: load the dataset with val_fraction > 0")
    if config.kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher model")
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()  # glibc: no mmap + page faults per step (opswap.allocator)
    cuda = device.type == "cuda"
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    fmt = memory_format(device, precision)
    model.to(device, memory_format=fmt)
    if teacher is not None:
        teacher.to(device, memory_format=fmt).eval()
    batches = Batches(data.x_train, data.y_train, config.batch_size, mean=data.mean, std=data.std,
                      normalize=config.normalize, augment=config.augment, shuffle=True, seed=config.seed,
                      device=device, channels_last=fmt is torch.channels_last)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * config.epochs
    optimizer = _optimizer(model.parameters(), config, fused=precision != "fp32")
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    if pruner is not None:
        pruner.before_training(model, optimizer)
    history: list[dict] = []
    start_epoch, step, partial = 0, 0, None
    prior_seconds, run_start = 0.0, time.perf_counter()
    found = bool(resume and checkpoint and Path(checkpoint).is_file())
    saved_precision = _saved_precision(checkpoint) if found else None
    if found and not checkpoint_complete(checkpoint):
        log.warning(f"checkpoint {checkpoint} is incomplete (its writer was stopped mid-write); starting afresh")
    elif found and saved_precision not in (None, precision):
        # precision "auto" resolves per device: a run stopped on a bf16 GPU and resumed on a CPU
        # (fp32) cannot continue the same arithmetic, so it starts again rather than failing.
        log.warning(f"checkpoint {checkpoint} was written in {saved_precision} and this device runs "
                    f"{precision}; starting afresh")
    elif found:
        state = load_checkpoint(checkpoint, model, optimizer, pruner, scheduler=scheduler, device=device)
        saved = state.get("config") or config.to_dict()
        changed = {k: (saved[k], v) for k, v in config.to_dict().items() if k in saved and saved[k] != v}
        if state.get("precision", precision) != precision:
            changed["precision (resolved)"] = (state["precision"], precision)
        if changed:
            raise ValueError(f"cannot resume from {checkpoint}: it was written with other settings "
                             + ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in changed.items()))
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        partial = state.get("in_epoch")  # stopped inside epoch start_epoch + 1
        prior_seconds = float(state.get("elapsed") or 0.0)
        if "scheduler" not in state:  # a checkpoint from before schedulers were saved
            for _ in range(step):
                _step_scheduler(scheduler)
        batches.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    forward = torch.compile(model) if use_compile(config.compile, device) else model
    bar = _progress(progress, total_steps, step)
    last_eval: dict[str, dict] = {}
    evaluate_split = lambda split: evaluate(model, data, split, batch_size=config.eval_batch_size,  # noqa: E731
                                            device=device, normalize=config.normalize, precision=precision)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        epoch_rng = batches.generator.get_state()  # the epoch's order and augmentation come from here
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen, lr, skip = 0, optimizer.param_groups[0]["lr"], 0
        if partial is not None:  # resumed inside this epoch: its first batches are done
            skip, seen, lr = partial["batches"], partial["seen"], partial.get("lr", lr)
            loss_sum += partial["loss_sum"]
            correct += partial["correct"]
            t0 -= partial["seconds"]
            partial = None
        for i, (x, y) in enumerate(batches.iterate(skip), start=skip):
            with autocast(device, precision):
                logits = forward(x)
                loss = _loss(logits, y, x, teacher, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            _step_scheduler(scheduler)
            step += 1
            if pruner is not None:
                pruner.after_step(step)
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            # On CUDA a check is a sync: look every 25 steps and at the end of the epoch.
            if (not cuda or i % 25 == 24 or i == steps_per_epoch - 1) and not torch.isfinite(loss_sum):
                bar.close()
                error = f"loss became {loss.item()} at epoch {epoch + 1}, step {step}"
                return TrainResult("diverged", history, _final(history, last_eval, precision), error, precision,
                                   prior_seconds)
            bar.update(1)
            if should_stop is not None and should_stop():
                bar.close()
                if checkpoint:
                    in_epoch = {"batches": i + 1, "seen": seen, "loss_sum": loss_sum.item(),
                                "correct": int(correct.item()), "seconds": time.perf_counter() - t0, "lr": lr}
                    save_checkpoint(checkpoint, model, optimizer, pruner, epoch=epoch, step=step, history=history,
                                    data_rng=epoch_rng, config=config, scheduler=scheduler, precision=precision,
                                    in_epoch=in_epoch, elapsed=prior_seconds + time.perf_counter() - run_start)
                error = f"pre-empted at epoch {epoch + 1}, step {step}" + ("" if checkpoint else " (no checkpoint)")
                return TrainResult("preempted", history, {}, error, precision, prior_seconds)
        if cuda:
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen}
        wanted = {"test": eval_split in ("test", "both") or epoch + 1 == config.epochs,
                  "val": eval_split in ("val", "both")}
        for split, now in wanted.items():
            if now:
                last_eval[split] = evaluate_split(split)
            row[f"{split}_loss"] = last_eval[split]["loss"] if now else None
            row[f"{split}_acc"] = last_eval[split]["acc"] if now else None
        row.update(lr=lr, seconds=time.perf_counter() - t0, images_per_s=seen / train_seconds)
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_acc'] or row['val_acc'] or 0:.1f}")
        if checkpoint:
            save_checkpoint(checkpoint, model, optimizer, pruner, epoch=epoch + 1, step=step, history=history,
                            data_rng=batches.generator.get_state(), config=config, scheduler=scheduler,
                            precision=precision, elapsed=prior_seconds + time.perf_counter() - run_start)
    bar.close()
    for split in ("test", "val") if data.x_val is not None else ("test",):
        if split not in last_eval:  # a run resumed after its last epoch, or val not watched
            last_eval[split] = evaluate_split(split)
    return TrainResult("ok", history, _final(history, last_eval, precision), precision=precision,
                       prior_seconds=prior_seconds)


def _loss(logits, y, x, teacher, config: TrainConfig):
    loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
    if teacher is not None and config.kd_weight > 0:
        with torch.no_grad():
            target = teacher(x).float()
        t = config.kd_temperature
        kd = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(target / t, 1),
                      reduction="batchmean", log_target=True) * t * t
        loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
    return loss


def _final(history: list[dict], last_eval: dict, precision: str) -> dict:
    """Final metrics: last epoch's train figures, the last evaluations and the best accuracies."""
    test, val = last_eval.get("test", {}), last_eval.get("val", {})
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    vaccs = [r["val_acc"] for r in history if r.get("val_acc") is not None]
    last = history[-1] if history else {}
    return {"test_acc": test.get("acc"), "test_loss": test.get("loss"),
            "best_test_acc": max(accs) if accs else None, "train_acc": last.get("train_acc"),
            "train_loss": last.get("train_loss"), "val_acc": val.get("acc"), "val_loss": val.get("loss"),
            "best_val_acc": max(vaccs) if vaccs else None, "per_class_acc": test.get("per_class_acc"),
            "precision": precision}


class _NoBar:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def _progress(enabled: bool, total: int, initial: int):
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageData, split: str = "test", *, batch_size: int = 1000,
             device=None, normalize: str = "standard", precision: str = "auto") -> dict:
    """Accuracy (percent), mean cross-entropy and per-class accuracy of `model` on `split`.

    Runs in `precision` (auto | fp32 | bf16: bf16 autocast with channels_last batches).
    """
    x, y = data.split(split)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    batches = Batches(x, y, batch_size, mean=data.mean, std=data.std, normalize=normalize, device=device,
                      channels_last=memory_format(device, precision) is torch.channels_last)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    preds = []
    for xb, yb in batches:
        with autocast(device, precision):
            logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        preds.append(logits.argmax(1))
    model.train(was_training)
    pred, y = torch.cat(preds).cpu(), y.cpu()
    hit = (pred == y).double()
    per_class = torch.zeros(data.num_classes, dtype=torch.float64).index_add_(0, y, hit)
    counts = torch.bincount(y, minlength=data.num_classes).double()
    per_class_acc = [100.0 * h / c if c else None for h, c in zip(per_class.tolist(), counts.tolist())]
    return {"acc": 100.0 * hit.mean().item(), "loss": loss_sum.item() / len(y), "per_class_acc": per_class_acc}


class Latency(float):
    """A forward time in milliseconds — the median, usable as a float — with its spread.

    `median_ms`, `iqr_ms` (interquartile range), `runs` (timed blocks) and `number_per_run`
    (forwards per block); `to_dict()` gives them as plain JSON.
    """

    def __new__(cls, median_ms: float, iqr_ms: float, runs: int, number_per_run: int):
        self = super().__new__(cls, median_ms)
        self.median_ms, self.iqr_ms, self.runs, self.number_per_run = float(median_ms), iqr_ms, runs, number_per_run
        return self

    def __reduce__(self):  # pickles (loky workers return records holding it) with its spread
        return (Latency, (self.median_ms, self.iqr_ms, self.runs, self.number_per_run))

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "runs": self.runs,
                "number_per_run": self.number_per_run}

    def __repr__(self) -> str:
        return f"Latency(median_ms={self.median_ms:.4g}, iqr_ms={self.iqr_ms:.3g}, runs={self.runs})"


def time_blocks(fn, device, *, warmup: int = 5, repeats: int = 20, min_run_time: float = 0.2,
                block_s: float = 0.01) -> tuple[list[float], int]:
    """Seconds per call of `fn()` over timed blocks, and the calls per block (see `measure_latency`).

    `warmup` untimed calls, one timed call that sizes the blocks (enough calls to last `block_s`),
    then at least `repeats` blocks and more until they add up to `min_run_time` seconds; each
    block by `time.perf_counter` between CUDA synchronisations on a CUDA `device`.
    """
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def block(number: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        return (time.perf_counter() - t0) / number

    for _ in range(warmup):
        block(1)
    once = max(block(1), 1e-9)
    number = max(1, math.ceil(block_s / once))
    blocks = max(repeats, 1, math.ceil(min_run_time / (number * once)))
    return [block(number) for _ in range(blocks)], number


@torch.inference_mode()
def measure_latency(model: nn.Module, batch_size: int = 1, *, input_shape=(3, 32, 32), device=None,
                    warmup: int = 5, repeats: int = 20, min_run_time: float = 0.2, block_s: float = 0.01,
                    precision: str = "fp32") -> Latency:
    """Forward time of one batch of `batch_size` on `device`: median and IQR over timed blocks.

    After `warmup` forwards, one timed forward sets the block size: enough forwards per block to
    last `block_s` (so the timer's own overhead does not count), one forward when a forward is
    longer. Then at least `repeats` blocks are timed, and more until they add up to
    `min_run_time` seconds, each by `time.perf_counter` around CUDA synchronisations (at torch's
    current thread count). The cost is bounded: about max(repeats * max(forward, block_s),
    min_run_time) after the warm-up — unlike `torch.utils.benchmark`'s `blocked_autorange`, which
    can ask for a hundred forwards of a small network per block, and whose `timeit` adds two
    untimed forwards to every call.
    """
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
    fmt = memory_format(device, precision)
    was_training = model.training
    model.eval().to(device, memory_format=fmt)
    x = torch.randn(batch_size, *input_shape, device=device).contiguous(memory_format=fmt)

    def forward():
        with autocast(device, precision):
            model(x)

    times, number = time_blocks(forward, device, warmup=warmup, repeats=repeats, min_run_time=min_run_time,
                                block_s=block_s)
    model.train(was_training)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Latency(1000.0 * statistics.median(times), 1000.0 * (q[2] - q[0]), len(times), number)


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from opswap.atomic import atomic_path

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load safetensors weights into `model` (in place) and return it."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"weights in {path} do not fit this model: {str(err).splitlines()[0]} …") from err
    return model


def save_checkpoint(path, model, optimizer, pruner=None, *, epoch: int, step: int, history: list[dict],
                    data_rng: torch.Tensor, config: TrainConfig | None = None, scheduler=None,
                    precision: str | None = None, in_epoch: dict | None = None,
                    elapsed: float | None = None) -> None:
    """Weights (safetensors), optimiser/scheduler/pruner/RNG state (tensors, numbers) and progress (JSON).

    `epoch` counts finished epochs; `in_epoch` (batches done, their loss sum, correct count, images
    and seconds) marks a run stopped inside the next one, whose order `data_rng` then draws."""
    path = Path(path)
    # The three files are renamed into place one by one; one token in all three tells a whole
    # checkpoint from one whose writer was killed between the renames.
    token = f"{epoch}:{step}:{uuid.uuid4().hex}"
    save_weights(model, path, {"checkpoint": token})
    state = {"optimizer": optimizer.state_dict(), "pruner": pruner.state_dict() if pruner is not None else {},
             "data_rng": data_rng, "torch_rng": torch.get_rng_state(), "token": token}
    on = next((p.device for p in model.parameters()), torch.device("cpu"))
    if on.type == "cuda":  # dropout and other draws on the GPU come from its own generator
        state["cuda_rng"] = torch.cuda.get_rng_state(on)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    from opswap.atomic import atomic_path, write_text

    with atomic_path(path.with_suffix(".state.pt")) as tmp:
        torch.save(state, tmp)
    meta = {"epoch": epoch, "step": step, "history": history,
            "config": config.to_dict() if config is not None else None, "precision": precision,
            "in_epoch": in_epoch, "elapsed": elapsed, "token": token}
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))


def _saved_precision(path) -> str | None:
    try:
        return json.loads(Path(path).with_suffix(".json").read_text()).get("precision")
    except (OSError, ValueError):
        return None


def checkpoint_complete(path) -> bool:
    """Whether the checkpoint's three files (weights, state, progress) were written together."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            weights = (f.metadata() or {}).get("checkpoint")
        state = torch.load(path.with_suffix(".state.pt"), map_location="cpu", weights_only=True).get("token")
        meta = json.loads(path.with_suffix(".json").read_text()).get("token")
    except Exception:  # missing, truncated or unreadable: not a checkpoint to resume from
        return False
    return weights == state == meta


def load_checkpoint(path, model, optimizer=None, pruner=None, *, scheduler=None, device=None) -> dict:
    """Restore a checkpoint written by `save_checkpoint`; returns epoch, step, history and RNG states."""
    path = Path(path)
    load_weights(model, path)
    state = torch.load(path.with_suffix(".state.pt"), map_location=device or "cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if pruner is not None and state["pruner"]:
        pruner.load_state_dict(state["pruner"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    meta = json.loads(path.with_suffix(".json").read_text())
    out = {**meta, "data_rng": state["data_rng"].cpu(), "torch_rng": state["torch_rng"].cpu()}
    if "cuda_rng" in state:
        out["cuda_rng"] = state["cuda_rng"].cpu()
    if "scheduler" in state:
        out["scheduler"] = state["scheduler"]
    if out.get("precision") is None:
        out.pop("precision", None)
    return out
