"""Datasets (load_dataset and its loaders) and the batched on-device input pipeline."""
import numpy as np
import pytest
import torch

from opswap.data import Batches, crop_flip, load_dataset, synthetic, write_cifar_root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    return synthetic(200, 50, seed=3)


def arrays(data):
    """uint8 NHWC arrays of an ImageData, as a loader receives them."""
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()
    return nhwc(data.x_train), data.y_train.numpy(), nhwc(data.x_test), data.y_test.numpy()


def test_synthetic_is_deterministic_balanced_and_uint8(small):
    again = synthetic(200, 50, seed=3)
    assert torch.equal(small.x_train, again.x_train) and torch.equal(small.y_test, again.y_test)
    assert small.x_train.shape == (200, 3, 32, 32) and small.x_train.dtype == torch.uint8
    assert torch.bincount(small.y_train).tolist() == [20] * 10
    assert small.num_classes == 10 and len(small.classes) == 10
    assert not torch.equal(synthetic(200, 50, seed=4).x_train, small.x_train)


def test_npz_round_trip(tmp_path, small):
    xtr, ytr, xte, yte = arrays(small)
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             classes=np.array(small.classes))
    data = load_dataset("npz", tmp_path / "d.npz")
    assert torch.equal(data.x_train, small.x_train) and torch.equal(data.y_test, small.y_test)
    assert data.classes == small.classes
    assert data.mean == pytest.approx(small.mean) and data.std == pytest.approx(small.std)


def test_npz_errors_name_what_is_missing(tmp_path, small):
    xtr, ytr, _, _ = arrays(small)
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr)
    with pytest.raises(ValueError, match="x_test"):
        load_dataset("npz", tmp_path / "d.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset("npz", tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("npz")
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_original_layout_through_torchvision(tmp_path, small, name):
    xtr, ytr, xte, yte = arrays(small)
    write_cifar_root(tmp_path, xtr, ytr, xte, yte, small.classes, cifar100=name == "cifar100")
    data = load_dataset(name, tmp_path)
    assert torch.equal(data.x_train, small.x_train) and torch.equal(data.y_train, small.y_train)
    assert torch.equal(data.x_test, small.x_test) and data.classes == small.classes
    assert data.mean[0] == pytest.approx(0.4914 if name == "cifar10" else 0.5071)


def test_folder_resizes_to_32(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    data = load_dataset("folder", tmp_path)
    assert data.x_train.shape == (6, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.classes == ("cat", "dog") and data.y_train.tolist() == [0, 0, 0, 1, 1, 1]


def test_validation_split_is_stratified_disjoint_and_seeded(tmp_path, small):
    xtr, ytr, xte, yte = arrays(small)
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    a = load_dataset("npz", tmp_path / "d.npz", val_fraction=0.2, seed=1)
    b = load_dataset("npz", tmp_path / "d.npz", val_fraction=0.2, seed=1)
    c = load_dataset("npz", tmp_path / "d.npz", val_fraction=0.2, seed=2)
    assert torch.bincount(a.y_val).tolist() == [4] * 10 and len(a.y_train) == 160
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    pixels = lambda x: {bytes(im.numpy()) for im in x}
    assert not pixels(a.x_val) & pixels(a.x_train)
    assert torch.equal(a.x_test, small.x_test)  # the test set is never touched
    sub = load_dataset("npz", tmp_path / "d.npz", train_fraction=0.5)
    assert torch.bincount(sub.y_train).tolist() == [10] * 10


def test_crop_flip_moves_and_mirrors_pixels():
    x = (torch.arange(2 * 3 * 32 * 32) % 251).to(torch.uint8).reshape(2, 3, 32, 32)
    out = crop_flip(x, torch.tensor([[4, 4], [0, 8]]), torch.tensor([False, True]))
    assert torch.equal(out[0], x[0])  # offset 4 = no shift, no flip
    # shifted down 4 (zero rows on top), window 4 px right, then mirrored: zeros on the left
    assert torch.equal(out[1, :, 4:, 4:], x[1, :, :28, 4:].flip(2))
    assert out[1, :, :4].sum() == 0 and out[1, :, :, :4].sum() == 0


def test_batches_normalise_and_are_seeded(small):
    kw = dict(mean=small.mean, std=small.std, augment=True, shuffle=True)
    one = [x for x, _ in Batches(small.x_train, small.y_train, 64, seed=5, **kw)]
    two = [x for x, _ in Batches(small.x_train, small.y_train, 64, seed=5, **kw)]
    other = [x for x, _ in Batches(small.x_train, small.y_train, 64, seed=6, **kw)]
    assert len(one) == 4 and one[-1].shape == (8, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], other[0])
    x, y = next(iter(Batches(small.x_test, small.y_test, 50, normalize="unit")))
    torch.testing.assert_close(x, small.x_test.float() / 255)
    assert torch.equal(y, small.y_test) and 0 <= x.min() and x.max() <= 1
    x, _ = next(iter(Batches(small.x_test, small.y_test, 50, mean=small.mean, std=small.std)))
    mean = torch.tensor(small.mean).view(1, 3, 1, 1)
    std = torch.tensor(small.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (small.x_test / 255 - mean) / std)
    epochs = Batches(small.x_train, small.y_train, 200, shuffle=True, seed=0)
    first, second = [y for _, y in epochs], [y for _, y in epochs]
    assert not torch.equal(first[0], second[0])  # every epoch a new order


def test_cifar10_mini_loads(cifar10_mini):
    data = load_dataset("npz", cifar10_mini)
    assert data.x_train.shape == (4660, 3, 32, 32) and len(data.y_test) == 846
    assert data.classes[0] == "airplane" and data.num_classes == 10


def test_synthetic_is_learnable_and_rewards_capacity():
    from torch import nn

    from opswap.training import TrainConfig, train

    def cnn(widths):
        torch.manual_seed(0)
        layers, c_in = [], 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))

    data = synthetic(2000, 400)
    config = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
    small = train(cnn([4, 8]), data, config).metrics["test_acc"]
    larger = train(cnn([8, 16, 32]), data, config).metrics["test_acc"]
    assert small > 20.0 and larger > small + 3.0  # chance is 10 %
