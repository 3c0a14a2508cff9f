"""Hand-built trial records (docs/records.md, schema 1) with known numbers, for analysis tests."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FAMILIES = {"baseline": "baseline", "identity": "identity", "mbconv_e6_k3": "mbconv",
            "conv_bn_e1": "conv_bn", "conv_bn_e2": "conv_bn", "resnet_e2": "resnet",
            "bottleneck_e2": "bottleneck"}


def make_record(*, test_acc: float | None, op: str = "baseline", position: int | None = None,
                seed: int = 0, epochs: int = 3, study: str = "demo", status: str = "ok",
                kind: str = "train", model: str = "wrn-16-1", init: str | None = None,
                sparsity: float = 0.0, prune: str = "none", data_fraction: float = 1.0,
                train_acc: float | None = None, method: str | None = None, **metrics) -> dict:
    """A schema-1 record; history climbs linearly to the final accuracies."""
    init = init or ("teacher" if op == "baseline" else "lana")
    settings = {
        "kind": kind, "model": model, "dataset": "synthetic", "data": None, "num_classes": 10,
        "data_fraction": data_fraction, "position": position, "op": op,
        "op_family": FAMILIES.get(op, op.split("_")[0]), "op_params": {"e": 2} if "_e2" in op else {},
        "init": init, "seed": seed, "epochs": epochs, "sparsity": sparsity, "prune": prune,
        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 128},
        "distill": {"steps": 10},
    }
    if method is not None:
        settings["method"] = method
    trial_id = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    train_acc = train_acc if train_acc is not None else (None if test_acc is None else test_acc + 5)
    history = []
    if test_acc is not None:
        for epoch in range(1, epochs + 1):
            f = epoch / epochs
            history.append({"epoch": epoch, "train_loss": 2.0 - f, "train_acc": train_acc * f,
                            "test_loss": 2.1 - f, "test_acc": test_acc * f, "val_loss": None,
                            "val_acc": None, "lr": 0.1 * (1 - f), "seconds": 1.0,
                            "images_per_s": 1000.0})
    base = {"test_acc": test_acc, "test_loss": None if test_acc is None else 1.1 - test_acc / 100,
            "best_test_acc": test_acc, "train_acc": train_acc, "train_loss": 0.1,
            "val_acc": None, "per_class_acc": [test_acc] * 10 if test_acc is not None else None,
            "params": 100_000, "macs": 10_000_000, "op_params_count": None, "op_macs": None,
            "latency_ms_b1": 1.0, "latency_ms_batch": 20.0, "latency_batch_size": 256,
            "sparsity": sparsity, "layer_sparsity": {}, "dense_bytes": 400_000,
            "csr_bytes": None, "distill_loss": None, "replace1_acc": None}
    base.update(metrics)
    return {
        "schema": 1, "trial_id": trial_id, "study": study, "status": status,
        "error": None if status == "ok" else "RuntimeError: boom", "attempt": 1,
        "settings": settings, "history": history, "metrics": base,
        "env": {"opswap": "0.1.0", "torch": "2.5.0", "python": "3.11.7", "device": "cpu",
                "device_name": "cpu", "hostname": "test"},
        "timing": {"started": "2026-11-22T13:00:00+00:00",
                   "finished": "2026-11-22T13:01:00+00:00", "seconds": 60.0},
    }


def write_records(directory: Path, records: list[dict]) -> Path:
    """Write records as <trial_id>.json files; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for record in records:
        (directory / f"{record['trial_id']}.json").write_text(json.dumps(record))
    return directory


# A paper-style study with known numbers: baseline, and two candidates at positions 1 and 3.
BASELINE = [96.0, 96.2, 96.4]                       # mean 96.2, std 0.2
CELLS = {
    (1, "mbconv_e6_k3"): [92.0, 93.0, 94.0],        # mean 93.0, std 1.0: significantly worse
    (1, "conv_bn_e2"): [94.5, 95.0, 95.5],          # mean 95.0, std 0.5: best at position 1
    (3, "mbconv_e6_k3"): [96.1, 96.3],              # mean 96.2, std 0.1414: not significant
    (3, "conv_bn_e2"): [96.5],                      # n = 1: not testable
}


def paper_records(epochs: int = 3, study: str = "demo") -> list[dict]:
    """Records of the paper-style study above for one epoch budget."""
    records = [make_record(test_acc=a, seed=s, epochs=epochs, study=study)
               for s, a in enumerate(BASELINE)]
    for (position, op), accs in CELLS.items():
        records += [make_record(test_acc=a, op=op, position=position, seed=s, epochs=epochs,
                                study=study, distill_loss=0.01 * (100 - a),
                                replace1_acc=a - 10, params=100_000 + 1000 * position)
                    for s, a in enumerate(accs)]
    return records
