"""The one train(): configuration, schedules, determinism, divergence, checkpoints, evaluation."""
import json
import math
import pickle
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from opswap.data import load_dataset, synthetic
from opswap.training import (TrainConfig, evaluate, load_checkpoint, load_weights, make_scheduler,
                             measure_latency, save_weights, train)
from tiny_models import tiny, untimed


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic(160, 40, seed=1)


@pytest.mark.parametrize("kwargs, word", [
    ({"optimizer": "rmsprop"}, "optimizer"), ({"schedule": "linear"}, "schedule"),
    ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"normalize": "minmax"}, "normalize"),
    ({"kd_weight": 2.0}, "kd_weight"), ({"warmup_epochs": 20, "epochs": 10}, "warmup_epochs"),
])
def test_config_rejects_bad_values_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kwargs)


def test_config_defaults_follow_the_optimizer():
    sgd, adam = TrainConfig(), TrainConfig(optimizer="adam")
    assert (sgd.lr, sgd.weight_decay, sgd.schedule) == (0.1, 5e-4, "cosine")
    assert (adam.lr, adam.weight_decay, adam.schedule) == (1e-3, 0.0, "constant")


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The hand-written schedule the engine had before torch.optim.lr_scheduler: the reference."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle" and warmup == 0:
        warmup = round(0.3 * total_steps)
    if step < warmup:
        start = 0.04 if config.schedule == "onecycle" else 0.0
        return start + (1 - start) * (step + 1) / warmup
    t = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if config.schedule == "onecycle":
        return 1.0 - t
    if config.schedule == "step":
        return config.step_gamma ** sum(step >= m * total_steps for m in config.step_milestones)
    return 1.0


def scheduled_factors(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr multiplier of every step, as the engine's scheduler sets it."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    out = []
    for _ in range(steps_per_epoch * config.epochs):
        out.append(optimizer.param_groups[0]["lr"] / config.lr)
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 1.0), ("cosine", 50, 0.5), ("cosine", 99, 0.5 * (1 + math.cos(math.pi * 0.99))),
    ("constant", 77, 1.0), ("step", 29, 1.0), ("step", 30, 0.2), ("step", 85, 0.2 ** 3),
    ("onecycle", 0, 0.04 + 0.96 / 30), ("onecycle", 29, 1.0), ("onecycle", 65, 0.5),
])
def test_lr_schedules(schedule, step, expected):
    config = TrainConfig(epochs=10, schedule=schedule)
    assert scheduled_factors(config, 10)[step] == pytest.approx(expected)


def test_warmup_is_linear_then_cosine():
    factors = scheduled_factors(TrainConfig(epochs=10, warmup_epochs=2), 10)
    assert [factors[s] for s in (0, 9, 19)] == pytest.approx([0.05, 0.5, 1.0])
    assert factors[60] == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 0.1, 1.0, 2.5])
@pytest.mark.parametrize("steps_per_epoch", [1, 7, 40])
def test_schedulers_give_the_hand_written_rates(schedule, warmup_epochs, steps_per_epoch):
    for milestones in [(0.3, 0.6, 0.8), (0.05, 0.5)]:
        config = TrainConfig(epochs=4, schedule=schedule, warmup_epochs=warmup_epochs, step_milestones=milestones)
        want = [lr_factor(config, s, 4 * steps_per_epoch, steps_per_epoch) for s in range(4 * steps_per_epoch)]
        assert scheduled_factors(config, steps_per_epoch) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_same_seed_on_cpu_gives_identical_history(data):
    config = TrainConfig(epochs=1, batch_size=32, seed=7)
    a, b = train(tiny(), data, config), train(tiny(), data, config)
    c = train(tiny(), data, TrainConfig(epochs=1, batch_size=32, seed=8))
    assert a.status == "ok" and untimed(a.history) == untimed(b.history)
    assert untimed(a.history) != untimed(c.history)
    row = a.history[0]
    assert set(row) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                        "val_acc", "lr", "seconds", "images_per_s"}
    assert row["images_per_s"] > 0 and row["val_acc"] is None
    assert a.metrics["test_acc"] == row["test_acc"] and len(a.metrics["per_class_acc"]) == 10


class TurnsNaN(nn.Module):
    """A tiny network whose output becomes NaN after `after` training forwards."""

    def __init__(self, after: int):
        super().__init__()
        self.net, self.after, self.calls = tiny(), after, 0

    def forward(self, x):
        self.calls += self.training
        out = self.net(x)
        return out * float("nan") if self.training and self.calls > self.after else out


def test_nan_loss_ends_the_run_as_diverged_keeping_history(data):
    result = train(TurnsNaN(after=7), data, TrainConfig(epochs=3, batch_size=32))
    assert result.status == "diverged"
    assert "nan" in result.error and "epoch 2" in result.error
    assert [row["epoch"] for row in result.history] == [1]  # epoch 1 had 5 steps, all finite


class StopAfter:
    """A pruner-protocol object that records calls and interrupts after `stop` steps."""

    def __init__(self, stop=None):
        self.stop, self.steps, self.before = stop, [], 0

    def before_training(self, model, optimizer):
        self.before += 1

    def after_step(self, step):
        self.steps.append(step)
        if step == self.stop:
            raise KeyboardInterrupt

    def state_dict(self):
        return {"seen": torch.tensor(len(self.steps))}

    def load_state_dict(self, state):
        self.steps = list(range(1, int(state["seen"]) + 1))


def test_checkpoint_resume_continues_exactly(tmp_path, data):
    config = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05)
    straight = tiny()
    full = train(straight, data, config, pruner=StopAfter())
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):  # interrupted in epoch 2; epoch 1 is checkpointed
        train(tiny(), data, config, checkpoint=ckpt, pruner=StopAfter(stop=7))
    state = load_checkpoint(ckpt, tiny())
    assert state["epoch"] == 1 and state["step"] == 5 and len(state["history"]) == 1
    pruner = StopAfter()
    resumed_model = tiny(seed=99)
    resumed = train(resumed_model, data, config, checkpoint=ckpt, resume=True, pruner=pruner)
    assert pruner.before == 1 and pruner.steps == list(range(1, 11))
    assert untimed(resumed.history) == untimed(full.history)
    for (k, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="lr 0.05 \\(now 0.1\\)"):
        train(tiny(), data, replace(config, lr=0.1), checkpoint=ckpt, resume=True)


def test_weights_round_trip_and_mismatch_error(tmp_path):
    model = tiny(seed=3)
    path = save_weights(model, tmp_path / "w.safetensors")
    other = load_weights(tiny(seed=4), path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(tiny(num_classes=5), path)


class Constant(nn.Module):
    """Predicts class `c` with a margin, else uniform."""

    def __init__(self, c: int, margin: float):
        super().__init__()
        self.c, self.margin = c, margin
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, self.c] = self.margin
        return logits + 0 * self.dummy


def test_evaluate_accuracy_loss_and_per_class(data):
    result = evaluate(Constant(3, 0.0 + 1e-6), data, "test", batch_size=16)
    share = (data.y_test == 3).double().mean().item()
    assert result["acc"] == pytest.approx(100 * share)
    assert result["loss"] == pytest.approx(math.log(10), abs=1e-5)
    assert result["per_class_acc"] == [100.0 if c == 3 else 0.0 for c in range(10)]
    with pytest.raises(ValueError, match="no val split"):
        evaluate(Constant(3, 1.0), data, "val")


def test_validation_split_is_what_epochs_watch(data):
    held = replace(data, x_train=data.x_train[:120], y_train=data.y_train[:120],
                   x_val=data.x_train[120:], y_val=data.y_train[120:])
    result = train(tiny(), held, TrainConfig(epochs=2, batch_size=40), eval_split="val")
    first, last = result.history
    assert first["val_acc"] is not None and first["test_acc"] is None
    assert last["test_acc"] is not None  # the test split is read once, at the end
    assert result.metrics["val_acc"] == last["val_acc"]


def test_distillation_needs_and_uses_a_teacher(data):
    config = TrainConfig(epochs=1, batch_size=64, kd_weight=0.5)
    with pytest.raises(ValueError, match="teacher"):
        train(tiny(), data, config)
    plain = train(tiny(), data, TrainConfig(epochs=1, batch_size=64))
    taught = train(tiny(), data, config, teacher=tiny(seed=5))
    assert taught.status == "ok" and taught.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_latency_is_a_positive_median_with_its_spread():
    ms = measure_latency(tiny(), 4, warmup=1, repeats=3, min_run_time=0.01)
    assert 0 < ms < 5000 and ms == ms.median_ms and ms.runs >= 3 and ms.iqr_ms >= 0
    assert ms.to_dict() == {"median_ms": ms.median_ms, "iqr_ms": ms.iqr_ms, "runs": ms.runs,
                            "number_per_run": ms.number_per_run}
    assert json.loads(json.dumps({"latency": ms})) == {"latency": ms.median_ms}  # a record stores the median
    again = pickle.loads(pickle.dumps(ms))
    assert again == ms and again.to_dict() == ms.to_dict()


def test_latency_of_a_slow_forward_costs_warmup_one_probe_and_the_repeats():
    """A forward longer than a block is timed one per block: no hidden extra forwards."""
    import time as _time

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            _time.sleep(0.012)
            return x

    model = Slow()
    ms = measure_latency(model, 2, warmup=2, repeats=5, min_run_time=0.0, block_s=0.01)
    assert model.calls == 2 + 1 + 5 and ms.runs == 5 and ms.number_per_run == 1
    assert ms >= 12.0


def test_tiny_cnn_learns_cifar10_mini_above_chance(cifar10_mini):
    data = load_dataset("npz", cifar10_mini)
    result = train(tiny(), data, TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=3e-3,
                                             augment=False))
    assert result.status == "ok" and result.metrics["test_acc"] > 20.0  # chance is 10 %


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_channels_last_learns(data):
    result = train(tiny(), data, TrainConfig(epochs=2, batch_size=32, precision="auto"), device="cuda")
    assert result.status == "ok" and result.metrics["test_acc"] > 15.0
    assert result.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_keep_freed_memory_is_set_once_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    from opswap import allocator

    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("OPSWAP_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is False
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("OPSWAP_KEEP_FREED_MEMORY", "1")
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert allocator.keep_freed_memory() is on_glibc
    allocator.keep_freed_memory.cache_clear()


@pytest.mark.parametrize("device, words", [("bogus", "'bogus' is not a device"),
                                           ("cuda:99", "cuda:99"), ("cpu:3", "the CPU is one device"),
                                           ("meta", "runs on cpu, cuda, cuda:N or mps")])
def test_a_device_this_machine_lacks_is_a_clear_value_error(device, words):
    from opswap.training import resolve_device

    with pytest.raises(ValueError, match=words):
        resolve_device(device)
    assert resolve_device("cpu").type == "cpu"


def test_opswap_train_refuses_a_missing_device_before_any_work(tmp_path, capsys):
    from opswap.cli import main

    out = tmp_path / "out"
    assert main(["train", "--model", "wrn-10-1", "--dataset", "synthetic", "--device", "bogus", "--out", str(out)]) == 2
    assert "is not a device" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("settings, words", [
    ({"compile": 1}, "compile = 1 is invalid; allowed: bool or None"),  # 1 == True, but another trial id
    ({"lr": True}, "lr = True is invalid; allowed: float or None"),
    ({"augment": "no"}, "augment = 'no' is invalid; allowed: bool"),
    ({"epochs": 2.0}, "epochs = 2.0 is invalid; allowed: int"),
])
def test_settings_of_the_wrong_type_are_refused_from_python_too(settings, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**settings)


def test_distill_settings_of_the_wrong_type_are_refused():
    from opswap.distill.engine import DistillConfig

    with pytest.raises(ValueError, match=r"stop_early must be bool, got 1"):
        DistillConfig(stop_early=1)
    assert DistillConfig(lr=1).lr == 1.0 and DistillConfig(max_pairs_at_once=None).max_pairs_at_once is None
