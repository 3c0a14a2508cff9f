import re

import pytest
import timm
import torch

import opswap
from golden import TF_CNN_PARAMS, WRN_40_2_MACS, WRN_40_2_PARAMS
from opswap.models import build_model
from opswap.substitution import complexity, count_params


@pytest.mark.parametrize("num_classes", [10, 100])
def test_wrn_40_2_parameter_count(num_classes):
    assert count_params(opswap.build_model("wrn-40-2", num_classes)) == WRN_40_2_PARAMS[num_classes]


def test_wrn_40_2_macs_from_flop_counter():
    params, macs = complexity(opswap.build_model("wrn-40-2"), (1, 3, 32, 32))
    assert (params, macs) == (WRN_40_2_PARAMS[10], WRN_40_2_MACS)


def test_tf_cnn_parameter_count_and_output():
    model = opswap.build_model("tf-cnn")
    assert count_params(model) == TF_CNN_PARAMS
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert opswap.positions(model) == []


@pytest.mark.parametrize("depth,widen", [(10, 1), (16, 2), (22, 1)])
def test_any_valid_wrn_builds_with_3n_positions(depth, widen):
    model = opswap.build_model(f"wrn-{depth}-{widen}", num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    ps = opswap.positions(model)
    n = (depth - 4) // 6
    assert [p.index for p in ps] == list(range(1, 3 * n + 1))
    assert [p.stride for p in ps if p.stride == 2] == [2, 2]
    assert ps[0].c_in == 16 and ps[-1].c_out == 64 * widen


def test_wrn_block_structure_follows_reference():
    """Pre-activation: the 1x1 shortcut sees relu(bn1(x)); identity shortcut where shapes match."""
    model = opswap.build_model("wrn-16-2")
    first, second = model.stages[0][0], model.stages[0][1]
    assert first.shortcut is not None and first.shortcut.kernel_size == (1, 1)
    assert second.shortcut is None
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", ["wrn-41-2", "wrn-40-0", "resnet18", "wrn-40", ""])
def test_bad_model_name_lists_valid_forms(name):
    with pytest.raises(ValueError, match=r"wrn-<depth>-<widen>|6n\+4"):
        opswap.build_model(name)


def test_timm_create_model_gives_the_same_network():
    torch.manual_seed(0)
    ours = opswap.build_model("wrn-40-2")
    theirs = timm.create_model("wrn_40_2", num_classes=10)
    assert count_params(theirs) == WRN_40_2_PARAMS[10]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_every_public_name_resolves():
    for name in opswap.__all__:
        assert getattr(opswap, name) is not None, name
    with pytest.raises(AttributeError):
        opswap.no_such_thing


@pytest.mark.parametrize("name, num_classes, words", [
    ("wrn-100000-1", 10, "would have about 1.6e+09 parameters"),   # a typo: refused, not built for minutes
    ("wrn-10-2000", 10, "over the 1e+09"),
    ("tf-cnn", 100_000_000, "num_classes must be an integer in 2..1,000,000"),
    ("wrn-10-1", 1, "num_classes must be an integer"),
    ("wrn-10-1", True, "num_classes must be an integer"),
])
def test_names_of_networks_too_large_to_build_are_refused_before_allocating(name, num_classes, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        build_model(name, num_classes=num_classes)
