"""Datasets as uint8 tensors and a batched, on-device input pipeline.

The approach follows cifar10-airbench (Keller Jordan, 2024): the whole dataset is held once as a
uint8 tensor on the training device and augmented with batched tensor ops (random crop with
4-pixel padding, horizontal flip), so no DataLoader workers sit on the hot path.
Datasets: CIFAR-10/100 (Krizhevsky, 2009) through torchvision, a built-in synthetic set of
oriented gratings, npz arrays and image folders.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

DATASETS = ("cifar10", "cifar100", "synthetic", "npz", "folder")
DEFAULT_ROOT = Path(os.environ.get("OPSWAP_DATA", Path.home() / ".cache" / "opswap" / "data"))

# Per-channel statistics of the CIFAR training sets, in [0, 1] units.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset as uint8 NCHW CPU tensors with its labels and per-channel statistics."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """The (images, labels) of `split`: train, val or test."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; allowed: train, val, test")
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if x is None:
            raise ValueError(f"dataset {self.name!r} has no {split} split (set val_fraction > 0)")
        return x, y


def load_dataset(name: str, root: str | os.PathLike | None = None, *, val_fraction: float = 0.0,
                 train_fraction: float = 1.0, seed: int = 0, **options) -> ImageData:
    """Load dataset `name`, optionally hold out a validation split and subsample training."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if name in ("cifar10", "cifar100"):
        data = _cifar(name, Path(root) if root else DEFAULT_ROOT / name)
    elif name == "synthetic":
        data = synthetic(**options)
    elif root is None:
        raise ValueError(f"dataset {name!r} needs a path (--data): "
                         + ("an .npz file" if name == "npz" else "a folder with train/ and test/"))
    elif name == "npz":
        data = _npz(Path(root))
    else:
        data = _folder(Path(root))
    if val_fraction > 0:
        keep, held = _stratified(data.y_train, val_fraction, seed)
        data = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                       x_val=data.x_train[held], y_val=data.y_train[held])
    if train_fraction < 1.0:
        _, keep = _stratified(data.y_train, train_fraction, seed + 1)
        data = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    return data


def _stratified(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices of `y` in two, `fraction` of every class (at least one) in the second."""
    gen = torch.Generator().manual_seed(seed)
    rest, part = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(len(idx), max(1, round(fraction * len(idx))))
        part.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(part).sort().values


def _stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, in [0, 1] units."""
    xf = x.double().div_(255)
    return tuple(xf.mean((0, 2, 3)).tolist()), tuple(xf.std((0, 2, 3)).tolist())


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, classes=None, *, mean=None, std=None) -> ImageData:
    """Build `ImageData` from uint8 NHWC arrays and integer labels."""
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"{name}: {key} must be uint8 NHWC with 3 channels, "
                             f"got {x.dtype} {tuple(x.shape)}")
    xs = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in (x_train, x_test)]
    ys = [torch.as_tensor(np.asarray(y), dtype=torch.int64).flatten() for y in (y_train, y_test)]
    for x, y, split in zip(xs, ys, ("train", "test")):
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} {split} images but {len(y)} labels")
    num_classes = len(classes) if classes is not None else int(max(ys[0].max(), ys[1].max())) + 1
    if min(ys[0].min(), ys[1].min()) < 0 or max(ys[0].max(), ys[1].max()) >= num_classes:
        raise ValueError(f"{name}: labels must be in [0, {num_classes})")
    classes = tuple(str(c) for c in classes) if classes is not None else tuple(map(str, range(num_classes)))
    if mean is None:
        mean, std = _stats(xs[0])
    return ImageData(name, xs[0], ys[0], xs[1], ys[1], num_classes, classes, tuple(mean), tuple(std))


def _npz(path: Path) -> ImageData:
    if not path.is_file():
        raise FileNotFoundError(f"npz dataset {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}; needs x_train, y_train, "
                             "x_test, y_test (uint8 NHWC images, integer labels)")
        classes = f["classes"] if "classes" in f.files else None
        return from_arrays("npz", f["x_train"], f["y_train"], f["x_test"], f["y_test"], classes)


def cifar_reader(name: str):
    """torchvision's CIFAR reader, checking that the files exist rather than their md5."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100

    # Hashing 180 MB on every load costs seconds per trial; presence is what matters here.
    class Reader(base):
        train_list = [(f, None) for f, _ in base.train_list]
        test_list = [(f, None) for f, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return Reader


def _cifar(name: str, root: Path) -> ImageData:
    reader = cifar_reader(name)
    probe = reader.__new__(reader)
    probe.root = str(root)
    download = not probe._check_integrity()
    try:
        train = reader(str(root), train=True, download=download)
        test = reader(str(root), train=False)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError
        raise FileNotFoundError(
            f"{name}: no dataset under {root} (expected {root}/{reader.base_folder}/) and the "
            f"download failed ({err}); pass --data with a root that holds it") from err
    mean, std = _CIFAR_STATS[name]
    return from_arrays(name, train.data, np.array(train.targets), test.data, np.array(test.targets),
                       train.classes, mean=mean, std=std)


def write_cifar_root(root: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray,
                     x_test: np.ndarray, y_test: np.ndarray, classes, *, cifar100: bool = False) -> Path:
    """Write uint8 NHWC arrays in the original CIFAR python layout under `root`."""
    reader = cifar_reader("cifar100" if cifar100 else "cifar10")
    folder = Path(root) / reader.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if cifar100 else "labels"
    chunks = np.array_split(np.arange(len(x_train)), len(reader.train_list))
    for (fname, _), idx in zip(reader.train_list, chunks):
        _pickle(folder / fname, {"data": x_train[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1),
                                 label_key: [int(v) for v in y_train[idx]]})
    _pickle(folder / reader.test_list[0][0], {"data": x_test.transpose(0, 3, 1, 2).reshape(len(x_test), -1),
                                              label_key: [int(v) for v in y_test]})
    _pickle(folder / reader.meta["filename"], {reader.meta["key"]: [str(c) for c in classes]})
    return Path(root)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _folder(root: Path) -> ImageData:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(f"image folder dataset {root} needs train/ and test/ subfolders, "
                                "one folder per class in each")
    tf = transforms.Compose([transforms.Resize((32, 32)), transforms.PILToTensor()])
    train, test = ImageFolder(str(root / "train"), tf), ImageFolder(str(root / "test"), tf)
    if train.classes != test.classes:
        raise ValueError(f"{root}: train classes {train.classes} differ from test classes {test.classes}")

    def stack(ds):
        pairs = [ds[i] for i in range(len(ds))]
        x = torch.stack([img.expand(3, -1, -1) for img, _ in pairs])
        return x.permute(0, 2, 3, 1).numpy(), np.array([label for _, label in pairs])

    (xtr, ytr), (xte, yte) = stack(train), stack(test)
    return from_arrays("folder", xtr, ytr, xte, yte, train.classes)


def synthetic(n_train: int = 5000, n_test: int = 1000, *, num_classes: int = 10, noise: float = 0.1,
              seed: int = 1234) -> ImageData:
    """Oriented, coloured gratings under a soft window on a random background, one class each.

    A class is an (orientation, frequency) pair; position, size, phase, colour, contrast and the
    background vary per image and Gaussian noise is added, so a small CNN learns it within an
    epoch while capacity still pays off. The same arguments always give the same images.
    """
    if num_classes < 2 or n_train < num_classes or n_test < 1:
        raise ValueError("synthetic needs num_classes >= 2, n_train >= num_classes and n_test >= 1")
    rng = np.random.default_rng(seed)
    n_freq = 2 if num_classes % 2 == 0 else 1
    n_orient = num_classes // n_freq
    orient = np.arange(num_classes) % n_orient * np.pi / n_orient
    freq = np.where(np.arange(num_classes) // n_orient == 0, 4.0, 8.0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % num_classes
        rng.shuffle(y)
        g = np.linspace(0.0, 1.0, 32, dtype=np.float32)
        yy, xx = np.meshgrid(g, g, indexing="ij")
        theta = orient[y] + rng.normal(0, 0.05, n)
        f = freq[y] * rng.uniform(0.85, 1.15, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        cy, cx = rng.uniform(0.25, 0.75, (2, n))
        width = rng.uniform(0.2, 0.4, n)
        contrast = rng.uniform(0.3, 0.6, n)
        colour = rng.uniform(-1, 1, (n, 3))
        colour /= np.linalg.norm(colour, axis=1, keepdims=True) + 1e-6
        s = lambda a: a[:, None, None].astype(np.float32)
        wave = np.sin(2 * np.pi * s(f) * (xx * s(np.cos(theta)) + yy * s(np.sin(theta))) + s(phase))
        window = np.exp(-((xx - s(cx)) ** 2 + (yy - s(cy)) ** 2) / (2 * s(width) ** 2))
        pattern = s(contrast) * wave * window
        background = rng.uniform(0.25, 0.75, (n, 3, 1, 1)) + rng.uniform(-0.15, 0.15, (n, 3, 1, 1)) * xx
        img = background + pattern[:, None] * colour[:, :, None, None] * 1.7
        img += rng.normal(0, noise, img.shape)
        x = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        return x, y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    names = [f"orient{o * 180 // n_orient}_freq{int(fr)}" for o, fr in
             zip(np.arange(num_classes) % n_orient, freq)]
    data = from_arrays("synthetic", xtr, ytr, xte, yte, names)
    return data


class Batches:
    """Seeded batches from uint8 images held once on `device`: normalised, optionally augmented."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, mean=(0.0, 0.0, 0.0),
                 std=(1.0, 1.0, 1.0), normalize: str = "standard", augment: bool = False,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 device: str | torch.device | None = None, channels_last: bool = False):
        if normalize not in ("standard", "unit"):
            raise ValueError(f"normalize must be 'standard' or 'unit', got {normalize!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or "cpu")
        self.x = x.to(self.device, torch.uint8)
        self.y = y.to(self.device, torch.int64)
        self.batch_size, self.augment, self.shuffle, self.drop_last = batch_size, augment, shuffle, drop_last
        self.channels_last = channels_last
        # x_norm = x_uint8 * scale + shift: "unit" maps to [0, 1], "standard" to (x - mean) / std.
        m = torch.tensor(mean if normalize == "standard" else (0.0,) * 3, dtype=torch.float32)
        s = torch.tensor(std if normalize == "standard" else (1.0,) * 3, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * s)).view(1, 3, 1, 1).to(self.device)
        self.shift = (-m / s).view(1, 3, 1, 1).to(self.device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:  # drawn on the CPU generator so every device sees the same batches
            shifts = torch.randint(0, 9, (n, 2), generator=self.generator).to(self.device)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device)
        order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.x[idx]
            if self.augment:
                sl = slice(start, start + len(idx))
                x = crop_flip(x, shifts[sl], flips[sl])
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            x = (x.float() * self.scale + self.shift).contiguous(memory_format=fmt)
            yield x, self.y[idx]


def crop_flip(x: Tensor, shifts: Tensor, flips: Tensor, pad: int = 4) -> Tensor:
    """Random crop after zero padding by `pad` (offsets `shifts` in [0, 2*pad]) and flip, batched."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Two gathers (rows, then mirrored or plain columns) cost less than one 4-d advanced index.
    rows = shifts[:, 0, None] + torch.arange(h, device=x.device)
    padded = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    cols = shifts[:, 1, None] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
