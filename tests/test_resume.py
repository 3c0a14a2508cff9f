"""Stopping a run at a step and resuming it: train(should_stop=...), run_trial(checkpoint_path=...)
and the runner, with real (tiny) training. A resumed run must equal an uninterrupted one."""
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from opswap.data import synthetic
from opswap.run import stop
from opswap.run.record import load_record
from opswap.run.spec import TrialSpec
from opswap.run.trial import run_trial
from opswap.sparse.methods import make_pruner
from opswap.study import execute
from opswap.study.expand import Trial
from opswap.training import TrainConfig, checkpoint_complete, load_checkpoint, train
from tiny_models import tiny, untimed

pytestmark = pytest.mark.usefixtures("one_thread")


class StopAt:
    """A should_stop that says yes at the given global step counts (counted over its calls)."""

    def __init__(self, *at: int, start: int = 0):
        self.at, self.calls = set(at), start

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls in self.at


@pytest.fixture(scope="module")
def data():
    return synthetic(160, 40, seed=1)


CONFIG = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, augment=True, schedule="cosine",
                     warmup_epochs=1)


def same_weights(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("stops", [(3,), (7,), (5, 10), (2, 9, 13)])  # steps; 5 per epoch
def test_a_run_stopped_inside_epochs_and_resumed_equals_an_uninterrupted_one(tmp_path, data, stops):
    straight = tiny()
    full = train(straight, data, CONFIG)
    ckpt = tmp_path / "run.safetensors"
    model, done = tiny(), 0
    for n, at in enumerate(stops):
        model = tiny(seed=50 + n) if n else tiny()  # resumed: the weights come from the checkpoint
        result = train(model, data, CONFIG, checkpoint=ckpt, resume=True, should_stop=StopAt(at - done))
        assert result.status == "preempted" and result.error == f"pre-empted at epoch {(at - 1) // 5 + 1}, step {at}"
        state = load_checkpoint(ckpt, tiny())
        assert (state["step"], state["epoch"]) == (at, (at - 1) // 5)  # epoch: those finished
        assert state["in_epoch"]["batches"] == (at - 1) % 5 + 1 and len(state["history"]) == state["epoch"]
        done = at
    model = tiny(seed=99)
    resumed = train(model, data, CONFIG, checkpoint=ckpt, resume=True, should_stop=lambda: False)
    assert resumed.status == "ok"
    assert untimed(resumed.history) == untimed(full.history)
    assert resumed.metrics["test_acc"] == full.metrics["test_acc"]
    same_weights(straight, model)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_run_with_dropout_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, data):
    """Dropout draws from the GPU's generator: the checkpoint carries its state too."""
    def dropout_net(seed=0):
        net = tiny(seed=seed)
        return nn.Sequential(*list(net)[:-1], nn.Dropout(0.5), list(net)[-1])

    config = replace(CONFIG, precision="fp32", compile=False)
    torch.cuda.manual_seed(7)
    straight = dropout_net()
    full = train(straight, data, config, device="cuda")
    ckpt = tmp_path / "run.safetensors"
    torch.cuda.manual_seed(7)
    first = train(dropout_net(), data, config, device="cuda", checkpoint=ckpt, resume=True, should_stop=StopAt(7))
    assert first.status == "preempted" and "cuda_rng" in load_checkpoint(ckpt, tiny())
    torch.cuda.manual_seed(12345)  # another state: only the checkpoint's can give the same draws
    model = dropout_net(seed=99)
    resumed = train(model, data, config, device="cuda", checkpoint=ckpt, resume=True, should_stop=lambda: False)
    # cuDNN's backward need not be bit-exact between runs; other dropout masks would move the
    # losses by far more than this.
    for a, b in zip(untimed(resumed.history), untimed(full.history)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for x, y in zip(straight.state_dict().values(), model.state_dict().values()):
        assert torch.allclose(x.float().cpu(), y.float().cpu(), atol=1e-4)


def test_a_cpu_checkpoint_carries_no_gpu_state(tmp_path, data):
    ckpt = tmp_path / "run.safetensors"
    assert train(tiny(), data, CONFIG, checkpoint=ckpt, should_stop=StopAt(3)).status == "preempted"
    assert "cuda_rng" not in load_checkpoint(ckpt, tiny())


def test_a_pruned_run_resumes_exactly_too(tmp_path, data):
    from opswap.sparse.layers import sparsify

    def build(seed):
        model = tiny(seed=seed)
        sparsify(model, 0.5)
        return model, make_pruner("dsr", model, sparsity=0.5, total_steps=15, period=4)

    (straight, pruner) = build(0)
    full = train(straight, data, CONFIG, pruner=pruner)
    ckpt = tmp_path / "dsr.safetensors"
    model, pruner = build(0)
    assert train(model, data, CONFIG, pruner=pruner, checkpoint=ckpt, resume=True,
                 should_stop=StopAt(6)).status == "preempted"
    model, pruner = build(7)
    resumed = train(model, data, CONFIG, pruner=pruner, checkpoint=ckpt, resume=True)
    assert untimed(resumed.history) == untimed(full.history)
    same_weights(straight, model)


def test_an_incomplete_checkpoint_is_ignored_and_the_run_starts_afresh(tmp_path, data, caplog):
    ckpt = tmp_path / "run.safetensors"
    assert train(tiny(), data, CONFIG, checkpoint=ckpt, should_stop=StopAt(7)).status == "preempted"
    assert checkpoint_complete(ckpt)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["token"] = "written by a later save that was killed"  # as if the weights were of another save
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    assert not checkpoint_complete(ckpt)
    straight = tiny()
    full = train(straight, data, CONFIG)
    model = tiny()
    logger = logging.getLogger("opswap")
    logger.addHandler(caplog.handler)  # the command line may have stopped it propagating
    try:
        with caplog.at_level("WARNING", logger="opswap"):
            result = train(model, data, CONFIG, checkpoint=ckpt, resume=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert "incomplete" in caplog.text and untimed(result.history) == untimed(full.history)
    same_weights(straight, model)
    ckpt.with_suffix(".state.pt").unlink()
    assert not checkpoint_complete(ckpt)


def test_without_a_checkpoint_a_stop_still_stops(data):
    result = train(tiny(), data, CONFIG, should_stop=StopAt(4))
    assert result.status == "preempted" and "no checkpoint" in result.error and len(result.history) == 0


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    images = synthetic(120, 40, seed=2)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(path, x_train=nhwc(images.x_train), y_train=images.y_train.numpy(),
             x_test=nhwc(images.x_test), y_test=images.y_test.numpy())
    return str(path)


def spec_of(npz) -> TrialSpec:
    return TrialSpec.create(model="tf-cnn", dataset="npz", data=npz, epochs=3, batch_size=40,
                            latency_batch_size=0, save_weights=True)


def test_run_trial_preempted_then_resumed_gives_the_uninterrupted_record(tmp_path, npz, monkeypatch):
    spec = spec_of(npz)
    plain = run_trial(spec, study="t", weights_path=tmp_path / "plain.safetensors")
    assert plain["status"] == "ok", plain["error"]
    ckpt = stop.checkpoint_path(tmp_path, spec.trial_id)
    ckpt.parent.mkdir()
    monkeypatch.setattr(stop, "stop_requested", StopAt(4))
    weights = tmp_path / "w.safetensors"
    first = run_trial(spec, study="t", weights_path=weights, checkpoint_path=ckpt)
    assert first["status"] == "preempted" and first["error"] == "pre-empted at epoch 2, step 4"
    assert not weights.exists() and "test_acc" not in first["metrics"]  # no final measurement
    assert len(first["history"]) == 1
    monkeypatch.setattr(stop, "stop_requested", lambda: False)
    second = run_trial(spec, study="t", weights_path=weights, checkpoint_path=ckpt)
    assert second["status"] == "ok" and weights.exists()
    assert untimed(second["history"]) == untimed(plain["history"])
    for key in ("test_acc", "test_loss", "train_acc", "params", "macs"):
        assert second["metrics"][key] == plain["metrics"][key], key


def test_sigterm_mid_trial_then_the_runner_resumes_it_to_the_uninterrupted_history(tmp_path, npz, monkeypatch):
    import os
    import signal

    spec = TrialSpec.create(**{**spec_of(npz).to_settings(), "epochs": 30, "save_weights": False})
    straight = run_trial(spec, study="s")  # the same trial, never interrupted
    assert straight["status"] == "ok"
    trial = Trial(spec.trial_id, spec, "tf-cnn long")
    ctx = execute.TrialContext("s", str(tmp_path), None, devices=("cpu",), retries=0, threads=1)
    stop.clear_stop()
    before = signal.getsignal(signal.SIGTERM)
    real, polls = stop.stop_requested, []

    def poll() -> bool:  # a real SIGTERM (what SLURM sends on pre-emption), at a known step of training
        polls.append(1)
        if len(polls) == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return real()

    monkeypatch.setattr(stop, "stop_requested", poll)
    outcome = execute.execute_trial(trial, ctx)
    monkeypatch.setattr(stop, "stop_requested", real)
    assert signal.getsignal(signal.SIGTERM) == before  # the runner's handler is gone again
    record = load_record(tmp_path, trial.trial_id)
    assert outcome.status == "preempted", record.get("error")
    assert record["status"] == "preempted" and record["error"].startswith("pre-empted (SIGTERM)")
    ckpt = stop.checkpoint_path(tmp_path, trial.trial_id)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert checkpoint_complete(ckpt) and 0 < meta["step"] < 30 * 3 and meta["in_epoch"] is not None
    stop.clear_stop()
    again = execute.execute_trial(trial, ctx)
    record = load_record(tmp_path, trial.trial_id)
    assert again.status == "ok" and record["status"] == "ok" and record["attempt"] == 1  # no attempt used up
    assert untimed(record["history"]) == untimed(straight["history"])  # resumed from the step, not epoch 0
    assert record["metrics"]["test_acc"] == straight["metrics"]["test_acc"] and not ckpt.exists()


def test_a_checkpoint_of_another_resolved_precision_is_not_resumed_but_restarted(tmp_path, data, caplog):
    # precision "auto" resolves per device: bf16 on a GPU or a CPU with bf16 instructions, fp32
    # elsewhere. A trial stopped on one and picked up on the other starts again instead of failing.
    from opswap.precision import resolve_precision

    other = "fp32" if resolve_precision(CONFIG.precision, "cpu") == "bf16" else "bf16"
    ckpt = tmp_path / "run.safetensors"
    assert train(tiny(), data, CONFIG, checkpoint=ckpt, should_stop=StopAt(7)).status == "preempted"
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    ckpt.with_suffix(".json").write_text(json.dumps({**meta, "precision": other}))  # as if from another device
    assert checkpoint_complete(ckpt)
    straight, model = tiny(), tiny()
    full = train(straight, data, CONFIG)
    logger = logging.getLogger("opswap")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="opswap"):
            result = train(model, data, CONFIG, checkpoint=ckpt, resume=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert f"written in {other}" in caplog.text and result.status == "ok" and result.prior_seconds == 0.0
    assert untimed(result.history) == untimed(full.history)
    same_weights(straight, model)


def test_a_resumed_record_counts_the_time_before_its_preemption(tmp_path, npz, monkeypatch):
    spec = spec_of(npz)
    ckpt = stop.checkpoint_path(tmp_path, spec.trial_id)
    ckpt.parent.mkdir()
    monkeypatch.setattr(stop, "stop_requested", StopAt(7))
    first = run_trial(spec, study="t", checkpoint_path=ckpt)
    assert first["status"] == "preempted"
    before = json.loads(ckpt.with_suffix(".json").read_text())["elapsed"]
    assert 0 < before <= first["timing"]["seconds"]
    monkeypatch.setattr(stop, "stop_requested", lambda: False)
    result = train(tiny(), synthetic(40, 8, seed=3), replace(CONFIG, epochs=1))  # unrelated: no prior time
    assert result.prior_seconds == 0.0
    second = run_trial(spec, study="t", checkpoint_path=ckpt)
    assert second["status"] == "ok" and second["timing"]["seconds"] > before
    assert "_prior_seconds" not in second


def test_a_worker_whose_runner_is_gone_stops_itself():
    """A second Ctrl-C can end the runner before it shuts its loky workers down: an orphaned
    worker must stop (checkpoint, preempted record) rather than go on running trials unclaimed."""
    import os

    from opswap.run import stop

    stop.clear_stop()
    try:
        with stop.watch_runner(os.getppid()):  # the runner is alive: nothing to do
            assert not stop.stop_requested()
        with stop.watch_runner(os.getpid()):   # the runner running its own trials watches nothing
            assert not stop.stop_requested()
        with stop.watch_runner(os.getppid() + 1_000_000):  # this worker's parent is another process now
            assert stop.stop_requested() and stop.stop_reason() == "runner gone"
    finally:
        stop.clear_stop()
    assert not stop.stop_requested()
