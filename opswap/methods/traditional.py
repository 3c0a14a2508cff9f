"""The "traditional" method of the dynamic-pruning paper's comparison (seeds/dynamic-pruning-cnn §4).

Hand-crafted features — a histogram of oriented gradients (Dalal & Triggs, CVPR 2005;
`skimage.feature.hog`) of the grey image plus per-channel colour histograms — standardised and
fed to a multinomial logistic regression (scikit-learn). It yields the same metric keys as a
trained network's record where they apply, so the method comparison measures both alike.
Feature extraction is a Python loop over images (≈0.3 ms each on one CPU core); `max_train`
subsamples the training set (stratified by a fixed seed) to keep it fast on large datasets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class TraditionalConfig:
    """Feature and classifier settings (defaults suit 32×32 images)."""

    orientations: int = 9
    pixels_per_cell: int = 8
    cells_per_block: int = 2
    colour_bins: int = 16
    c: float = 0.05           # inverse L2 strength of the logistic regression
    max_iter: int = 300
    max_train: int | None = 20_000
    latency_repeats: int = 20
    latency_batch_size: int = 256

    def __post_init__(self):
        if self.colour_bins < 1 or 256 % self.colour_bins:
            raise ValueError(f"colour_bins must divide 256 (e.g. 8, 16, 32), not {self.colour_bins}")
        if self.max_train is not None and self.max_train < 1:
            raise ValueError(f"max_train must be a positive number of images or None, not {self.max_train}")


def _numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def features(images: np.ndarray, config: TraditionalConfig = TraditionalConfig()) -> np.ndarray:
    """HOG of the grey image and per-channel colour histograms for uint8 NCHW images."""
    images = _numpy(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 NCHW, got {images.dtype} with shape {images.shape}")
    channels = images.shape[1]
    grey = images.astype(np.float32).mean(axis=1) / 255.0 if channels > 1 else images[:, 0] / 255.0
    cell, block = (config.pixels_per_cell,) * 2, (config.cells_per_block,) * 2
    gradients = np.stack([hog(g, orientations=config.orientations, pixels_per_cell=cell,
                              cells_per_block=block, feature_vector=True) for g in grey])
    bins = images // (256 // config.colour_bins)
    pixels = images.shape[2] * images.shape[3]
    colour = np.stack([(bins[:, c] == b).reshape(len(images), -1).sum(1) / pixels
                       for c in range(channels) for b in range(config.colour_bins)], axis=1)
    return np.concatenate([gradients, colour], axis=1).astype(np.float32)


def _subsample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified subsample of `size` labels."""
    if size >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[: max(1, round(size * np.mean(y == c)))]
              for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def _latency_ms(model, images: np.ndarray, config: TraditionalConfig) -> float:
    """Median milliseconds for features + prediction of `images`."""
    times = []
    for _ in range(config.latency_repeats):
        start = time.perf_counter()
        model.predict(features(images, config))
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def fit_evaluate(data, *, seed: int = 0, config: TraditionalConfig = TraditionalConfig()) -> dict:
    """Fit HOG + colour features → logistic regression on `data` (ImageData); metrics dict."""
    # One BLAS thread: the matrices are small, and extra threads only contend (≈40× slower
    # on a busy 2-core machine).
    with threadpool_limits(limits=1):
        return _fit_evaluate(data, seed, config)


def _fit_evaluate(data, seed: int, config: TraditionalConfig) -> dict:
    x_train, y_train = _numpy(data.x_train), _numpy(data.y_train).astype(int)
    x_test, y_test = _numpy(data.x_test), _numpy(data.y_test).astype(int)
    if config.max_train is not None:
        keep = _subsample(y_train, config.max_train, seed)
        x_train, y_train = x_train[keep], y_train[keep]
    start = time.perf_counter()
    f_train = features(x_train, config)
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=config.c, max_iter=config.max_iter, random_state=seed))
    model.fit(f_train, y_train)
    fit_seconds = time.perf_counter() - start
    f_test = features(x_test, config)
    classes = np.arange(data.num_classes)
    proba_test, proba_train = model.predict_proba(f_test), model.predict_proba(f_train)
    labels = model.classes_
    pred_test, pred_train = labels[proba_test.argmax(1)], labels[proba_train.argmax(1)]
    full = lambda p: _full_proba(p, labels, classes)  # noqa: E731
    per_class = [float(100 * np.mean(pred_test[y_test == c] == c)) if np.any(y_test == c) else None
                 for c in classes]
    linear = model[-1]
    scaler = model[0]
    stored = linear.coef_.size + linear.intercept_.size + scaler.mean_.size + scaler.scale_.size
    batch = x_test[: config.latency_batch_size]
    return {
        "test_acc": float(100 * np.mean(pred_test == y_test)),
        "test_loss": float(log_loss(y_test, full(proba_test), labels=classes)),
        "best_test_acc": None,
        "train_acc": float(100 * np.mean(pred_train == y_train)),
        "train_loss": float(log_loss(y_train, full(proba_train), labels=classes)),
        "val_acc": None,
        "per_class_acc": per_class,
        "params": int(linear.coef_.size + linear.intercept_.size),
        "macs": None,  # the feature extractor's cost is not counted in multiply-adds
        "classifier_macs": int(linear.coef_.size),
        "op_params_count": None, "op_macs": None,
        "latency_ms_b1": _latency_ms(model, x_test[:1], config),
        "latency_ms_batch": _latency_ms(model, batch, config),
        "latency_batch_size": int(len(batch)),
        "sparsity": None, "layer_sparsity": None,
        "dense_bytes": int(stored * linear.coef_.itemsize), "csr_bytes": None,
        "distill_loss": None, "replace1_acc": None,
        "fit_seconds": fit_seconds, "n_train": int(len(y_train)),
        "feature_dim": int(f_train.shape[1]),
    }


def _full_proba(proba: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities over all classes, zero for classes absent from the training sample."""
    full = np.full((len(proba), len(classes)), 1e-12)
    full[:, labels] = proba
    return full / full.sum(1, keepdims=True)
