"""The traditional baseline: HOG + colour histograms with a linear classifier."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from opswap.methods.traditional import TraditionalConfig, features, fit_evaluate

FAST = TraditionalConfig(latency_repeats=3)


def colour_data(n_train=300, n_test=120, seed=0):
    """Class k is a noisy image whose dominant channel is k (3 classes, linearly separable)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 90, (n, 3, 32, 32))
        x[np.arange(n), y] += 150
        return torch.from_numpy(x.astype(np.uint8)), torch.from_numpy(y)

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                           num_classes=3)


def test_feature_layout_is_hog_then_colour_histograms():
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[1, 0] = 255
    f = features(images)
    hog_dim = 3 * 3 * 2 * 2 * 9  # 3×3 blocks of 2×2 cells, 9 orientations
    assert f.shape == (2, hog_dim + 3 * 16)
    colour = f[:, hog_dim:].reshape(2, 3, 16)
    assert colour[0, :, 0].tolist() == [1.0, 1.0, 1.0]            # all black: first bin
    assert colour[1, 0, 15] == 1.0 and colour[1, 1, 0] == 1.0       # pure red
    np.testing.assert_allclose(colour.sum(-1), 1.0)


def test_separable_colours_are_learned_and_metrics_have_record_keys():
    metrics = fit_evaluate(colour_data(), seed=0, config=FAST)
    assert metrics["test_acc"] == pytest.approx(100.0)
    assert metrics["train_acc"] == pytest.approx(100.0)
    assert metrics["params"] == (324 + 48 + 1) * 3
    assert metrics["dense_bytes"] == ((324 + 48) * 3 + 3 + 2 * (324 + 48)) * 4  # float32
    assert len(metrics["per_class_acc"]) == 3 and metrics["macs"] is None
    assert metrics["test_loss"] > 0 and metrics["latency_ms_b1"] > 0
    assert {"csr_bytes", "distill_loss", "replace1_acc", "fit_seconds"} <= set(metrics)


def test_max_train_subsamples_by_class():
    metrics = fit_evaluate(colour_data(), config=TraditionalConfig(max_train=60, latency_repeats=1))
    assert metrics["n_train"] == pytest.approx(60, abs=2)


@pytest.mark.parametrize("bad", [dict(colour_bins=10), dict(max_train=0)])
def test_config_errors_say_what_is_allowed(bad):
    with pytest.raises(ValueError, match="must"):
        TraditionalConfig(**bad)


def test_cifar10_mini_is_clearly_above_chance(cifar10_mini):
    arrays = np.load(cifar10_mini)
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    data = SimpleNamespace(x_train=nchw(arrays["x_train"][:1000]),
                           y_train=torch.from_numpy(arrays["y_train"][:1000]),
                           x_test=nchw(arrays["x_test"]), y_test=torch.from_numpy(arrays["y_test"]),
                           num_classes=10)
    metrics = fit_evaluate(data, seed=0, config=FAST)
    assert metrics["test_acc"] > 25.0  # chance is 10 %
    assert metrics["train_acc"] > metrics["test_acc"]
