"""DSR, static and gradual pruners: the rules of docs/sparsity.md as specifications."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opswap.sparse import dynamic_layers, make_pruner, sparsify
from opswap.sparse.pruning import _share


def _net(sparsity: float, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
    return sparsify(net, sparsity, seed=seed)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def _train(net, optimizer, pruner, steps: int) -> None:
    x, y = _batch()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        pruner.after_step(step)


def _nnz(net) -> int:
    return sum(layer.nnz for _, layer in dynamic_layers(net))


@pytest.mark.parametrize("sparsity", [0.8, 0.9])
def test_dsr_step_keeps_total_nonzeros_constant(sparsity):
    net = _net(sparsity)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    pruner = make_pruner("dsr", net, sparsity, 100, period=3, threshold=0.05)
    pruner.before_training(net, opt)
    before = _nnz(net)
    _train(net, opt, pruner, 12)
    assert len(pruner.log) == 4 and all(entry["pruned"] > 0 for entry in pruner.log)
    assert _nnz(net) == before


def test_dsr_prunes_below_threshold_and_regrows_in_proportion_to_survivors():
    net = _net(0.5)
    pruner = make_pruner("dsr", net, 0.5, 100, threshold=0.02)
    pruner.before_training(net, None)
    (_, a), (_, b) = dynamic_layers(net)
    with torch.no_grad():  # layer a: 100 active weights below H; layer b: none
        a.weight.copy_(torch.where(a.mask, 1.0, 0.0))
        a.weight.view(-1)[a.mask.view(-1).nonzero().squeeze(1)[:100]] = 0.01
        b.weight.copy_(torch.where(b.mask, 1.0, 0.0))
    survivors = torch.tensor([a.nnz - 100, b.nnz])
    pruned = pruner.reallocate()
    assert pruned == 100
    grown_b = b.nnz - int(survivors[1])
    expected = _share(100, survivors, torch.tensor([10**6, 10**6]))
    assert grown_b == int(expected[1])
    assert a.nnz == int(survivors[0]) + int(expected[0])
    for layer in (a, b):  # every regrown weight starts at zero; survivors keep their value
        assert torch.all(layer.weight[layer.mask & (layer.weight != 1.0)] == 0)
        assert torch.all(layer.weight[~layer.mask] == 0)


def test_share_is_proportional_exact_and_capped():
    counts = _share(10, torch.tensor([300, 100, 100]), torch.tensor([100, 100, 100]))
    assert counts.tolist() == [6, 2, 2]
    counts = _share(50, torch.tensor([900, 100]), torch.tensor([5, 100]))
    assert counts.tolist() == [5, 45]


@pytest.mark.parametrize("pruned, factor", [(50, 2.0), (500, 0.5), (100, 1.0), (109, 1.0), (91, 1.0)])
def test_threshold_moves_the_way_the_rule_says(pruned, factor):
    net = _net(0.5)
    pruner = make_pruner("dsr", net, 0.5, 100, threshold=0.1)
    pruner.target_prunes = 100  # Np
    pruner.before_training(net, None)
    with torch.no_grad():
        for i, (_, layer) in enumerate(dynamic_layers(net)):
            layer.weight.copy_(torch.where(layer.mask, 1.0, 0.0))
        _, first = dynamic_layers(net)[0]
        active = first.mask.view(-1).nonzero().squeeze(1)[:pruned]
        first.weight.view(-1)[active] = 0.05
    assert pruner.reallocate() == pruned
    assert pruner.threshold == pytest.approx(0.1 * factor)


def test_regrown_weights_start_at_zero_after_training():
    net = _net(0.9)
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
    pruner = make_pruner("dsr", net, 0.9, 100, period=10, threshold=1.0)  # prune nearly all
    pruner.before_training(net, opt)
    _train(net, opt, pruner, 9)
    masks = [layer.mask.clone() for _, layer in dynamic_layers(net)]
    pruner.after_step(10)
    for old, (_, layer) in zip(masks, dynamic_layers(net)):
        fresh = layer.mask & ~old
        assert fresh.any()
        assert torch.all(layer.weight[fresh] == 0)
        state = opt.state[layer.weight]["momentum_buffer"]
        assert torch.all(state[fresh] == 0)


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SGD(p, 0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    lambda p: torch.optim.Adam(p, 1e-2, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=0.05),
])
@pytest.mark.parametrize("method", ["dsr", "static", "gradual", "none"])
def test_an_optimiser_step_never_resurrects_a_pruned_weight(optimizer, method):
    net = _net(0.8)
    opt = optimizer(net.parameters())
    pruner = make_pruner(method, net, 0.8, 16, period=4) if method in ("dsr", "gradual") \
        else make_pruner(method, net, 0.8, 16)
    pruner.before_training(net, opt)
    x, y = _batch()
    for step in range(1, 17):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        masks = [layer.mask.clone() for _, layer in dynamic_layers(net)]
        opt.step()  # before the pruner runs: the update itself must leave masked weights at zero
        for mask, (_, layer) in zip(masks, dynamic_layers(net)):
            assert torch.all(layer.weight[~mask] == 0), f"step {step}"
        pruner.after_step(step)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_static_prunes_by_magnitude_once(scope):
    net = _net(0.9)
    weights = [layer.weight.detach().clone() for _, layer in dynamic_layers(net)]
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    pruner = make_pruner("static", net, 0.9, 8, scope=scope)
    pruner.before_training(net, opt)
    layers = [layer for _, layer in dynamic_layers(net)]
    total = sum(w.numel() for w in weights)
    assert sum(int((~l.mask).sum()) for l in layers) == pytest.approx(0.9 * total, abs=len(layers))
    kept = torch.cat([w[l.mask].abs() for w, l in zip(weights, layers)])
    dropped = torch.cat([w[~l.mask].abs() for w, l in zip(weights, layers)])
    if scope == "global":
        assert kept.min() >= dropped.max()
    else:
        for w, l in zip(weights, layers):
            assert w[l.mask].abs().min() >= w[~l.mask].abs().max()
            assert int((~l.mask).sum()) == round(0.9 * l.mask.numel())
    masks = [l.mask.clone() for l in layers]
    _train(net, opt, pruner, 8)
    assert all(torch.equal(m, l.mask) for m, l in zip(masks, layers))


def test_gradual_follows_the_cubic_ramp_and_never_regrows():
    net = _net(0.9)
    pruner = make_pruner("gradual", net, 0.9, 100, begin=0.0, end=0.5, period=10)
    pruner.before_training(net, None)
    assert all(layer.mask.all() for _, layer in dynamic_layers(net))
    assert pruner.target_at(25) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    previous = [layer.mask.clone() for _, layer in dynamic_layers(net)]
    for step in range(1, 101):
        pruner.after_step(step)
        for old, (_, layer) in zip(previous, dynamic_layers(net)):
            assert not torch.any(layer.mask & ~old)  # monotone
        previous = [layer.mask.clone() for _, layer in dynamic_layers(net)]
        if step == 30:
            for _, layer in dynamic_layers(net):
                expected = round(pruner.target_at(30) * layer.mask.numel())
                assert int((~layer.mask).sum()) == expected
    for _, layer in dynamic_layers(net):
        assert int((~layer.mask).sum()) == round(0.9 * layer.mask.numel())


def test_pruner_state_round_trips():
    net = _net(0.9)
    pruner = make_pruner("dsr", net, 0.9, 100, period=5, threshold=0.05)
    pruner.before_training(net, None)
    for step in range(1, 11):
        pruner.after_step(step)
    other = make_pruner("dsr", _net(0.9), 0.9, 100, period=5)
    other.load_state_dict(pruner.state_dict())
    assert other.threshold == pruner.threshold and other.step == 10
    assert torch.equal(other.generator.get_state(), pruner.generator.get_state())


@pytest.mark.parametrize("call, message", [
    (lambda net: make_pruner("magnitude", net, 0.9, 10), "choose one of dsr, static, gradual, channel, nm, none"),
    (lambda net: make_pruner("dsr", net, 0.9, 10, period_steps=5), r"unknown option\(s\) \['period_steps'\]"),
    (lambda net: make_pruner("dsr", nn.Linear(3, 3), 0.9, 10), "sparsify"),
    (lambda net: make_pruner("gradual", net, 0.9, 10, begin=0.6, end=0.5), "begin < end"),
])
def test_errors_say_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call(_net(0.9))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_weights_regrown_where_just_pruned_start_with_no_optimiser_state(opt):
    """A position pruned and regrown in the same DSR step keeps none of its old momentum."""
    net = _net(0.8)
    params = net.parameters()
    optimizer = torch.optim.Adam(params, lr=1e-2) if opt == "adam" else \
        torch.optim.SGD(params, lr=0.1, momentum=0.9)
    pruner = make_pruner("dsr", net, 0.8, 100, period=1, threshold=0.05)
    pruner.before_training(net, optimizer)
    x, y = _batch()
    regrown_seen = 0
    for step in range(1, 9):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        pruner.after_step(step)  # period 1: a reallocation every step
        for _, layer in dynamic_layers(net):
            fresh = layer.mask & (layer.weight == 0)  # active but exactly zero: just regrown
            regrown_seen += int(fresh.sum())
            for value in optimizer.state[layer.weight].values():
                if torch.is_tensor(value) and value.shape == layer.weight.shape:
                    assert not value[fresh].any(), "a regrown weight inherited optimiser state"
    assert regrown_seen > 0
