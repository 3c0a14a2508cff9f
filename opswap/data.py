"""Datasets as uint8 tensors and a batched, on-device input pipeline.

The approach follows cifar10-airbench (Keller Jordan, 2024): the whole dataset is held once as a
uint8 tensor on the training device and augmented with batched tensor ops (random crop with
4-pixel padding, horizontal flip), so no DataLoader workers sit on the hot path.
Datasets: CIFAR-10/100 (Krizhevsky, 2009) through torchvision, a built-in synthetic set of
oriented gratings, npz arrays and image folders. CIFAR's pickled batches go through a restricted
unpickler that builds only arrays, lists and strings, so a dataset folder can never run code.
"""
from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

try:  # what numpy's array pickles refer to: numpy._core since numpy 2, numpy.core before
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray, numeric as _numeric

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
                 train_fraction: float = 1.0, seed: int = 0, download: bool = True, **options) -> ImageData:
    """Load dataset `name`, optionally hold out a validation split and subsample training.

    A bad dataset raises ValueError or FileNotFoundError naming the file and what is allowed;
    labels follow `from_arrays` (whole-number floats are cast, no other label is altered).
    CIFAR is downloaded into `root` when its batches are missing, unless `download` is False.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    path = _dataset_path(name, root)
    if name in ("cifar10", "cifar100"):
        data = _cifar(name, path, download)
    elif name == "synthetic":
        data = synthetic(**options)
    elif name == "npz":
        data = _npz(path)
    else:
        data = _folder(path)
    if val_fraction > 0:
        keep, held = _stratified(data.y_train, val_fraction, seed, keep_one=True)
        if not len(held):
            raise ValueError(f"val_fraction {val_fraction} holds out no image: every class of {name!r} has a "
                             "single training image, which stays in training (use val_fraction 0)")
        data = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                       x_val=data.x_train[held], y_val=data.y_train[held])
    if train_fraction < 1.0:
        _, keep = _stratified(data.y_train, train_fraction, seed + 1)
        data = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    return data


class DatasetInfo(NamedTuple):
    """What `check_dataset` learns without reading images: the class count and the image size."""

    num_classes: int
    image_size: tuple[int, int]  # (height, width) of the images a model is given
    largest_class: int | None = None  # training images of the largest class (None: not known cheaply)


def check_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = True) -> DatasetInfo:
    """Refuse a dataset `load_dataset` would refuse, cheaply: without reading the images.

    npz: opens the archive, reads the image arrays' headers and checks labels and classes in full.
    folder: lists train/ and test/. CIFAR: checks that the batch files are present, or that they
    may be downloaded; their contents are checked (restricted unpickler) by `load_dataset`.
    Raises ValueError or FileNotFoundError with a message for people; returns the class count and
    image size `load_dataset` will give (synthetic: those of its defaults) and, for npz and folder,
    the size of the largest training class.
    """
    path = _dataset_path(name, root)
    if name in ("cifar10", "cifar100"):
        _cifar_missing(name, path, download)
        return DatasetInfo(10 if name == "cifar10" else 100, (32, 32))
    if name == "npz":
        arrays = _npz_checked(path, images=False)
        (y_train, _), classes = _checked(str(path), *(arrays[k] for k in _NPZ_KEYS), arrays.get("classes"))
        return DatasetInfo(len(classes), tuple(int(d) for d in arrays["x_train"].shape[1:3]),
                           int(np.bincount(y_train).max()))
    if name == "folder":
        train = _image_folders(path)[0]
        return DatasetInfo(len(train.classes), (32, 32), int(np.bincount(train.targets).max()))  # resized on load
    return DatasetInfo(10, (32, 32))  # synthetic


def fetch_dataset(name: str, root: str | os.PathLike | None = None) -> None:
    """Download a CIFAR dataset whose files are missing under `root` (nothing for other datasets,
    or when they are there), so a command can refuse an unreachable download before it writes
    anything. Raises FileNotFoundError saying what is missing and why the download failed."""
    if name in ("cifar10", "cifar100"):
        path = _dataset_path(name, root)
        if _cifar_missing(name, path, True):
            _cifar_download(name, path)


def _dataset_path(name: str, root: str | os.PathLike | None) -> Path | None:
    """The path `name` is read from; refuses an unknown name and npz/folder without a path."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name in ("cifar10", "cifar100"):
        return Path(root) if root else DEFAULT_ROOT / name
    if name in ("npz", "folder") and root is None:
        raise ValueError(f"dataset {name!r} needs a path (--data): "
                         + ("an .npz file" if name == "npz" else "a folder with train/ and test/"))
    return None if root is None else Path(root)


def _stratified(y: Tensor, fraction: float, seed: int, *, keep_one: bool = False) -> tuple[Tensor, Tensor]:
    """Split indices of `y` in two, `fraction` of every class (at least one) in the second.

    With `keep_one`, every class also keeps at least one index in the first part (a class of one
    stays there): a held-out split never takes a class away from training.
    """
    gen = torch.Generator().manual_seed(seed)
    rest, part = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(len(idx) - keep_one, max(1, round(fraction * len(idx))))
        part.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(part).sort().values


def _stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, in [0, 1] units."""
    xf = x.double().div_(255)
    return tuple(xf.mean((0, 2, 3)).tolist()), tuple(xf.std((0, 2, 3)).tolist())


_MAX_CLASSES = 100_000  # without a `classes` array the largest label sets the class count


class _Header(NamedTuple):
    """What an image check needs of an array: read from an .npy header, or the array itself."""

    shape: tuple[int, ...]
    dtype: np.dtype


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, classes=None, *, mean=None, std=None) -> ImageData:
    """Build `ImageData` from uint8 NHWC arrays and labels of shape (N,) or (N, 1).

    Labels must be integers >= 0 (below len(classes) when given); float labels are accepted only
    when every value is a whole number, and are then cast. Anything else raises ValueError.
    """
    return _image_data(name, name, x_train, y_train, x_test, y_test, classes, mean=mean, std=std)


def _image_data(name: str, where: str, x_train, y_train, x_test, y_test, classes=None, *, mean=None,
                std=None) -> ImageData:
    ys, classes = _checked(where, x_train, y_train, x_test, y_test, classes)
    xs = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in (x_train, x_test)]
    ys = [torch.from_numpy(y) for y in ys]
    if mean is None:
        mean, std = _stats(xs[0])
    return ImageData(name, xs[0], ys[0], xs[1], ys[1], len(classes), classes, tuple(mean), tuple(std))


def _checked(where: str, x_train, y_train, x_test, y_test, classes) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Refuse images or labels outside the contract, naming `where` and the array; labels as int64."""
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if x.dtype != np.uint8 or len(x.shape) != 4 or x.shape[-1] != 3 or 0 in x.shape:
            raise ValueError(f"{where}: {key} must be uint8 images of shape (N, H, W, 3) with N, H, W >= 1, "
                             f"got {x.dtype} {tuple(x.shape)}")
    if x_test.shape[1:3] != x_train.shape[1:3]:
        raise ValueError(f"{where}: x_test images are {x_test.shape[1]}x{x_test.shape[2]} but x_train images "
                         f"are {x_train.shape[1]}x{x_train.shape[2]}; both splits need the same size")
    if classes is not None:
        classes = np.asarray(classes)
        if classes.ndim != 1 or len(classes) == 0:
            raise ValueError(f"{where}: classes must be a 1-d array of class names, got shape {classes.shape}")
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist())
    limit, what = ((len(classes), f"classes names {len(classes)}") if classes is not None
                   else (_MAX_CLASSES, f"without a 'classes' array at most {_MAX_CLASSES} are allowed"))
    ys = [_checked_labels(where, key, y, x.shape[0], limit, what)
          for key, x, y in (("y_train", x_train, y_train), ("y_test", x_test, y_test))]
    if classes is None:
        classes = tuple(map(str, range(int(max(y.max() for y in ys)) + 1)))
    return ys, classes


def _checked_labels(where: str, key: str, y, n: int, limit: int, what: str) -> np.ndarray:
    """Labels `y` as int64 of shape (n,): integers, or floats that are all whole numbers, in [0, limit).

    Shape (n, 1) is accepted too. Anything else is refused, never rounded or truncated.
    """
    try:
        y = np.asarray(y)
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"{where}: {key} is not an array of labels ({err})") from err
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{where}: {key} must hold integer class labels, got dtype {y.dtype}")
    if y.shape not in ((n,), (n, 1)):
        raise ValueError(f"{where}: {key} must have shape ({n},) or ({n}, 1), one label per image, "
                         f"got {y.shape}")
    y = y.reshape(n)
    if n == 0:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = y[~np.isfinite(y) | (y != np.floor(y))]
        if len(bad):
            raise ValueError(f"{where}: {key} holds non-integer labels such as {bad[0]}; labels must be "
                             "whole numbers 0, 1, 2, ... (float arrays are accepted only when all are whole)")
    low, high = y.min().item(), y.max().item()  # Python numbers compare exactly with `limit`
    if low < 0:
        raise ValueError(f"{where}: {key} holds negative labels (min {low}); labels must be >= 0")
    if high >= limit:
        raise ValueError(f"{where}: {key} holds label {high}, but labels must be < {limit}: {what}")
    return y.astype(np.int64)


# What a damaged, encrypted or oddly compressed zip member raises while it is read.
_READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_CONTRACT = ("an .npz (np.savez) with x_train, x_test: uint8 images (N, H, W, 3); y_train, y_test: "
                 "integer labels >= 0, one per image; optional classes: one name per class")


def _npz(path: Path) -> ImageData:
    arrays = _npz_checked(path, images=True)
    return _image_data("npz", str(path), *(arrays[k] for k in _NPZ_KEYS), arrays.get("classes"))


def _npz_checked(path: Path, *, images: bool) -> dict[str, np.ndarray | _Header]:
    """The checked arrays of npz dataset `path`; with images=False x_train/x_test are headers only."""
    if path.is_dir():
        raise ValueError(f"npz dataset {path} is a directory; an .npz file is expected ({_NPZ_CONTRACT}). "
                         "For a folder of images use dataset 'folder'")
    if not path.exists():
        raise FileNotFoundError(f"npz dataset {path} does not exist")
    with open(path, "rb") as fp:
        magic = fp.read(6)
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load takes for an .npz
        what = " (it is a single .npy array)" if magic == b"\x93NUMPY" else ""
        raise ValueError(f"{path} is not an .npz archive{what}; expected {_NPZ_CONTRACT}")
    try:
        f = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(f"{path} is not a readable .npz archive ({err}); expected {_NPZ_CONTRACT}") from err
    with f:
        missing = [k for k in _NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks arrays {', '.join(missing)} (found: {', '.join(f.files) or 'none'}); "
                             f"expected {_NPZ_CONTRACT}")
        keys = _NPZ_KEYS + (("classes",) if "classes" in f.files else ())
        arrays = {k: _npz_array(path, f, k, header=not images and k.startswith("x_")) for k in keys}
    return arrays  # checked by the caller: _image_data or check_dataset


def _npz_array(path: Path, f, key: str, *, header: bool) -> np.ndarray | _Header:
    """Array `key` of the open npz `f` (never unpickled), or only its shape and dtype."""
    try:
        member = f"{key}.npy" if f"{key}.npy" in f.zip.namelist() else key
        if header:
            with f.zip.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                if version in ((1, 0), (2, 0)):
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fp)
                    return _Header(shape, dtype)
        array = f[key]
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: array {key!r} cannot be read ({err}); expected {_NPZ_CONTRACT}") from err
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: {key!r} is not a .npy array; expected {_NPZ_CONTRACT}")
    return array


def _cifar_base(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _cifar_files(name: str) -> tuple[list[str], list[str], str]:
    """The train batch files, test batch files and meta file of CIFAR `name`, from torchvision."""
    base = _cifar_base(name)
    return [f for f, _ in base.train_list], [f for f, _ in base.test_list], base.meta["filename"]


def _cifar_missing(name: str, root: Path, download: bool) -> list[str]:
    """The CIFAR files absent under `root`; refuses when some are and downloading is off, and a
    root that is a file (nothing can be read or downloaded there)."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{name}: {root} is a file; --data for {name} is the folder that holds (or will "
                                 f"hold) {_cifar_base(name).base_folder}/")
    base = _cifar_base(name)
    folder = root / base.base_folder
    train, test, meta = _cifar_files(name)
    missing = [f for f in train + test + [meta] if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"{name}: {_cifar_expected(name, root, missing)}; downloading is off, so put "
                                f"the extracted {base.filename} there")
    return missing


def _cifar_expected(name: str, root: Path, missing: list[str]) -> str:
    """What is missing under `root` and what was expected there, for an error message."""
    folder = root / _cifar_base(name).base_folder
    train, test, meta = _cifar_files(name)
    said = f"no {folder.name}/ under {root}" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
    if (root / missing[0]).is_file():
        said += f" ({root} looks like the batch folder itself: pass the folder above it)"
    return f"{said}; expected {folder}/ holding {', '.join(train + test + [meta])} (CIFAR's python version)"


def _cifar_download(name: str, root: Path) -> None:
    """Fetch and extract the official archive into `root`; torchvision checks its md5."""
    from torchvision.datasets import utils

    base = _cifar_base(name)
    missing = _cifar_missing(name, root, download=True)
    if not missing:
        return
    try:
        utils.download_and_extract_archive(base.url, str(root), filename=base.filename, md5=base.tgz_md5)
    except Exception as err:  # URLError, OSError, RuntimeError (md5), tarfile errors
        raise FileNotFoundError(f"{name}: {_cifar_expected(name, root, missing)}; downloading {base.url} "
                                f"failed ({err}); pass --data with a root that holds it") from err


def read_cifar(name: str, root: str | os.PathLike, train: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Uint8 NHWC images, int64 labels and class names of a CIFAR split from its python batches.

    Batches are read with a restricted unpickler that builds only numpy arrays, lists, dicts and
    strings (never runs code), so no md5 pass is needed; a file that is not a CIFAR batch is refused.
    """
    base = _cifar_base(name)
    folder = Path(root) / base.base_folder
    train_files, test_files, meta_file = _cifar_files(name)
    _cifar_missing(name, Path(root), download=False)
    meta = _read_batch(folder / meta_file, (base.meta["key"],))
    classes = meta[base.meta["key"]]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{folder / meta_file} is not a CIFAR meta file: {base.meta['key']!r} must be a "
                         "list of class names")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    xs, ys = [], []
    for fname in train_files if train else test_files:
        path = folder / fname
        entry = _read_batch(path, ("data", label_key))
        x = entry["data"]
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{path} is not a CIFAR batch: 'data' must be uint8 of shape (N, 3072), got {got}")
        if not isinstance(entry[label_key], (list, np.ndarray)):
            raise ValueError(f"{path} is not a CIFAR batch: {label_key!r} must be a list of integers")
        ys.append(_checked_labels(str(path), label_key, entry[label_key], len(x), len(classes),
                                  f"{meta_file} names {len(classes)} classes"))
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(xs), np.concatenate(ys), tuple(classes)


def _read_batch(path: Path, keys: tuple[str, ...]) -> dict:
    """The dict pickled in CIFAR file `path`, read with `_BatchUnpickler`; it must hold `keys`."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as err:  # whatever the bytes make the allowed constructors or the parser raise
        raise ValueError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err}); refusing to "
                         "read it. Remove it (or the folder) to download the official files again") from err
    if not isinstance(entry, dict) or any(k not in entry for k in keys):
        found = (", ".join(sorted(map(str, entry))) or "none") if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path} is not a CIFAR python batch: needs keys {', '.join(keys)}, found {found}")
    return entry


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, and only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


# The globals a CIFAR batch refers to: numpy's array (and scalar) reconstructors, written by
# numpy 1 (numpy.core) or 2 (numpy._core), and bytes from protocol-2 pickles. Nothing else.
_BATCH_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                  ("_codecs", "encode"): _latin1_encode}
for _core in ("numpy.core", "numpy._core"):
    _BATCH_GLOBALS.update({(f"{_core}.multiarray", "_reconstruct"): _multiarray._reconstruct,
                           (f"{_core}.multiarray", "scalar"): _multiarray.scalar,
                           (f"{_core}.numeric", "_frombuffer"): _numeric._frombuffer})


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR batches hold; any other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _BATCH_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a CIFAR batch") from None


def cifar_reader(name: str):
    """A torchvision CIFAR dataset class (transforms, indexing) that reads through `read_cifar`."""
    from torchvision.datasets import VisionDataset

    class Reader(_cifar_base(name)):
        def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                     download: bool = False):  # torchvision's __init__ would unpickle unchecked
            VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
            self.train = train
            if download:
                self.download()
            x, y, classes = read_cifar(name, self.root, train)
            self.data, self.targets, self.classes = x, y.tolist(), list(classes)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        def download(self) -> None:
            _cifar_download(name, Path(self.root))

    Reader.__name__ = Reader.__qualname__ = f"{Reader.__base__.__name__}Reader"
    return Reader


def _cifar(name: str, root: Path, download: bool) -> ImageData:
    if _cifar_missing(name, root, download):
        _cifar_download(name, root)
    train_x, train_y, classes = read_cifar(name, root, train=True)
    test_x, test_y, _ = read_cifar(name, root, train=False)
    mean, std = _CIFAR_STATS[name]
    return _image_data(name, str(root / _cifar_base(name).base_folder), train_x, train_y, test_x, test_y,
                       classes, mean=mean, std=std)


def write_cifar_root(root: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray,
                     x_test: np.ndarray, y_test: np.ndarray, classes, *, cifar100: bool = False) -> Path:
    """Write uint8 NHWC arrays in the original CIFAR python layout under `root`."""
    name = "cifar100" if cifar100 else "cifar10"
    base = _cifar_base(name)
    train_files, test_files, meta_file = _cifar_files(name)
    folder = Path(root) / base.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if cifar100 else "labels"
    chunks = np.array_split(np.arange(len(x_train)), len(train_files))
    for fname, idx in zip(train_files, chunks):
        _pickle(folder / fname, {"data": x_train[idx].transpose(0, 3, 1, 2).reshape(len(idx), 3072),
                                 label_key: [int(v) for v in y_train[idx]]})
    _pickle(folder / test_files[0], {"data": x_test.transpose(0, 3, 1, 2).reshape(len(x_test), 3072),
                                     label_key: [int(v) for v in y_test]})
    _pickle(folder / meta_file, {base.meta["key"]: [str(c) for c in classes]})
    return Path(root)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _folder(root: Path) -> ImageData:
    from torchvision import transforms

    train, test = _image_folders(root)
    resize = transforms.Compose([transforms.Resize((32, 32)), transforms.PILToTensor()])

    def stack(ds) -> tuple[np.ndarray, np.ndarray]:
        images = []
        for path, _ in ds.samples:
            try:
                images.append(resize(ds.loader(path)))
            except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
                raise ValueError(f"{path} is not a readable image ({err})") from err
        return torch.stack(images).permute(0, 2, 3, 1).numpy(), np.array(ds.targets)

    (xtr, ytr), (xte, yte) = stack(train), stack(test)
    return _image_data("folder", str(root), xtr, ytr, xte, yte, train.classes)


def _image_folders(root: Path):
    """torchvision ImageFolders of `root`/train and `root`/test (files listed, not read), checked."""
    from torchvision.datasets import ImageFolder

    needs = "needs train/ and test/ subfolders, one folder of images per class in each"
    if root.is_file():
        raise ValueError(f"image folder dataset {root} is a file; dataset 'folder' {needs} "
                         "(for an .npz file use dataset 'npz')")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder dataset {root} does not exist; it {needs}")
    absent = [s for s in ("train", "test") if not (root / s).is_dir()]
    if absent:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise FileNotFoundError(f"image folder dataset {root} has no {' or '.join(s + '/' for s in absent)} "
                                f"(found: {', '.join(found) or 'nothing'}); it {needs}")
    folders = []
    for split in ("train", "test"):
        try:
            folders.append(ImageFolder(str(root / split)))
        except FileNotFoundError as err:  # no class folders, or a class without images
            raise FileNotFoundError(f"{root / split}: {err}") from err
    if folders[0].classes != folders[1].classes:
        raise ValueError(f"{root}: train classes {folders[0].classes} differ from test classes "
                         f"{folders[1].classes}")
    return folders


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
        return self.iterate()

    def iterate(self, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch's batches, drawing the epoch's order and augmentation as `iter` does, and
        leaving out the first `skip` batches (a run resumed inside an epoch)."""
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:  # drawn on the CPU generator so every device sees the same batches
            shifts = torch.randint(0, 9, (n, 2), generator=self.generator).to(self.device)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device)
        order = order.to(self.device)
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
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
