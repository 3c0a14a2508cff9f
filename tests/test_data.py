"""Datasets (load_dataset and its loaders) and the batched on-device input pipeline."""
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from opswap.data import Batches, check_dataset, crop_flip, load_dataset, synthetic, write_cifar_root


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


def save_npz(path, **arrays) -> Path:
    """An npz dataset of 4 train and 2 test 2x2 images, with `arrays` replacing or adding arrays."""
    base = dict(x_train=np.zeros((4, 2, 2, 3), np.uint8), y_train=np.array([0, 1, 2, 1]),
                x_test=np.zeros((2, 2, 2, 3), np.uint8), y_test=np.array([2, 0]))
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})
    return Path(path)


def refused(name, path, match, error=ValueError):
    """`load_dataset` and `check_dataset` both refuse `path`, naming it, with `match` in the message."""
    pattern = re.escape(str(path)) + ".*" + match
    with pytest.raises(error, match=pattern):
        load_dataset(name, path)
    with pytest.raises(error, match=pattern):
        check_dataset(name, path)


BAD_NPZ = {
    "labels 0-9.5": (dict(y_train=np.array([0, 1.5, 9.5, 2])), r"y_train holds non-integer labels such as 1\.5"),
    "nan label": (dict(y_test=np.array([0, np.nan])), "y_test holds non-integer labels such as nan"),
    "negative": (dict(y_train=np.array([0, -1, 2, 1])), r"y_train holds negative labels \(min -1\)"),
    "too few labels": (dict(y_test=np.array([0])), r"y_test must have shape \(2,\) or \(2, 1\)"),
    "2-d labels": (dict(y_train=np.zeros((4, 2), int)), r"y_train must have shape \(4,\) or \(4, 1\).*\(4, 2\)"),
    "string labels": (dict(y_train=np.array(list("abab"))), "y_train must hold integer class labels, got dtype <U1"),
    "bool labels": (dict(y_train=np.array([True, False] * 2)), "y_train must hold integer class labels"),
    "float images": (dict(x_train=np.zeros((4, 2, 2, 3), np.float32)),
                     r"x_train must be uint8 images of shape \(N, H, W, 3\)"),
    "NCHW images": (dict(x_test=np.zeros((2, 3, 2, 2), np.uint8)), r"x_test must be uint8 .* got uint8 \(2, 3, 2, 2\)"),
    "no images": (dict(x_test=np.zeros((0, 2, 2, 3), np.uint8), y_test=np.zeros(0, int)),
                  "x_test must be uint8 images"),
    "test size": (dict(x_test=np.zeros((2, 3, 3, 3), np.uint8)), "x_test images are 3x3 but x_train images are 2x2"),
    "labels past classes": (dict(classes=np.array(["a", "b"])),
                            "y_train holds label 2, but labels must be < 2: classes names 2"),
    "2-d classes": (dict(classes=np.array([["a", "b", "c"]])), "classes must be a 1-d array of class names"),
    "object array": (dict(classes=np.array([{"a": 1}, None], dtype=object)), "array 'classes' cannot be read"),
    "missing keys": (dict(x_test=None, y_test=None, extra=np.zeros(1)),
                     r"lacks arrays x_test, y_test \(found: x_train, y_train, extra\)"),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_npz_contents_outside_the_contract_are_refused_naming_file_and_array(tmp_path, case):
    arrays, match = BAD_NPZ[case]
    refused("npz", save_npz(tmp_path / "d.npz", **arrays), match)


def test_npz_whole_float_and_column_labels_are_accepted_unchanged(tmp_path):
    path = save_npz(tmp_path / "d.npz", y_train=np.array([0.0, 1.0, 2.0, 1.0], np.float32),
                    y_test=np.array([[2], [0]], np.uint8))
    check_dataset("npz", path)
    data = load_dataset("npz", path)
    assert data.y_train.tolist() == [0, 1, 2, 1] and data.y_test.tolist() == [2, 0]
    assert data.y_train.dtype == torch.int64 and data.num_classes == 3


def test_npz_paths_that_are_not_npz_archives_say_what_they_are(tmp_path):
    (tmp_path / "notes.txt").write_text("x_train, y_train\n")
    refused("npz", tmp_path / "notes.txt", r"is not an \.npz archive; expected an \.npz")
    with pytest.raises(ValueError) as err:
        load_dataset("npz", tmp_path / "notes.txt")
    assert "pickle" not in str(err.value)
    np.save(tmp_path / "x.npy", np.zeros(3))
    refused("npz", tmp_path / "x.npy", r"is not an \.npz archive \(it is a single \.npy array\)")
    refused("npz", tmp_path, r"is a directory; an \.npz file is expected")
    refused("npz", tmp_path / "nope.npz", "does not exist", FileNotFoundError)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.md", "hello")
    refused("npz", tmp_path / "other.zip", r"lacks arrays x_train, y_train, x_test, y_test \(found: readme\.md\)")


def test_check_dataset_reads_only_the_image_headers(tmp_path):
    """check_dataset is cheap: an npz whose image data is cut short passes it, load_dataset refuses."""
    path = save_npz(tmp_path / "d.npz")
    cut = tmp_path / "cut.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cut, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-5] if name == "x_train.npy" else data)
    check_dataset("npz", cut)
    with pytest.raises(ValueError, match=re.escape(str(cut)) + ": array 'x_train' cannot be read"):
        load_dataset("npz", cut)
    check_dataset("synthetic")
    with pytest.raises(ValueError, match="allowed: cifar10"):
        check_dataset("mnist")


FLAWS = ("x dtype", "x shape", "x size", "y dtype", "y length", "y shape", "y values", "classes")


@st.composite
def npz_case(draw):
    """Random npz contents: valid, or with one flaw drawn from FLAWS (which may happen to be harmless)."""
    flaw = draw(st.sampled_from((None,) * 6 + FLAWS))
    hw = draw(st.sampled_from([(2, 2), (3, 1)]))
    pick = lambda valid, flawed, kind: draw(st.sampled_from(flawed if flaw == kind else valid))

    def images(n):
        dtype = pick(["uint8"], ["int8", "uint16", "float32", "bool"], "x dtype")
        shape = pick([(n, *hw, 3)], [(n, 3, *hw), (n, *hw), (n, *hw, 1), (1, n, *hw, 3), (0, *hw, 3)], "x shape")
        shape = pick([shape], [shape, (n, 4, 2, 3)], "x size")
        return (np.arange(np.prod(shape)) % 256).astype(dtype).reshape(shape)

    def labels(n):
        dtype = pick(["int64", "int32", "uint8", "uint64", "float32", "float64"],
                     ["bool", "<U2", "complex64", "float16"], "y dtype")
        length = pick([n], [0, n + 1, n - 1], "y length")
        form = pick([(-1,), (-1, 1)], [(-1, 2), (1, -1), ()], "y shape")
        count = 1 if form == () else 2 * length if form == (-1, 2) else length
        ints = st.integers(0, 12) if flaw != "y values" else st.integers(-3, 12)
        values = draw(st.lists(ints.map(float), min_size=count, max_size=count))
        if flaw == "y values" and dtype.startswith("float") and count:
            values[draw(st.integers(0, count - 1))] = draw(st.floats(-2, 12, width=16) | st.just(np.nan)
                                                           | st.just(np.inf))
        y = np.array(values, np.float64)
        y = y.astype(np.int64).astype(str) if dtype == "<U2" else y.astype(dtype) if dtype[0] in "fcb" \
            else y.astype(np.int64).astype(dtype)
        return y.reshape(form)

    n_train, n_test = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    arrays = dict(x_train=images(n_train), y_train=labels(n_train), x_test=images(n_test), y_test=labels(n_test))
    classes = pick([None, np.arange(13).astype(str)], [np.array([]), np.array(["a", "b", "c"]),
                                                       np.array([["a", "b"]])], "classes")
    if classes is not None:
        arrays["classes"] = classes
    return arrays


def contract(arrays) -> bool:
    """Whether `arrays` meet the npz contract, written out independently of opswap.data."""
    xs = arrays["x_train"], arrays["x_test"]
    if any(x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape for x in xs):
        return False
    if xs[0].shape[1:3] != xs[1].shape[1:3]:
        return False
    classes = arrays.get("classes")
    if classes is not None and len(classes) == 0:
        return False
    limit = len(classes) if classes is not None else 100_000
    for x, y in zip(xs, (arrays["y_train"], arrays["y_test"])):
        if y.dtype.kind not in "iuf" or y.shape not in ((len(x),), (len(x), 1)):
            return False
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            return False
        if y.min().item() < 0 or y.max().item() >= limit:
            return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=npz_case())
def test_npz_contents_are_loaded_exactly_or_refused_naming_the_file(arrays):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.npz"
        np.savez(path, **arrays)
        if contract(arrays):
            check_dataset("npz", path)
            data = load_dataset("npz", path)
            for split in ("train", "test"):
                x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
                assert torch.equal(getattr(data, f"x_{split}"), torch.from_numpy(x.transpose(0, 3, 1, 2)))
                assert getattr(data, f"y_{split}").tolist() == [int(v) for v in y.reshape(-1)]
            if "classes" in arrays:
                assert data.classes == tuple(arrays["classes"].tolist())
        else:
            for check in (check_dataset, load_dataset):
                with pytest.raises(ValueError, match=re.escape(str(path))):
                    check("npz", path)


def test_folder_errors_name_the_missing_subfolder_and_the_bad_image(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "cat" / "0.png")
    refused("folder", tmp_path, r"has no test/ \(found: train\); it needs train/ and test/", FileNotFoundError)
    refused("folder", tmp_path / "nope", "does not exist", FileNotFoundError)
    refused("folder", tmp_path / "train" / "cat" / "0.png", "is a file; dataset 'folder' needs train/ and test/")
    (tmp_path / "test" / "cat").mkdir(parents=True)
    refused("folder", tmp_path, "test: Found no valid file for the classes cat", FileNotFoundError)
    (tmp_path / "test" / "cat" / "0.png").write_text("not an image")
    check_dataset("folder", tmp_path)  # lists files only
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "test" / "cat" / "0.png"))
                       + " is not a readable image"):
        load_dataset("folder", tmp_path)


def test_a_cifar_root_without_batches_says_what_it_expects(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    expected = (f"no cifar-10-batches-py/ under {tmp_path}; "
                f"expected {tmp_path}/cifar-10-batches-py/ holding data_batch_1")
    with pytest.raises(FileNotFoundError, match=re.escape(expected) + ".*downloading is off"):
        load_dataset("cifar10", tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match=re.escape(expected) + r".*downloading https://www\.cs\.toronto"
                       r"\.edu/~kriz/cifar-10-python\.tar\.gz failed \(<urlopen error"):
        load_dataset("cifar10", tmp_path)
    check_dataset("cifar10", tmp_path)  # may be downloaded: fine, and nothing is fetched
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        check_dataset("cifar10", tmp_path, download=False)
    small = synthetic(10, 2, seed=0)
    write_cifar_root(tmp_path, *arrays(small), small.classes)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_3; expected"):
        load_dataset("cifar10", tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="looks like the batch folder itself: pass the folder above it"):
        load_dataset("cifar10", tmp_path / "cifar-10-batches-py", download=False)


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


def test_check_dataset_knows_the_largest_training_class(tmp_path):
    from PIL import Image

    path = save_npz(tmp_path / "d.npz", y_train=np.array([0, 1, 1, 2]), y_test=np.array([0, 1]))
    assert check_dataset("npz", path).largest_class == 2
    for split, n in (("train", {"cat": 1, "dog": 3}), ("test", {"cat": 1, "dog": 1})):
        for cls, k in n.items():
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i in range(k):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / split / cls / f"{i}.png")
    assert check_dataset("folder", tmp_path / "f").largest_class == 3
    assert check_dataset("synthetic").largest_class is None  # not known without making it


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


def test_check_dataset_gives_the_class_count_and_image_size_without_reading_images(tmp_path):
    info = check_dataset("npz", save_npz(tmp_path / "d.npz", x_train=np.zeros((4, 5, 7, 3), np.uint8),
                                         x_test=np.zeros((2, 5, 7, 3), np.uint8)))
    assert info.num_classes == 3 and info.image_size == (5, 7)
    named = check_dataset("npz", save_npz(tmp_path / "c.npz", classes=np.array(list("abcdef"))))
    assert named.num_classes == 6  # the classes array, not the largest label, sets the count
    assert check_dataset("synthetic")[:2] == (10, (32, 32))
    assert check_dataset("cifar100", tmp_path / "absent")[:2] == (100, (32, 32))  # may be downloaded


def test_a_large_val_fraction_leaves_every_class_in_training():
    labels = synthetic(60, 10).y_train
    split = load_dataset("synthetic", val_fraction=0.999, n_train=60, n_test=10)
    assert sorted(split.y_train.tolist()) == labels.unique().tolist()  # exactly one image per class
    assert len(split.y_train) + len(split.y_val) == 60
    usual = load_dataset("synthetic", val_fraction=0.1, n_train=60, n_test=10)
    counts = torch.bincount(labels, minlength=10).tolist()
    assert torch.bincount(usual.y_val, minlength=10).tolist() == [max(1, round(0.1 * n)) if n > 1 else 0
                                                                  for n in counts]


def test_a_val_fraction_that_would_hold_out_nothing_is_refused(tmp_path):
    path = save_npz(tmp_path / "d.npz", y_train=np.array([0, 1, 2, 3]), y_test=np.array([0, 1]))
    with pytest.raises(ValueError, match="val_fraction 0.2 holds out no image: every class of 'npz' has a single"):
        load_dataset("npz", path, val_fraction=0.2)
