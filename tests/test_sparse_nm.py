"""N:M patterns: the mask rule, the pruner holding it through training, storage and 2:4 conversion."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import opswap
from opswap.sparse import dynamic_layers, make_pruner, sparsify
from opswap.sparse.nm import is_nm, nm_mask, nm_nbytes, to_semi_structured

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8)])
def test_each_group_keeps_its_n_largest_magnitudes(n, m):
    torch.manual_seed(0)
    weight = torch.randn(6, 5, 3, 3)  # rows of 45: the last group is shorter than m
    mask = nm_mask(weight, n, m)
    rows, masks = weight.reshape(6, -1).abs(), mask.reshape(6, -1)
    for r, start in itertools.product(range(6), range(0, 45, m)):
        group, kept = rows[r, start:start + m], masks[r, start:start + m]
        assert int(kept.sum()) == min(n, group.numel())
        if not kept.all():
            assert group[kept].min() >= group[~kept].max()
    assert is_nm(mask, n, m) and not is_nm(torch.ones_like(mask), n, m)


def _net():
    torch.manual_seed(0)
    return sparsify(opswap.build_model("tf-cnn"), 0.5)


def _steps(net, optimizer, pruner, steps: int, first: int = 1) -> float:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    for step in range(first, first + steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        pruner.after_step(step)
    return loss.item()


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SGD(p, 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    lambda p: torch.optim.Adam(p, 1e-2, weight_decay=1e-4),
])
def test_the_pattern_holds_through_training_steps(optimizer):
    net = _net()
    opt = optimizer(net.parameters())
    pruner = make_pruner("nm", net, 0.5, 10)
    pruner.before_training(net, opt)
    masks = [layer.mask.clone() for _, layer in dynamic_layers(net)]
    loss = _steps(net, opt, pruner, 5)
    assert torch.isfinite(torch.tensor(loss))
    for mask, (name, layer) in zip(masks, dynamic_layers(net)):
        assert torch.equal(mask, layer.mask), name
        assert is_nm(layer.mask, 2, 4) and layer.sparsity == pytest.approx(0.5)
        assert not layer.weight[~layer.mask].any()


def test_a_recomputed_pattern_is_still_n_m_and_ends_with_zeroed_weights():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), 0.5)
    pruner = make_pruner("nm", net, 0.5, 9, period=3)
    pruner.before_training(net, opt)
    first = [layer.mask.clone() for _, layer in dynamic_layers(net)]
    _steps(net, opt, pruner, 8)
    assert pruner.recomputations == 2
    assert any(not torch.equal(a, layer.mask) for a, (_, layer) in zip(first, dynamic_layers(net)))
    assert any(layer.weight[~layer.mask].any() for _, layer in dynamic_layers(net))  # trained on
    _steps(net, opt, pruner, 1, first=9)  # the last step (9 of 9): the pattern is final
    for _, layer in dynamic_layers(net):
        assert is_nm(layer.mask, 2, 4) and not layer.weight[~layer.mask].any()
        assert not layer.straight_through


def test_storage_is_values_plus_two_bit_positions():
    layer = sparsify(nn.Linear(1024, 256, bias=False), 0.5)
    assert nm_nbytes(layer, 2, 4) == 256 * 512 * 4 + 256 * 512 * 2 // 8
    assert nm_nbytes(layer, 2, 4) / (4 * layer.weight.numel()) == pytest.approx(0.53125)


def test_semi_structured_on_this_cpu_says_there_is_no_speed_up():
    net = _net()
    make_pruner("nm", net, 0.5, 10).before_training(net, None)
    same, report = to_semi_structured(net.cpu())
    assert same is net and not report["speedup_possible"] and "no speed-up on this device" in report["reason"]
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        to_semi_structured(net, dtype=torch.float32)


@pytest.mark.parametrize("options, sparsity, message", [
    (dict(n=4, m=4), 0.5, "1 <= n < m"),
    (dict(n=2, m=4), 0.9, r"n=2, m=4 has sparsity 0.5 \(1 - n/m\); got sparsity=0.9"),
    (dict(k=2), 0.5, r"unknown option\(s\) \['k'\]; allowed: \['m', 'n', 'period', 'stop_fraction'\]"),
    (dict(period=-1), 0.5, "period >= 0"),
])
def test_make_pruner_nm_errors_say_what_is_allowed(options, sparsity, message):
    with pytest.raises(ValueError, match=message):
        make_pruner("nm", _net(), sparsity, 10, **options)
