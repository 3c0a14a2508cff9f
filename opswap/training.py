"""The one training function every run uses, plus evaluation, latency and checkpoints.

SGD with Nesterov momentum and a cosine schedule is the WRN recipe of Zagoruyko & Komodakis
(2016); Adam is the recipe of the dynamic-pruning study's Keras CNN. Distillation from a
teacher's logits follows Hinton et al. (2015); label smoothing Szegedy et al. (2016).
Batches come from `opswap.data.Batches` (on-device uint8 data, batched augmentation).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opswap.data import Batches, ImageData

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "onecycle", "constant")


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
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        def bad(key, allowed):
            raise ValueError(f"train setting {key} = {getattr(self, key)!r} is invalid; allowed: {allowed}")

        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", " | ".join(OPTIMIZERS))
        if self.schedule is None:
            object.__setattr__(self, "schedule", "cosine" if self.optimizer == "sgd" else "constant")
        if self.schedule not in SCHEDULES:
            bad("schedule", " | ".join(SCHEDULES))
        if self.normalize not in ("standard", "unit"):
            bad("normalize", "standard | unit")
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
    """Outcome of `train`: status ok | diverged, per-epoch history and final metrics."""

    status: str
    history: list[dict]
    metrics: dict = field(default_factory=dict)
    error: str | None = None


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle" and warmup == 0:
        warmup = round(0.3 * total_steps)
    if step < warmup:
        start = 0.04 if config.schedule == "onecycle" else 0.0  # one-cycle starts at lr / 25
        return start + (1 - start) * (step + 1) / warmup
    t = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if config.schedule == "onecycle":
        return 1.0 - t
    if config.schedule == "step":
        return config.step_gamma ** sum(step >= m * total_steps for m in config.step_milestones)
    return 1.0


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def train(model: nn.Module, data: ImageData, config: TrainConfig, *, device=None,
          teacher: nn.Module | None = None, pruner=None, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = False, eval_split: str = "test") -> TrainResult:
    """Train `model` in place on `data`; per-epoch history, a NaN/Inf loss ends as `diverged`.

    `eval_split`: which split is evaluated after every epoch (test, val, both or none); the
    final metrics always hold the test split (and the validation split when there is one).
    `checkpoint` (a .safetensors path) is written after every epoch; `resume` continues from it.
    """
    if eval_split not in ("test", "val", "both", "none"):
        raise ValueError(f"eval_split must be test, val, both or none, got {eval_split!r}")
    if eval_split in ("val", "both") and data.x_val is None:
        raise ValueError("eval_split needs a validation split: load the dataset with val_fraction > 0")
    if config.kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher model")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed)
    fmt = torch.channels_last if cuda and config.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    if teacher is not None:
        teacher.to(device, memory_format=fmt).eval()
    batches = Batches(data.x_train, data.y_train, config.batch_size, mean=data.mean, std=data.std,
                      normalize=config.normalize, augment=config.augment, shuffle=True, seed=config.seed,
                      device=device, channels_last=fmt is torch.channels_last)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    if pruner is not None:
        pruner.before_training(model, optimizer)
    history: list[dict] = []
    start_epoch, step = 0, 0
    if resume and checkpoint and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, model, optimizer, pruner, device=device)
        saved = state.get("config") or config.to_dict()
        changed = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"cannot resume from {checkpoint}: it was written with other settings "
                             + ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in changed.items()))
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        batches.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
    forward = torch.compile(model) if config.compile else model
    bar = _progress(progress, total_steps, step)
    last_eval: dict[str, dict] = {}
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for i, (x, y) in enumerate(batches):
            for g in optimizer.param_groups:
                g["lr"] = config.lr * lr_factor(config, step, total_steps, steps_per_epoch)
            with _autocast(device, config.amp):
                logits = forward(x)
                loss = _loss(logits, y, x, teacher, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
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
                return TrainResult("diverged", history, _final(history, last_eval), error)
            bar.update(1)
        if cuda:
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen}
        wanted = {"test": eval_split in ("test", "both") or epoch + 1 == config.epochs,
                  "val": eval_split in ("val", "both")}
        for split, now in wanted.items():
            if now:
                last_eval[split] = evaluate(model, data, split, batch_size=config.eval_batch_size,
                                            device=device, normalize=config.normalize, amp=config.amp)
            row[f"{split}_loss"] = last_eval[split]["loss"] if now else None
            row[f"{split}_acc"] = last_eval[split]["acc"] if now else None
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - t0,
                   images_per_s=seen / train_seconds)
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_acc'] or row['val_acc'] or 0:.1f}")
        if checkpoint:
            save_checkpoint(checkpoint, model, optimizer, pruner, epoch=epoch + 1, step=step, history=history,
                            data_rng=batches.generator.get_state(), config=config)
    bar.close()
    for split in ("test", "val") if data.x_val is not None else ("test",):
        if split not in last_eval:  # a run resumed after its last epoch, or val not watched
            last_eval[split] = evaluate(model, data, split, batch_size=config.eval_batch_size,
                                        device=device, normalize=config.normalize, amp=config.amp)
    return TrainResult("ok", history, _final(history, last_eval))


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


def _final(history: list[dict], last_eval: dict) -> dict:
    """Final metrics: last epoch's train figures, the last evaluations and the best accuracies."""
    test, val = last_eval.get("test", {}), last_eval.get("val", {})
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    vaccs = [r["val_acc"] for r in history if r.get("val_acc") is not None]
    last = history[-1] if history else {}
    return {"test_acc": test.get("acc"), "test_loss": test.get("loss"),
            "best_test_acc": max(accs) if accs else None, "train_acc": last.get("train_acc"),
            "train_loss": last.get("train_loss"), "val_acc": val.get("acc"), "val_loss": val.get("loss"),
            "best_val_acc": max(vaccs) if vaccs else None, "per_class_acc": test.get("per_class_acc")}


class _NoBar:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def _progress(enabled: bool, total: int, initial: int):
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, split: str = "test", *, batch_size: int = 1000,
             device=None, normalize: str = "standard", amp: bool = True) -> dict:
    """Accuracy (percent), mean cross-entropy and per-class accuracy of `model` on `split`."""
    x, y = data.split(split)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = Batches(x, y, batch_size, mean=data.mean, std=data.std, normalize=normalize,
                      device=device, channels_last=device.type == "cuda")
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    preds = []
    for xb, yb in batches:
        with _autocast(device, amp):
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


@torch.inference_mode()
def measure_latency(model: nn.Module, batch_size: int = 1, *, input_shape=(3, 32, 32), device=None,
                    warmup: int = 5, repeats: int = 20, amp: bool = False) -> float:
    """Median forward time in milliseconds of one batch of `batch_size` on `device`."""
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with _autocast(device, amp):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return 1000.0 * sorted(times)[len(times) // 2]


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)
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
                    data_rng: torch.Tensor, config: TrainConfig | None = None) -> None:
    """Weights (safetensors), optimiser/pruner/RNG state (tensors only) and progress (JSON)."""
    path = Path(path)
    save_weights(model, path)
    state = {"optimizer": optimizer.state_dict(), "pruner": pruner.state_dict() if pruner is not None else {},
             "data_rng": data_rng, "torch_rng": torch.get_rng_state()}
    tmp = path.with_suffix(".state.pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path.with_suffix(".state.pt"))
    meta = {"epoch": epoch, "step": step, "history": history,
            "config": config.to_dict() if config is not None else None}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path.with_suffix(".json"))


def load_checkpoint(path, model, optimizer=None, pruner=None, *, device=None) -> dict:
    """Restore a checkpoint written by `save_checkpoint`; returns epoch, step, history and RNG states."""
    path = Path(path)
    load_weights(model, path)
    state = torch.load(path.with_suffix(".state.pt"), map_location=device or "cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if pruner is not None and state["pruner"]:
        pruner.load_state_dict(state["pruner"])
    meta = json.loads(path.with_suffix(".json").read_text())
    return {**meta, "data_rng": state["data_rng"].cpu(), "torch_rng": state["torch_rng"].cpu()}
