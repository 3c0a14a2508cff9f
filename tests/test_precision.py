"""Precision: what auto resolves to, and bf16 / channels_last runs that learn and repeat exactly."""
import copy
import json
from dataclasses import replace

import pytest
import torch

from opswap import precision as P
from opswap.data import synthetic
from opswap.training import TrainConfig, evaluate, load_checkpoint, train
from tiny_models import tiny, untimed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic(192, 48, seed=2)


# -- what auto means ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, validated, expected", [
    ("amx", True, "bf16"), ("avx512_bf16", True, "bf16"), (None, True, "fp32"), ("amx", False, "fp32"),
])
def test_auto_on_cpu_needs_fast_bf16_and_the_accuracy_check(monkeypatch, kind, validated, expected):
    monkeypatch.setattr(P, "cpu_bf16_kind", lambda: kind)
    monkeypatch.setattr(P, "CPU_BF16_VALIDATED", validated)
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: always honoured on CPU


@pytest.mark.parametrize("fast", [True, False])
def test_auto_on_cuda_follows_native_bf16(monkeypatch, fast):
    monkeypatch.setattr(P, "cuda_bf16_fast", lambda device: fast)
    assert P.resolve_precision("auto", "cuda") == ("bf16" if fast else "fp32")
    assert P.resolve_precision("fp32", "cuda:0") == "fp32"
    if fast:
        assert P.resolve_precision("bf16", "cuda") == "bf16"
    else:
        with pytest.raises(ValueError, match="native bf16"):
            P.resolve_precision("bf16", "cuda")


def test_other_devices_and_bad_values():
    assert P.resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="auto \\| fp32 \\| bf16"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


def test_cpu_detection_asks_torch_then_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert P.cpu_bf16_kind() == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert P.cpu_bf16_kind() == "amx"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert P.cpu_bf16_kind() == "amx"
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert P.cpu_bf16_kind() is None


def test_memory_format_and_compile_defaults():
    assert P.memory_format("cpu", "fp32") is torch.contiguous_format  # fp32 on CPU: the old engine
    assert P.memory_format("cpu", "bf16") is torch.channels_last
    assert P.memory_format("cuda", "fp32") is torch.channels_last
    assert (P.use_compile(None, "cpu"), P.use_compile(None, "cuda"), P.use_compile(True, "cpu"),
            P.use_compile(False, "cuda")) == (False, True, True, False)


def test_config_keys():
    d = TrainConfig().to_dict()
    assert d["precision"] == "auto" and d["compile"] is None
    assert "amp" not in d and "channels_last" not in d


# -- runs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_same_seed_gives_identical_history_in_every_precision(data, precision):
    config = TrainConfig(epochs=2, batch_size=32, seed=3, precision=precision)
    a, b = train(tiny(), data, config), train(tiny(), data, config)
    assert a.status == b.status == "ok"
    assert untimed(a.history) == untimed(b.history) and a.metrics == b.metrics
    assert a.precision == P.resolve_precision(precision, "cpu") == a.metrics["precision"]


@pytest.mark.parametrize("optimizer, lr, drop", [("sgd", 0.2, 0.6), ("adam", 3e-3, 0.92)])
def test_bf16_channels_last_run_is_finite_and_learns_like_fp32(data, optimizer, lr, drop):
    model = tiny()
    config = TrainConfig(epochs=5, batch_size=32, precision="bf16", optimizer=optimizer, lr=lr,
                         schedule="constant", augment=False)
    result = train(model, data, config)
    losses = [row["train_loss"] for row in result.history]
    assert result.status == "ok" and result.precision == "bf16"
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < drop * losses[0]
    assert losses == sorted(losses, reverse=True)
    reference = train(tiny(), data, replace(config, precision="fp32")).history
    assert losses == pytest.approx([row["train_loss"] for row in reference], abs=0.02)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fused_optimizer_off_the_fp32_path_only_and_it_agrees_with_the_loop(data, monkeypatch, optimizer):
    import opswap.training as T

    made = []
    real = T._optimizer
    monkeypatch.setattr(T, "_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    config = TrainConfig(epochs=1, batch_size=32, optimizer=optimizer, lr=0.05)
    for precision in ("fp32", "bf16"):
        assert train(tiny(), data, replace(config, precision=precision)).status == "ok"
    assert [bool(o.defaults.get("fused")) for o in made] == [False, True]
    # Three steps of each from the same start: the same updates up to rounding. (A linear model:
    # Adam turns the rounding noise of a ~0 gradient, as of a conv bias before BN, into full steps.)
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    b = copy.deepcopy(a)
    start = copy.deepcopy(a)
    x, y = data.x_train[:32].float() / 255, data.y_train[:32]
    for model, fused in ((a, False), (b, True)):
        opt = real(model.parameters(), config, fused=fused)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, p0) for p, p0 in zip(a.parameters(), start.parameters()))


def test_bf16_evaluation_agrees_with_fp32(data):
    model = tiny()
    train(model, data, TrainConfig(epochs=2, batch_size=32, precision="fp32"))
    fp32, bf16 = (evaluate(model, data, precision=p) for p in ("fp32", "bf16"))
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)
    assert abs(bf16["acc"] - fp32["acc"]) <= 100 * 3 / len(data.y_test)  # a few images may flip


@pytest.mark.parametrize("schedule, warmup", [("step", 1.0), ("onecycle", 0.0), ("cosine", 0.5)])
def test_bf16_resume_continues_exactly_with_scheduler_state(tmp_path, data, schedule, warmup):
    config = TrainConfig(epochs=3, batch_size=32, precision="bf16", schedule=schedule, warmup_epochs=warmup,
                         step_milestones=(0.5,))
    straight = tiny()
    full = train(straight, data, config)
    ckpt = tmp_path / "run.safetensors"
    train(tiny(), data, replace(config, epochs=3), checkpoint=ckpt)
    state = load_checkpoint(ckpt, tiny())
    assert state["precision"] == "bf16" and state["scheduler"]["last_epoch"] == 3 * 6
    # Interrupt after epoch 1: keep its checkpoint, then resume.
    ckpt2 = tmp_path / "part.safetensors"

    class Stop:
        def before_training(self, model, optimizer): pass
        def after_step(self, step):
            if step == 8:
                raise KeyboardInterrupt
        def state_dict(self): return {}

    with pytest.raises(KeyboardInterrupt):
        train(tiny(), data, config, checkpoint=ckpt2, pruner=Stop())
    resumed_model = tiny(seed=9)
    resumed = train(resumed_model, data, config, checkpoint=ckpt2, resume=True)
    assert untimed(resumed.history) == untimed(full.history)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed_model.state_dict().values()))


def test_resume_restarts_under_another_resolved_precision(tmp_path, data, monkeypatch):
    import opswap.training as T

    def auto_means(resolved):  # as if the checkpoint moved to a machine where auto means another precision
        monkeypatch.setattr(T, "resolve_precision", lambda p, d: resolved if p == "auto" else P.resolve_precision(p, d))

    ckpt = tmp_path / "run.safetensors"
    auto_means("bf16")
    train(tiny(), data, TrainConfig(epochs=1, batch_size=32, precision="auto"), checkpoint=ckpt)
    auto_means("fp32")  # the same arithmetic cannot go on: the run starts again (and then checkpoints in fp32)
    result = train(tiny(), data, TrainConfig(epochs=2, batch_size=32, precision="auto"), checkpoint=ckpt, resume=True)
    assert result.status == "ok" and result.precision == "fp32" and len(result.history) == 2
    assert result.prior_seconds == 0.0 and json.loads(ckpt.with_suffix(".json").read_text())["precision"] == "fp32"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_bf16_channels_last_compiled(data):
    model = tiny()
    result = train(model, data, TrainConfig(epochs=2, batch_size=32), device="cuda")
    assert result.status == "ok" and result.precision == ("bf16" if P.cuda_bf16_fast(torch.device("cuda")) else "fp32")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert next(model.parameters()).device.type == "cuda"
    again = train(tiny(), data, TrainConfig(epochs=2, batch_size=32, compile=False), device="cuda")
    assert again.history[-1]["train_loss"] == pytest.approx(result.history[-1]["train_loss"], rel=5e-2)
