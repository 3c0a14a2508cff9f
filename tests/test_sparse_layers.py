"""DynamicConv2d / DynamicLinear, sparsify and sparsity_report."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from opswap.sparse import (DynamicConv2d, DynamicLinear, dynamic_layers, is_dynamic, sparsify,
                           sparsity_report)


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, bias=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.95])
def test_masks_hold_the_exact_sparsity(sparsity):
    net = sparsify(_tiny_net(), sparsity)
    layers = dynamic_layers(net)
    assert [n for n, _ in layers] == ["2", "5"]  # stem and classifier stay dense
    for _, layer in layers:
        assert layer.mask.dtype == torch.bool
        assert int((~layer.mask).sum()) == round(sparsity * layer.mask.numel())


def test_conversion_carries_weights_and_is_a_drop_in():
    dense = _tiny_net()
    x = torch.randn(4, 3, 8, 8)
    expected = dense(x)
    net = sparsify(_tiny_net(), 0.0)  # same seed, same weights; mask all on
    assert isinstance(net[2], DynamicConv2d) and isinstance(net[2], nn.Conv2d)
    assert isinstance(net[5], DynamicLinear) and isinstance(net[5], nn.Linear)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_forward_uses_the_masked_weight_and_masked_weights_get_no_gradient():
    torch.manual_seed(1)
    layer = sparsify(nn.Linear(20, 7), 0.6)
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), x @ (layer.weight * layer.mask).t() + layer.bias)
    layer(x).square().sum().backward()
    assert torch.all(layer.weight.grad[~layer.mask] == 0)
    assert torch.any(layer.weight.grad[layer.mask] != 0)


def test_default_rule_for_a_wrn_keeps_stem_shortcuts_and_classifier_dense():
    from opswap.models import build_model

    model = sparsify(build_model("wrn-10-1"), 0.9)
    dense = sorted(n for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and not is_dynamic(m))
    assert dense == ["fc", "stages.1.0.shortcut", "stages.2.0.shortcut", "stem"]
    assert len(dynamic_layers(model)) == 6


def test_default_rule_for_a_candidate_op_keeps_only_its_projection():
    from opswap.ops import create_op

    op = sparsify(create_op("bottleneck_e2", 16, 32, 2), 0.9)
    dense = [n for n, m in op.named_modules() if isinstance(m, nn.Conv2d) and not is_dynamic(m)]
    assert dense == ["shortcut.0"]
    assert len(dynamic_layers(op)) == 3


@pytest.mark.parametrize("keep_dense, expected", [
    (["0", "7"], ["2", "5"]),
    (lambda name, m: isinstance(m, nn.Linear), ["0", "2"]),
    ([], ["0", "2", "5", "7"]),
])
def test_keep_dense_patterns_and_callables(keep_dense, expected):
    net = sparsify(_tiny_net(), 0.5, keep_dense=keep_dense)
    assert [n for n, _ in dynamic_layers(net)] == expected


def test_sparsity_out_of_range_is_refused_with_the_allowed_range():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparsify(_tiny_net(), 1.0)


def test_sparsity_report_counts_bytes_as_documented():
    net = sparsify(_tiny_net(), 0.9)
    report = sparsity_report(net)
    params = sum(p.numel() for p in net.parameters())
    assert report["dense_bytes"] == 4 * params
    conv, linear = net[2], net[5]
    csr = sum(m.nnz * 8 + (m.weight.shape[0] + 1) * 4 for m in (conv, linear))
    assert report["csr_bytes"] == 4 * params - 4 * (conv.weight.numel() + linear.weight.numel()) + csr
    assert report["layer_sparsity"] == {"2": pytest.approx(0.9, abs=1e-3), "5": pytest.approx(0.9, abs=1e-3)}
    assert report["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert sparsity_report(_tiny_net())["sparsity"] == 0.0
