"""CIFAR python batches are pickles: a dataset folder must never run code, and bad batches are named."""
import os
import pathlib
import pickle
import re
import struct

import numpy as np
import pytest

import opswap.data
from opswap.data import cifar_reader, load_dataset, read_cifar, write_cifar_root

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture
def root(tmp_path):
    """A CIFAR-10 root in the original layout: 6 train images (5 batches), 2 test images."""
    rng = np.random.default_rng(0)
    x = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    write_cifar_root(tmp_path, x(6), np.arange(6) % 10, x(2), np.array([3, 4]), CLASSES)
    return tmp_path


class Payload:
    """Unpickles as `fn(*args)`: what a booby-trapped dataset file would hold."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: pathlib.Path):
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "exec": Payload(exec, code),
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "Path.touch": Payload(pathlib.Path.touch, marker),
        "inside labels": {"data": np.zeros((1, 3072), np.uint8), "labels": [Payload(exec, code)]},
        "inside data": {"data": Payload(exec, code), "labels": [0]},
    }


@pytest.mark.parametrize("fname", ["data_batch_1", "test_batch", "batches.meta"])
@pytest.mark.parametrize("kind", list(payloads(pathlib.Path("m"))))
def test_a_booby_trapped_batch_is_refused_and_never_runs(root, tmp_path, fname, kind):
    marker = tmp_path / "pwned"
    path = root / "cifar-10-batches-py" / fname
    path.write_bytes(pickle.dumps(payloads(marker)[kind]))
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a CIFAR python batch") as err:
        load_dataset("cifar10", root)
    assert "refusing" in str(err.value) and "download failed" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match=re.escape(str(path))):  # the torchvision-style reader too
        cifar_reader("cifar10")(str(root), train=fname != "test_batch")
    assert not marker.exists()


def test_data_py_uses_no_private_torchvision_method_and_never_unpickles_npz():
    source = pathlib.Path(opswap.data.__file__).read_text()
    for private in ("_check_integrity", "_load_meta", "pickle.load(", "pickle.loads("):
        assert private not in source
    assert not re.search(r"allow_pickle\s*=\s*True", source)


def _py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle wrote the CIFAR batches (protocol 2, str payloads, numpy.core)."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def save(v) -> bytes:
        if isinstance(v, dict):
            return b"}(" + b"".join(save(k) + save(x) for k, x in v.items()) + b"u"
        if isinstance(v, list):
            return b"](" + b"".join(save(x) for x in v) + b"e"
        if isinstance(v, str):
            return s(v.encode("latin1"))
        if isinstance(v, int):
            return b"K" + bytes([v]) if v < 256 else b"J" + struct.pack("<i", v)
        assert v.dtype == np.uint8 and v.ndim == 2
        dtype = (b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
                 b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
                b"(K\x01" + save(v.shape[0]) + save(v.shape[1]) + b"\x86" + dtype + b"\x89"
                + s(v.tobytes()) + b"tb")

    return b"\x80\x02" + save(obj) + b"."


def test_batches_pickled_as_the_official_files_load(tmp_path):
    """The official batches come from Python 2 and numpy 1: numpy.core globals, latin-1 str data."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = {f: rng.integers(0, 256, (3, 3072), dtype=np.uint8) for f in
            ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]}
    for i, (f, x) in enumerate(data.items()):
        (folder / f).write_bytes(_py2_pickle({"batch_label": f"batch {i}", "labels": [i, 9, 0], "data": x,
                                              "filenames": ["a.png", "b.png", "c.png"]}))
    (folder / "batches.meta").write_bytes(_py2_pickle({"num_cases_per_batch": 10000, "num_vis": 3072,
                                                       "label_names": CLASSES}))
    x, y, classes = read_cifar("cifar10", tmp_path, train=True)
    assert classes == tuple(CLASSES) and y.tolist() == [0, 9, 0, 1, 9, 0, 2, 9, 0, 3, 9, 0, 4, 9, 0]
    np.testing.assert_array_equal(x[3], data["data_batch_2"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert load_dataset("cifar10", tmp_path).y_test.tolist() == [5, 9, 0]


def test_batches_pickled_by_numpy_2_at_every_protocol_load(root):
    folder = root / "cifar-10-batches-py"
    x = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (folder / "test_batch").write_bytes(pickle.dumps({"data": x, "labels": [np.int64(1), 2]}, protocol))
        xs, ys, _ = read_cifar("cifar10", root, train=False)
        assert ys.tolist() == [1, 2] and xs[1, 0, 0].tolist() == [x[1, 0], x[1, 1024], x[1, 2048]]


BAD_BATCHES = {
    "not a dict": ([1, 2], "needs keys data, labels, found list"),
    "no labels": ({"data": np.zeros((2, 3072), np.uint8)}, "needs keys data, labels, found"),
    "rows of 3000": ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, r"\(N, 3072\), got uint8 \(2, 3000\)"),
    "float pixels": ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "must be uint8"),
    "labels a string": ({"data": np.zeros((2, 3072), np.uint8), "labels": "01"}, "list of integers"),
    "too few labels": ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one label per image"),
    "label 10 of 10": ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "must be < 10"),
    "negative label": ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, -1]}, "negative"),
    "label 1.5": ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1.5]}, "non-integer"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_a_malformed_batch_is_refused_naming_the_file(root, case):
    obj, message = BAD_BATCHES[case]
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_dataset("cifar10", root)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", pickle.dumps({"data": 1})[:-3]])
def test_garbage_or_truncated_files_are_not_batches(root, content):
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a CIFAR python batch"):
        load_dataset("cifar10", root)


def test_a_meta_file_without_class_names_is_refused(root):
    path = root / "cifar-10-batches-py" / "batches.meta"
    path.write_bytes(pickle.dumps({"label_names": "airplane"}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a CIFAR meta file"):
        load_dataset("cifar10", root)
    path.write_bytes(pickle.dumps({"names": CLASSES}))
    with pytest.raises(ValueError, match="needs keys label_names, found names"):
        load_dataset("cifar10", root)


def test_cifar100_reads_fine_labels_through_the_restricted_reader(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_cifar_root(tmp_path, x, np.array([0, 99, 5, 7]), x[:1], np.array([42]),
                     [f"k{i}" for i in range(100)], cifar100=True)
    data = load_dataset("cifar100", tmp_path)
    assert data.y_train.tolist() == [0, 99, 5, 7] and data.num_classes == 100
    reader = cifar_reader("cifar100")(str(tmp_path), train=False)
    image, label = reader[0]
    assert label == 42 and np.array_equal(np.asarray(image), x[0]) and len(reader) == 1


def test_a_root_with_fewer_train_images_than_batches_round_trips(tmp_path):
    x = np.arange(3 * 32 * 32 * 3).astype(np.uint8).reshape(3, 32, 32, 3)
    write_cifar_root(tmp_path, x, np.array([1, 0, 1]), x[:1], np.array([0]), ["a", "b"])  # two empty batches
    data = load_dataset("cifar10", tmp_path)
    assert data.y_train.tolist() == [1, 0, 1] and data.x_train.shape == (3, 3, 32, 32)
