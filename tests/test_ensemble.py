"""Seed ensembles as one vmapped model: each member is the separate run with its seed."""
from dataclasses import replace

import pytest
import torch
from torch import nn

import opswap
from opswap.data import synthetic
from opswap.ensemble import train_ensemble
from opswap.training import TrainConfig, train

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")]

SEEDS = [0, 1, 2]


def tiny() -> nn.Module:
    # No conv bias before BatchNorm (as in a WRN): its exact gradient is zero, so Adam would turn
    # rounding noise into full-size steps that differ between batched and separate runs.
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def separate(builder, seed, data, config):
    torch.manual_seed(seed)
    model = builder()
    return model, train(model, data, replace(config, seed=seed))


@pytest.fixture(scope="module")
def data():
    return synthetic(96, 40, seed=4)


def test_first_step_loss_equals_a_separate_run(data):
    one_batch = replace(data, x_train=data.x_train[:32], y_train=data.y_train[:32])
    config = TrainConfig(epochs=1, batch_size=32, precision="fp32")
    results = train_ensemble(tiny, SEEDS, one_batch, config)
    for seed, member in zip(SEEDS, results):
        _, alone = separate(tiny, seed, one_batch, config)
        # vmap runs the k convolutions as one grouped convolution: equal up to rounding, not bit for bit.
        assert member.history[0]["train_loss"] == pytest.approx(alone.history[0]["train_loss"], rel=1e-6)
    assert len({r.history[0]["train_loss"] for r in results}) == len(SEEDS)  # the seeds differ


@pytest.mark.parametrize("optimizer, precision", [("sgd", "fp32"), ("adam", "fp32"), ("sgd", "bf16")])
def test_members_are_separate_runs_in_kind_and_value(data, optimizer, precision):
    config = TrainConfig(epochs=2, batch_size=32, optimizer=optimizer, precision=precision, warmup_epochs=0.5,
                         grad_clip=5.0)
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(tiny())
    results = train_ensemble(models, SEEDS, data, config)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for seed, model, member in zip(SEEDS, models, results):
        alone_model, alone = separate(tiny, seed, data, config)
        assert member.status == alone.status == "ok" and member.precision == alone.precision
        assert set(member.metrics) == set(alone.metrics) and len(member.history) == len(alone.history)
        for a, b in zip(member.history, alone.history):
            assert set(a) == set(b) and a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol)
        # Trained in place, BatchNorm running statistics per member included.
        for (k, v), w in zip(model.state_dict().items(), alone_model.state_dict().values()):
            assert v.shape == w.shape and torch.allclose(v.float(), w.float(), rtol=10 * tol, atol=10 * tol), k


def test_a_real_model_trains_as_an_ensemble(data):
    builder = lambda: opswap.build_model("wrn-10-1")  # noqa: E731
    results = train_ensemble(builder, [0, 1], data, TrainConfig(epochs=1, batch_size=48))
    assert [r.status for r in results] == ["ok", "ok"] and results[0].history[0]["train_loss"] > 0


def test_ensemble_refuses_what_it_cannot_do(data):
    with pytest.raises(ValueError, match="one architecture"):
        train_ensemble([tiny(), nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))], [0, 1], data, TrainConfig())
    with pytest.raises(ValueError, match="one seed per model"):
        train_ensemble([tiny(), tiny()], [0], data, TrainConfig())
    with pytest.raises(ValueError, match="teacher"):
        train_ensemble(tiny, [0, 1], data, TrainConfig(kd_weight=0.5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ensemble_matches_separate_runs_closely(data):
    config = TrainConfig(epochs=2, batch_size=32)
    results = train_ensemble(tiny, SEEDS, data, config, "cuda")
    for seed, member in zip(SEEDS, results):
        torch.manual_seed(seed)
        alone = train(tiny(), data, replace(config, seed=seed), device="cuda")
        assert member.precision == alone.precision
        assert member.history[-1]["train_loss"] == pytest.approx(alone.history[-1]["train_loss"], rel=5e-2)
