"""The deployed form: chosen per layer by measurement, never slower than dense, outputs unchanged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import opswap
from opswap.sparse import (deployed_report, dynamic_layers, make_pruner, sparsify, to_sparse_inference)
from opswap.sparse.deploy import CompactLayer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dsr_tfcnn():
    torch.manual_seed(0)
    model = sparsify(opswap.build_model("tf-cnn"), 0.9).eval()
    for _, layer in dynamic_layers(model):
        layer.apply_mask_()
    return model


def test_the_chooser_never_picks_a_form_slower_than_dense_by_its_own_measurements(dsr_tfcnn):
    x = torch.rand(32, 3, 32, 32)
    deployed, report = to_sparse_inference(dsr_tfcnn, x, min_run_time=0.02)
    assert [row["layer"] for row in report["layers"]] == ["features.3", "features.6", "classifier.1"]
    for row in report["layers"]:
        assert set(row["ms"]) >= {"dense", "csr"}
        assert row["ms"][row["chosen"]] <= row["ms"]["dense"], row
    if not report["fallback"]:
        assert report["model_ms"]["deployed"] <= report["model_ms"]["dense"]
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), dsr_tfcnn(x), rtol=0, atol=1e-5)


def test_channel_masked_models_deploy_physically_smaller():
    torch.manual_seed(0)
    model = opswap.build_model("tf-cnn")
    make_pruner("channel", model, 0.5, 10).before_training(model, None)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    deployed, report = to_sparse_inference(model, x, min_run_time=0.01)
    assert report["removed_channels"] == {"features.0": 16, "features.3": 32, "features.6": 32, "classifier.1": 32}
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=0, atol=1e-5)


def test_deployed_report_gives_latencies_and_stored_bytes(dsr_tfcnn):
    report = deployed_report(dsr_tfcnn, batch_sizes=(1, 8), min_run_time=0.01, rounds=1)
    assert [b["batch_size"] for b in report["batches"]] == [1, 8]
    for batch in report["batches"]:
        assert batch["deployed_ms"] > 0 and batch["dense_ms"] > 0
        assert batch["speedup"] == pytest.approx(batch["dense_ms"] / batch["deployed_ms"])
        csr_layers = [name for name, form in batch["forms"].items() if form == "csr"]
        assert batch["stored_bytes"] <= report["dense_bytes"]
        if not csr_layers:
            assert batch["stored_bytes"] == report["dense_bytes"]
    assert report["dense_bytes"] == 4 * 122_570 and 0.19 < report["csr_bytes"] / report["dense_bytes"] < 0.23
    assert report["structured_bytes"] == report["dense_bytes"] and report["nm_bytes"] is None


def test_nm_models_report_their_nm_bytes():
    torch.manual_seed(0)
    model = sparsify(opswap.build_model("tf-cnn"), 0.5)
    make_pruner("nm", model, 0.5, 10).before_training(model, None)
    report = deployed_report(model.eval(), batch_sizes=(2,), min_run_time=0.01, rounds=1)
    sparse_weights = sum(layer.weight.numel() for _, layer in dynamic_layers(model))
    assert report["nm_pattern"] == [2, 4]
    assert report["nm_bytes"] == report["dense_bytes"] - 4 * sparse_weights + sparse_weights * 17 // 8  # 2.125 bytes a weight


@pytest.mark.parametrize("layer", [nn.Conv2d(6, 5, 3, padding=1), nn.Linear(12, 7)])
def test_the_compact_form_equals_the_dense_layer(layer):
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight[1] = 0      # a dead filter: its output is its bias
        layer.weight[:, 2] = 0   # an unused input
    compact = CompactLayer(layer)
    assert compact.removes_anything
    x = torch.randn(3, 6, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(2, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), layer(x), rtol=0, atol=1e-6)


def test_candidates_are_checked(dsr_tfcnn):
    with pytest.raises(ValueError, match="must include 'dense'"):
        to_sparse_inference(dsr_tfcnn, torch.rand(1, 3, 32, 32), candidates=("csr",))


def test_a_compact_form_larger_than_dense_is_never_offered(dsr_tfcnn):
    # At 90 % random sparsity the classifier drops a few inputs, but its kept-index buffer
    # outweighs them: measured speed must not be able to choose a deployment larger than dense.
    from opswap.sparse.deploy import _forms, plain_layer, stored_nbytes

    layers = dict(dynamic_layers(dsr_tfcnn))
    compact = CompactLayer(layers["classifier.1"])
    assert compact.removes_anything and compact.stored_nbytes() > stored_nbytes(plain_layer(layers["classifier.1"]))
    for layer in layers.values():
        forms = _forms(layer, ("csr", "channel"))
        assert all(stored_nbytes(form) < stored_nbytes(forms["dense"]) for name, form in forms.items()
                   if name == "channel")
    assert "channel" not in _forms(layers["classifier.1"], ("csr", "channel"))
