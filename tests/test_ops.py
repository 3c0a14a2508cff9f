"""The candidate registry: golden counts, names, and the op contract for every op at every position."""
import pytest
import torch
from torch import nn

import opswap
from golden import CANDIDATES, WRN_40_2_CANDIDATE_PARAMS
from opswap.ops import OpError, create_op, list_ops, parse_op, register_op
from opswap.substitution import count_params, valid_ops

WRN_40_2 = opswap.build_model("wrn-40-2")
WRN_40_2_POSITIONS = opswap.positions(WRN_40_2)
SMALL = opswap.build_model("wrn-10-1")  # positions 1 (16→16), 2 (16→32, s2), 3 (32→64, s2)


@pytest.mark.parametrize("position", sorted(WRN_40_2_CANDIDATE_PARAMS))
@pytest.mark.parametrize("i,op", list(enumerate(CANDIDATES)))
def test_golden_parameter_counts(position, i, op):
    p = WRN_40_2_POSITIONS[position - 1]
    expected = WRN_40_2_CANDIDATE_PARAMS[position][i]
    if expected is None:
        assert op not in valid_ops(WRN_40_2, position)
        with pytest.raises(OpError, match="c_in == c_out and stride 1"):
            create_op(op, p.c_in, p.c_out, p.stride)
    else:
        assert count_params(create_op(op, p.c_in, p.c_out, p.stride)) == expected


@pytest.mark.parametrize("spec,name", [
    ("mbconv", "mbconv_e6_k3"), ("mbconv_e3_k5", "mbconv_e3_k5"), (("mbconv", {"k": 5}), "mbconv_e6_k5"),
    ("conv_bn", "conv_bn_e1"), ("conv_bn_e4", "conv_bn_e4"), ("resnet", "resnet_e2"),
    ("bottleneck_e2", "bottleneck_e2"), ("Identity", "identity"),
])
def test_parameters_read_from_names(spec, name):
    assert parse_op(spec).name == name


def test_keyword_parameters_equal_name_parameters():
    a, b = create_op("mbconv_e3_k5", 32, 32, 1), create_op("mbconv", 32, 32, 1, e=3, k=5)
    assert count_params(a) == count_params(b) == 32 * 96 + 192 + 96 * 25 + 192 + 96 * 32 + 64


# Generated from the registry: an op registered in opswap.ops is covered without editing a list
# (each family at its defaults, plus a few non-default parameterisations).
REGISTERED = list_ops()


@pytest.mark.parametrize("name", [n for n in REGISTERED if n != "identity"])
def test_no_op_ends_in_an_activation(name):
    x = torch.randn(4, 32, 8, 8)
    torch.manual_seed(0)
    op = create_op(name, 32, 32, 1).eval()
    with torch.no_grad():
        assert (op(x) < 0).any(), f"{name} output is never negative: it ends in an activation"


def test_the_registry_holds_at_least_the_papers_candidates():
    assert {parse_op(c).family for c in CANDIDATES} <= set(REGISTERED)


def _small_cases():
    for p in opswap.positions(SMALL):
        for op in valid_ops(SMALL, p.index, REGISTERED + ["mbconv_e3_k5", "conv_bn_e4"]):
            yield pytest.param(p.index, op, id=f"p{p.index}-{op}")


@pytest.mark.parametrize("position,op", list(_small_cases()))
def test_every_op_at_every_valid_position(position, op):
    torch.manual_seed(0)
    model = opswap.swap(SMALL, {position: op}).train()
    x = torch.randn(4, 3, 32, 32)
    y = model(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    y.square().mean().backward()
    swapped = model.get_submodule(SMALL.position_specs[position - 1].path)
    for name, param in swapped.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{op}: {name} got no gradient"


def test_register_op_and_duplicate_is_an_error():
    @register_op("test_double_conv")
    def double_conv(c_in, c_out, stride, *, width: int = 2):
        """Two convs."""
        return nn.Sequential(nn.Conv2d(c_in, width * c_out, 3, stride, 1), nn.Conv2d(width * c_out, c_out, 1))

    assert "test_double_conv" in list_ops("test_*")
    assert parse_op("test_double_conv_width3").kwargs == {"width": 3}
    assert "test_double_conv_width2" in valid_ops(SMALL, 2)
    model = opswap.swap(SMALL, {2: "test_double_conv_width3"})
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(OpError, match="already registered"):
        register_op("test_double_conv")(double_conv)


@pytest.mark.parametrize("spec,params,match", [
    ("mbconvv", {}, "Did you mean 'mbconv'"),
    ("conv_bn_x3", {}, "parameters of 'conv_bn': e"),
    ("mbconv", {"e": "six"}, "'e' must be int"),
    ("mbconv", {"e": 2.5}, "'e' must be int"),
    ("mbconv", {"q": 1}, "no parameter 'q'; its parameters: e, k"),
    ("mbconv_e3", {"e": 4}, "given twice"),
    ("mbconv_k4", {}, "must be odd"),
    ("conv_bn_e0", {}, "must be >= 1"),
])
def test_bad_op_requests_name_what_is_allowed(spec, params, match):
    with pytest.raises(OpError, match=match):
        create_op(spec, 16, 16, 1, **params)


@pytest.mark.parametrize("name, words", [
    ("bottleneck_e99999999", "too large to build"),      # a tensor past 2**63 bytes
    ("bottleneck_e999999", "parameters at this position"),  # over MAX_OP_PARAMS
    ("mbconv_e0", "must be >= 1"),                       # refused by the factory itself
    ("mbconv_e4_k4", "must be odd"),
])
def test_check_op_refuses_without_allocating(name, words):
    """These would ask for terabytes or fail inside the factory; the check builds on the meta device."""
    from opswap.ops import check_op

    with pytest.raises(OpError, match=words):
        check_op(name, 16, 16, 1)


def test_an_op_that_fits_in_memory_passes_the_check_and_builds():
    from opswap.ops import check_op

    assert check_op("mbconv_e3_k5", 16, 32, 2).name == "mbconv_e3_k5"
    assert count_params(create_op("mbconv_e3_k5", 16, 32, 2)) > 0
