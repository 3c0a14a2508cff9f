import pytest
import torch
from torch import nn

import opswap
from opswap.ops import OpError

MODEL = opswap.build_model("wrn-16-1")  # 6 positions: 1 (16→16), 3 (16→32, s2), 5 (32→64, s2)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_swap_returns_new_model_and_leaves_input_bit_identical():
    before = _state(MODEL)
    new = opswap.swap(MODEL, {2: "mbconv", 4: ("conv_bn", {"e": 2})})
    assert new is not MODEL
    after = MODEL.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(MODEL.stages[0][1]).__name__ == "WRNBlock"


def test_untouched_weights_are_kept_and_swapped_ones_are_new():
    new = opswap.swap(MODEL, {2: "conv_bn_e1"})
    old_sd, new_sd = MODEL.state_dict(), new.state_dict()
    for k, v in new_sd.items():
        if k.startswith("stages.0.1."):
            continue
        assert torch.equal(v, old_sd[k]), k
    assert not any(k.startswith("stages.0.1.bn1") for k in new_sd)  # conv_bn has no pre-activation


def test_swap_module_op_and_many_positions():
    op = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
    new = opswap.swap(MODEL, {1: op, 2: "identity", 6: "bottleneck_e2"})
    assert new(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert new.stages[0][0] is not op  # the caller's module is not aliased
    assert isinstance(new.stages[0][1], nn.Identity)


def test_swap_keeps_mode_dtype():
    m = opswap.build_model("wrn-10-1").double().eval()
    new = opswap.swap(m, {1: "mbconv"})
    assert not new.training
    assert all(p.dtype == torch.float64 for p in new.parameters())


@pytest.mark.parametrize("ops,match", [
    ({3: "identity"}, r"does not fit position 3 \(16→32 channels, stride 2\).*Ops that fit there: baseline, mbconv_e6_k3"),
    ({0: "mbconv"}, r"position 0 is out of range; valid positions: 1\.\.6"),
    ({7: "mbconv"}, r"valid positions: 1\.\.6"),
    ({"2": "mbconv"}, r"must be an integer 1\.\.6"),
    ({2: "mbconvv"}, r"unknown op 'mbconvv'\. Did you mean 'mbconv'"),
    ({2: ("mbconv", {"e": "6"})}, r"'e' must be int"),
    ({2: 42}, r"registry name, \(name, params\) or nn\.Module"),
    ({3: nn.Identity()}, r"maps \(1, 16, 32, 32\) to \(1, 16, 32, 32\), but the position needs \(1, 32, 16, 16\)"),
    ({}, r"non-empty mapping"),
])
def test_invalid_swaps_raise_one_clear_error(ops, match):
    before = _state(MODEL)
    with pytest.raises(OpError, match=match):
        opswap.swap(MODEL, ops)
    assert all(torch.equal(v, MODEL.state_dict()[k]) for k, v in before.items())


def test_valid_ops_by_position():
    assert "identity" not in opswap.valid_ops(MODEL, 3)
    assert opswap.valid_ops(MODEL, 2)[:3] == ["baseline", "identity", "mbconv_e6_k3"]


def test_positions_report_params_and_macs_of_current_op():
    new = opswap.swap(MODEL, {2: "identity"})
    p_old, p_new = opswap.positions(MODEL)[1], opswap.positions(new)[1]
    assert (p_new.params, p_new.macs) == (0, 0)
    # baseline block at 16→16, 32x32: two 3x3 convs = 2 * 16*16*9 * 32*32 MACs
    assert p_old.macs == 2 * 16 * 16 * 9 * 32 * 32
    assert p_old.resolution == 32 and opswap.positions(MODEL)[3].resolution == 16
