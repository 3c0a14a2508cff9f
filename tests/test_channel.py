"""Channel pruning: static removal, channel masks (static and dynamic DSR) and their finalisation."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import opswap
from opswap.sparse import channel_prune, make_pruner, sparsify
from opswap.sparse.channel import IMPORTANCES, analyse

pytestmark = pytest.mark.usefixtures("one_thread")


def _wrn_with_bottleneck():
    """wrn-10-1 with bottleneck_e2 at position 2 (32 → 32 channels, stride 2, hidden 64)."""
    torch.manual_seed(0)
    model = opswap.swap(opswap.build_model("wrn-10-1"), {2: "bottleneck_e2"})
    return model, opswap.positions(model)[1].path


def _tfcnn():
    torch.manual_seed(0)
    return opswap.build_model("tf-cnn")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(model, pruner, steps: int, optimizer) -> float:
    x, y = _batch(16)
    model.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.after_step(step)
    return loss.item()


def test_scoped_pruning_shrinks_only_the_ops_internal_channels():
    model, path = _wrn_with_bottleneck()
    before = copy.deepcopy(model.state_dict())
    small = channel_prune(model, 0.5, scope=model.get_submodule(path))
    op, old = small.get_submodule(path), model.get_submodule(path)
    assert op.body[0].in_channels == 16 and op.body[0].out_channels == 32    # hidden 64 → 32
    assert op.body[3].in_channels == op.body[3].out_channels == 32
    assert op.body[6].out_channels == 32 and op.shortcut[0].out_channels == 32  # residual stream kept
    for name, module in small.named_modules():  # nothing outside the op changed
        if not name.startswith(path) and isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            assert _params(module) == _params(model.get_submodule(name)), name
    assert _params(small) < _params(model)
    assert small(_batch(2)[0]).shape == (2, 10)
    assert _params(old) == _params(opswap.create_op("bottleneck_e2", 16, 32, 2))  # input untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["tf-cnn", "wrn-10-1"])
def test_whole_model_pruning_keeps_the_stem_input_and_the_classifier_output(name):
    torch.manual_seed(0)
    model = opswap.build_model(name)
    small = channel_prune(model, 0.5)
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert convs[0].in_channels == 3 and linears[-1].out_features == 10
    assert _params(small) < 0.4 * _params(model)
    x, _ = _batch(4)
    assert small(x).shape == (4, 10)


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_removes_the_same_number_of_channels(importance):
    model = _tfcnn()
    small = channel_prune(model, 0.5, importance=importance)
    assert [m.out_channels for m in small.features if isinstance(m, nn.Conv2d)] == [16, 32, 32]
    assert small.classifier[1].out_features == 32 and small.classifier[1].in_features == 32 * 16


def test_magnitude_importance_removes_the_weakest_filters():
    model = _tfcnn()
    norms = model.features[0].weight.detach().flatten(1).norm(dim=1)
    small = channel_prune(model, 0.25, importance="magnitude")
    kept = small.features[0].weight.detach().flatten(1).norm(dim=1)
    assert torch.allclose(kept.sort().values, norms.sort().values[8:])


def test_a_channel_pruned_model_trains():
    small = channel_prune(_tfcnn(), 0.5)
    opt = torch.optim.SGD(small.parameters(), 0.05, momentum=0.9)
    x, y = _batch(16)
    first = F.cross_entropy(small(x), y).item()
    last = _train(small, None, 8, opt)
    assert torch.isfinite(torch.tensor(last)) and last < first


CASES = {"bottleneck_e2 at position 2": "wrn", "tf-cnn": "tf"}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_smaller_model_computes_what_the_masked_model_computes(case, mode):
    if CASES[case] == "wrn":
        model, path = _wrn_with_bottleneck()
        options = {"scope": path}
    else:
        model, options = _tfcnn(), {}
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    pruner = make_pruner("channel", model, 0.5, 40, mode=mode, period=3, threshold=0.9, **options)
    pruner.before_training(model, opt)
    loss = _train(model, pruner, 9, opt)
    assert torch.isfinite(torch.tensor(loss))
    if mode == "dynamic":
        assert len(pruner.log) == 3 and sum(entry["pruned"] for entry in pruner.log) > 0
    small = pruner.finalize()
    assert _params(small) < _params(model)
    model.eval(), small.eval()
    x, _ = _batch(8, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)
    removed = sum(int((~mask).sum()) for mask in pruner.masks.values())
    assert removed == sum(round(0.5 * g.size) for g in pruner.groups)  # DSR keeps the count


def test_masked_channels_stay_zero_through_adam_steps():
    model = _tfcnn()
    opt = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=1e-4)
    pruner = make_pruner("channel", model, 0.5, 10)
    pruner.before_training(model, opt)
    _train(model, pruner, 4, opt)
    off = ~pruner.masks["features.3"]
    conv = model.features[3]
    assert not conv.weight[off].any() and not conv.bias[off].any()
    assert not opt.state[conv.weight]["exp_avg"][off].any()
    assert conv.weight[~off].abs().sum() > 0


def test_regrowth_leaves_the_networks_output_unchanged_and_can_learn():
    model, path = _wrn_with_bottleneck()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    pruner = make_pruner("channel", model, 0.5, 100, mode="dynamic", scope=path)
    pruner.before_training(model, opt)
    _train(model, pruner, 2, opt)
    model.eval()
    x, _ = _batch(4)
    with torch.no_grad():
        before = model(x)
    group = pruner.groups[0]
    unit = int((~pruner.masks[group.root]).nonzero()[0])
    pruner.masks[group.root][unit] = True
    pruner._regrow(group, torch.tensor([unit]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    root = model.get_submodule(group.root)
    assert root.weight[unit].abs().sum() > 0  # a fresh filter, not a dead zero one
    assert not opt.state[root.weight]["momentum_buffer"][unit].any()


def test_channel_pruner_works_after_sparsify_and_round_trips_its_state():
    model = sparsify(_tfcnn(), 0.5)  # what a trial does first: random masks the channel pruner resets
    pruner = make_pruner("channel", model, 0.5, 30, mode="dynamic", period=2)
    pruner.before_training(model, None)
    assert all(layer.mask.all() for layer in (model.features[3], model.features[6]))
    for step in range(1, 5):
        pruner.after_step(step)
    other = make_pruner("channel", sparsify(_tfcnn(), 0.5), 0.5, 30, mode="dynamic", period=2)
    other.load_state_dict(pruner.state_dict())
    assert other.threshold == pruner.threshold and other.step == 4
    assert all(torch.equal(other.masks[k], v) for k, v in pruner.masks.items())
    small = pruner.finalize()
    x, _ = _batch(2)
    model.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_a_bare_op_keeps_its_input_and_output_channels():
    op = opswap.create_op("mbconv_e6_k3", 16, 16, 1)
    groups = analyse(op, torch.randn(1, 16, 8, 8))[2]
    assert groups and all(g.size == 96 for g in groups)  # only the expanded channels
    small = channel_prune(op, 0.5, example_input=torch.randn(1, 16, 8, 8))
    assert small(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


@pytest.mark.parametrize("options, message", [
    (dict(mode="fast"), "mode = 'fast' is not allowed; choose one of static, dynamic"),
    (dict(importance="l1"), "importance = 'l1' is not allowed; choose one of magnitude, group_norm"),
    (dict(criterion="taylor"), "criterion = 'taylor' is not allowed; choose one of l2, bn"),
    (dict(periods=5), r"unknown option\(s\) \['periods'\]; allowed: \["),
    (dict(period=0), "period >= 1"),
    (dict(period="ten"), "period = 'ten' is not allowed; period is an integer"),
    (dict(scope="fc"), "no prunable channel group inside 'fc'"),
])
def test_make_pruner_channel_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner("channel", opswap.build_model("wrn-10-1"), 0.5, 10, **options)


def test_channel_prune_errors():
    with pytest.raises(ValueError, match="importance 'l1' is not known; choose one of magnitude"):
        channel_prune(_tfcnn(), 0.5, importance="l1")
    with pytest.raises(ValueError, match="pass example_input"):
        channel_prune(opswap.create_op("bottleneck_e2", 16, 16, 1), 0.5)
    with pytest.raises(AttributeError):
        channel_prune(_tfcnn(), 0.5, scope="features.99")
