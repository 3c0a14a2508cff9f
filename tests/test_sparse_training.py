"""Sparse training end to end: the trial record, and DSR tf-cnn against dense on real images."""
from __future__ import annotations


import pytest
import torch



def test_a_sparse_trial_records_sparsity_and_bytes(tmp_path):
    import numpy as np

    from opswap.run.spec import TrialSpec
    from opswap.run.trial import run_trial

    rng = np.random.default_rng(0)
    images = tmp_path / "tiny.npz"
    np.savez(images, x_train=rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(128) % 10, x_test=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(64) % 10)
    settings = TrialSpec.create(model="tf-cnn", dataset="npz", data=images, epochs=1,
                                sparsity=0.9, prune="dsr", latency_batch_size=0,
                                train={"optimizer": "adam", "batch_size": 64, "normalize": "unit"})
    record = run_trial(settings)
    assert record["status"] == "ok", record["error"]
    m = record["metrics"]
    assert m["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert set(m["layer_sparsity"]) == {"features.3", "features.6", "classifier.1"}
    assert all(s == pytest.approx(0.9, abs=1e-4) for s in m["layer_sparsity"].values())
    assert m["dense_bytes"] == 4 * 122_570
    assert 0.19 < m["csr_bytes"] / m["dense_bytes"] < 0.23


@pytest.mark.slow
def test_dsr_tfcnn_ends_within_a_few_points_of_dense_on_cifar10_mini(cifar10_mini):
    from opswap.data import load_dataset
    from opswap.models import build_model
    from opswap.sparse import make_pruner, sparsify, sparsity_report
    from opswap.training import TrainConfig, train

    data = load_dataset("npz", cifar10_mini, train_fraction=0.25, seed=0)
    config = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-3, normalize="unit",
                         augment=False, seed=0)
    steps = config.epochs * -(-len(data.y_train) // config.batch_size)
    torch.manual_seed(0)
    dense = train(build_model("tf-cnn"), data, config)
    torch.manual_seed(0)
    model = sparsify(build_model("tf-cnn"), 0.8, rescale=True)
    pruner = make_pruner("dsr", model, 0.8, steps, period=20)  # a few reallocations in a short run
    sparse = train(model, data, config, pruner=pruner)
    assert len(pruner.log) == steps // 20
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert dense.metrics["test_acc"] > 20.0  # learnt something
    assert sparse.metrics["test_acc"] > dense.metrics["test_acc"] - 6.0
