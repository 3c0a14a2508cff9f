"""The features stage: computed once after the bank, reused while its inputs are unchanged."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opswap.analysis.cells import FEATURES_FILE, read_features
from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
from opswap.models import build_model
from opswap.ops import create_op, parse_op
from opswap.study import features as stage
from opswap.study.expand import expand_study
from opswap.study.load import load_study
from opswap.study.schema import StudyError
from opswap.substitution import positions

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = """name = "feat"
model = "wrn-10-1"
dataset = "npz"
data = "{data}"
positions = [1, 2]
candidates = ["identity", "conv_bn_e1"]
init = ["lana", "random"]
seeds = [0]
epochs = [1]
[teacher]
checkpoint = "{teacher}"
[predict]
proxies = ["synflow", "snip"]
init = ["lana"]
batches = 1
batch_size = 8
heldout_batches = 1
"""


@pytest.fixture
def study(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("wrn-10-1").eval()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    spots = {p.index: p for p in positions(teacher)}
    entries = []
    for position, op in [(1, "identity"), (2, "conv_bn_e1")]:  # (1, conv_bn_e1) is not in the bank
        spec, s = parse_op(op), spots[position]
        module = create_op(spec, s.c_in, s.c_out, s.stride)
        entries.append(BankEntry(position, spec.name, spec.family, spec.kwargs, s.c_in, s.c_out, s.stride,
                                 module.state_dict(), distill_loss=0.1 * position, replace1_acc=10.0 * position))
    root = tmp_path / "results" / "feat"
    bank = WeightBank(entries, teacher_fingerprint=teacher_fingerprint(teacher), model="wrn-10-1").save(
        root / "bank.safetensors")
    (root / "bank.key").write_text("k1\n")
    file = tmp_path / "feat.toml"
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=images(32), y_train=np.arange(32) % 10, x_test=images(16), y_test=np.arange(16) % 10)
    file.write_text(STUDY.format(teacher=path, data=data))
    return file, str(path), str(bank), root


def test_features_are_computed_once_and_recomputed_when_inputs_change(study, monkeypatch):
    file, teacher, bank, root = study
    calls = []
    real = stage._compute
    monkeypatch.setattr(stage, "_compute", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    s = load_study(file)
    out = stage.prepare_features(s, expand_study(s), teacher, bank, root)
    assert out == str(root / FEATURES_FILE) and len(calls) == 1
    frame = read_features(root)
    assert frame[["position", "op"]].values.tolist() == [[1, "conv_bn_e1"], [1, "identity"], [2, "conv_bn_e1"]]
    assert {"replace1_acc", "distill_loss", "heldout_loss", "params", "macs", "op_params_count", "op_macs",
            "lana_synflow", "lana_synflow_block", "lana_snip", "lana_snip_block"} <= set(frame.columns)
    missing = frame[(frame.position == 1) & (frame.op == "conv_bn_e1")].iloc[0]  # not in the bank
    assert math.isnan(missing["lana_snip"]) and math.isnan(missing["replace1_acc"]) and missing["params"] > 0
    ident = frame[frame.op == "identity"].iloc[0]
    assert ident["op_params_count"] == 0 and ident["lana_synflow_block"] == 0 and ident["replace1_acc"] == 10.0
    assert frame["heldout_loss"].notna().tolist() == [False, True, True] and (frame["params"] > 0).all()
    meta = frame.attrs["meta"]
    assert meta["pairs"] == 3 and meta["seconds_per_pair"]["total"] > 0 and meta["heldout_split"] == "test"
    assert set(meta["teacher_proxies"]) == {"1", "2"}  # the teacher's own proxies, per position
    # unchanged inputs: reused
    assert stage.prepare_features(s, expand_study(s), teacher, bank, root) == out and len(calls) == 1
    # other [predict] settings, or another bank: computed again
    s2 = load_study(file, ["predict.proxies=[\"synflow\"]"])
    stage.prepare_features(s2, expand_study(s2), teacher, bank, root)
    assert len(calls) == 2 and "lana_snip" not in read_features(root).columns
    (root / "bank.key").write_text("k2\n")
    stage.prepare_features(s2, expand_study(s2), teacher, bank, root)
    assert len(calls) == 3
    # the correction does not change the features
    s3 = load_study(file, ["predict.proxies=[\"synflow\"]", "predict.correction=\"bh\""])
    stage.prepare_features(s3, expand_study(s3), teacher, bank, root)
    assert len(calls) == 3
    off = load_study(file, ["predict.features=false"])
    assert stage.prepare_features(off, expand_study(off), teacher, bank, root) is None


@pytest.mark.parametrize("setting, message", [
    ('predict.proxies=["synflw"]', "unknown proxy 'synflw'. Did you mean 'synflow'?"),
    ("predict.batches=0", "predict.batches"),
    ('predict.correction="bonferroni"', "predict.correction"),
    ('predict.color=1', "unknown key"),
    ('run.order="fastest"', "run.order"),
])
def test_predict_and_order_settings_are_validated(study, setting, message):
    file, *_ = study
    with pytest.raises(StudyError) as err:
        load_study(file, [setting])
    assert message in str(err.value)


def test_a_worker_told_to_stop_does_not_wait_for_another_runners_features(study):
    from opswap.run import stop
    from opswap.study.claims import try_claim

    file, teacher, bank, root = study
    s = load_study(file)
    held = try_claim(root / "claims", "features", stale_after=s.run.stale_after)  # another runner computes them
    assert held is not None
    stop.request_stop("test")
    try:
        with pytest.raises(RuntimeError, match="stopped \\(test\\) while another runner computes the features"):
            stage.prepare_features(s, expand_study(s), teacher, bank, root)
    finally:
        stop.clear_stop()
        held.release()
    assert not (root / FEATURES_FILE).exists()
