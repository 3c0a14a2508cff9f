"""CSR export / import round trip and CSR sparse inference."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from opswap.sparse import (SparseConv2d, SparseLinear, dynamic_layers, export_csr, load_csr,
                           make_pruner, sparsify, sparsity_report, to_sparse_inference)


@pytest.fixture(scope="module")
def trained_tfcnn():
    """A tf-cnn after a few DSR steps (shared: tests must not modify it)."""
    from opswap.models import build_model

    torch.manual_seed(0)
    model = sparsify(build_model("tf-cnn"), 0.9)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    pruner = make_pruner("dsr", model, 0.9, 10, period=3)
    pruner.before_training(model, opt)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for step in range(1, 7):  # regrowth leaves active weights that are exactly zero
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.after_step(step)
    model.eval()
    assert any(((l.weight == 0) & l.mask).any() for _, l in dynamic_layers(model))
    return model


def test_round_trip_is_exact_including_masks(tmp_path, trained_tfcnn):
    from opswap.models import build_model

    model = trained_tfcnn
    path = tmp_path / "model.safetensors"
    export_csr(model, path)
    restored = load_csr(path, build_model("tf-cnn")).eval()
    for (name, a), (_, b) in zip(dynamic_layers(model), dynamic_layers(restored)):
        assert torch.equal(a.mask, b.mask), name
        assert torch.equal(a.weight, b.weight), name
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(model(x), restored(x))
    assert sparsity_report(restored) == sparsity_report(model)


def test_file_holds_int32_csr_arrays_without_oversized_storage(tmp_path, trained_tfcnn):
    model = trained_tfcnn
    path = tmp_path / "model.safetensors"
    size = export_csr(model, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        crow = f.get_tensor("features.3.weight.crow_indices")
        col = f.get_tensor("features.3.weight.col_indices")
        values = f.get_tensor("features.3.weight.values")
    assert "features.3.weight" not in keys and "features.3.mask" not in keys
    assert "features.0.weight" in keys  # the stem stays dense
    assert crow.dtype == col.dtype == torch.int32 and values.dtype == torch.float32
    layer = model.features[3]
    assert crow.shape == (64 + 1,) and col.numel() == values.numel() == layer.nnz
    # The file is about as big as the arrays it holds: the arrays are not views of dense storage.
    report = sparsity_report(model)
    buffers = sum(b.numel() * 4 for n, b in model.named_buffers() if not n.endswith("mask"))
    assert size < report["csr_bytes"] + buffers + 4096


@pytest.mark.parametrize("sparsity, ratio", [(0.8, 0.40), (0.9, 0.20), (0.95, 0.10)])
def test_csr_bytes_match_the_design_ratio(sparsity, ratio):
    layer = sparsify(nn.Linear(1024, 1024, bias=False), sparsity)
    report = sparsity_report(nn.Sequential(layer))
    assert report["csr_bytes"] / report["dense_bytes"] == pytest.approx(ratio, abs=0.002)


def test_load_refuses_a_file_of_another_architecture(tmp_path, trained_tfcnn):
    from opswap.models import build_model

    path = tmp_path / "model.safetensors"
    export_csr(trained_tfcnn, path)
    with pytest.raises(ValueError, match="does not exist in the model|shape"):
        load_csr(path, build_model("wrn-10-1"))


def test_sparse_inference_equals_dense_for_tfcnn(trained_tfcnn):
    model = trained_tfcnn
    sparse = to_sparse_inference(model)
    assert isinstance(sparse.features[3], SparseConv2d) and isinstance(sparse.classifier[1], SparseLinear)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),   # depthwise
    dict(in_channels=8, out_channels=12, kernel_size=(3, 5), padding=(1, 2), dilation=2, groups=2),
    dict(in_channels=8, out_channels=16, kernel_size=1, stride=2),
])
def test_sparse_conv_equals_dense(kwargs):
    torch.manual_seed(0)
    layer = sparsify(nn.Conv2d(**kwargs), 0.7).eval()
    layer.apply_mask_()
    x = torch.randn(3, 8, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(to_sparse_inference(layer)(x), layer(x), rtol=0, atol=1e-5)


def test_sparse_linear_equals_dense_on_any_leading_shape():
    torch.manual_seed(0)
    layer = sparsify(nn.Linear(40, 24), 0.9).eval()
    x = torch.randn(2, 5, 40)
    with torch.no_grad():
        torch.testing.assert_close(to_sparse_inference(layer)(x), layer(x), rtol=0, atol=1e-5)


def test_export_csr_command(tmp_path, capsys, trained_tfcnn):
    from safetensors.torch import save_file

    from opswap.cli import main
    from opswap.models import build_model

    model = trained_tfcnn
    weights = tmp_path / "trial.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "trial.csr.safetensors"
    assert main(["export-csr", str(weights), "--model", "tf-cnn", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = sparsity_report(model)
    assert f"{report['dense_bytes']:,}" in printed and f"{report['csr_bytes']:,}" in printed
    restored = load_csr(out, build_model("tf-cnn")).eval()
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(restored(x), model(x))
    assert main(["export-csr", str(tmp_path / "missing.safetensors"), "--model", "tf-cnn"]) == 2
    assert "does not exist" in capsys.readouterr().err
    before = weights.read_bytes()
    assert main(["export-csr", str(weights), "--model", "tf-cnn", "--out", str(weights)]) == 2
    assert "is the weights file itself" in capsys.readouterr().err and weights.read_bytes() == before


@pytest.mark.parametrize("stride, bias", [(1, True), (2, False), (3, True)])
def test_a_1x1_csr_conv_needs_no_im2col_and_equals_the_dense_conv(stride, bias):
    from opswap.sparse import SparseConv1x1

    torch.manual_seed(0)
    layer = sparsify(nn.Conv2d(12, 20, 1, stride=stride, bias=bias), 0.8).eval()
    layer.apply_mask_()
    sparse = to_sparse_inference(layer)
    assert isinstance(sparse[0], SparseConv1x1)
    x = torch.randn(3, 12, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), rtol=0, atol=1e-5)
