"""Stage 3 of a substitution study: the cheap features of every (position, op) pair, computed once.

After the LANA weight bank (Molchanov et al., ECCV 2022), and before any fine-tuning, each pair
gets the features a predictor of its Δ may use (DESIGN.md, "Prediction"): the bank's replace-1
accuracy and distillation loss, the held-out distillation loss (`opswap.distill.heldout`),
zero-cost proxies of the substituted network with the bank's weights and with a fresh op
(`opswap.analysis.proxies`), and its params and MACs (whole network and the op). They are
written once to `results/<study>/bank.features.parquet` beside the bank, keyed by the teacher, the
bank, the pairs and the `[predict]` settings, and reused while those stay the same; the seconds
each part took per pair are stored with them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from opswap.analysis.cells import FEATURES_FILE, read_features, write_features
from opswap.study.claims import build_once
from opswap.study.expand import Expansion
from opswap.study.schema import Study

__all__ = ["feature_pairs", "features_key", "features_current", "prepare_features"]

log = logging.getLogger("opswap")


def feature_pairs(expansion: Expansion) -> list[tuple[int, str]]:
    """The (position, op) pairs of the study's trials that start from the teacher, sorted."""
    return sorted({(t.settings["position"], t.settings["op"]) for t in expansion.trials
                   if t.settings.get("position") is not None and t.settings.get("init") in ("lana", "random")})


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def features_key(study: Study, pairs: list[tuple[int, str]], teacher: str, bank: str | None) -> str:
    """What the features depend on: the teacher, the bank, the pairs, the data and [predict]."""
    settings = study.predict.model_dump(exclude={"correction"})
    bank_key = None
    if bank is not None:
        key_file = Path(bank).with_name("bank.key")
        bank_key = key_file.read_text().strip() if key_file.is_file() else _digest(Path(bank))
    payload = {"teacher": _digest(Path(teacher)), "bank": bank_key, "pairs": pairs, "predict": settings,
               "dataset": study.dataset, "data": study.data, "distill": study.distill}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_features(study: Study, expansion: Expansion, teacher: str | None, bank: str | None,
                     results_dir: Path, *, device: str | None = None) -> str | None:
    """The features file of the study's pairs (computed now, or the one already there); None if none apply."""
    pairs = feature_pairs(expansion)
    if teacher is None or not pairs or not study.predict.features:
        return None
    path = Path(results_dir) / FEATURES_FILE
    key = features_key(study, pairs, teacher, bank)

    def current() -> bool:
        return _current(path, key)

    if current():
        log.info(f"features: {len(pairs)} pairs, unchanged inputs → {path}")
    build_once(Path(results_dir) / "claims", "features", current,  # one runner computes them, others wait
               lambda: _compute(study, pairs, teacher, bank, path, key, device),
               stale_after=study.run.stale_after, doing="computes the features")
    return str(path)


def _current(path: Path, key: str) -> bool:
    try:
        existing = read_features(path)
    except ValueError:
        return False
    return existing is not None and existing.attrs["meta"].get("key") == key


def features_current(study: Study, expansion: Expansion, teacher: str, bank: str | None, results_dir: Path) -> bool:
    """Whether the features file in results_dir was computed from these inputs."""
    pairs = feature_pairs(expansion)
    return _current(Path(results_dir) / FEATURES_FILE, features_key(study, pairs, teacher, bank))


def _compute(study: Study, pairs: list[tuple[int, str]], teacher: str, bank_path: str | None, path: Path,
             key: str, device: str | None) -> None:
    import pandas as pd
    import torch

    from opswap.analysis.proxies import pair_proxies
    from opswap.data import Batches, load_dataset
    from opswap.distill.apply import load_teacher
    from opswap.distill.bank import WeightBank
    from opswap.distill.engine import DistillConfig
    from opswap.distill.heldout import heldout_distill_loss

    settings = study.predict
    torch.set_num_threads(os.cpu_count() or 1)
    device = device or "cpu"  # a handful of batches: not worth a GPU hand-off
    log.info(f"features: {len(pairs)} (position, op) pairs — proxies {', '.join(settings.proxies)} "
             f"({' and '.join(settings.init)} init), held-out distillation loss, params, MACs")
    t0 = time.perf_counter()
    model = load_teacher(teacher, study.model, study.num_classes)
    data = load_dataset(study.dataset, study.data)
    bank = WeightBank.load(bank_path) if bank_path is not None else None
    in_bank = [p for p in pairs if bank is not None and p in bank]
    normalize = DistillConfig(**study.distill).normalize
    x, y = data.split("train")
    source = Batches(x, y, settings.batch_size, mean=data.mean, std=data.std, normalize=normalize, shuffle=True,
                     seed=settings.seed)
    batches = [b for _, b in zip(range(settings.batches), source)]
    seconds = {}

    frame = pd.DataFrame({"position": [p for p, _ in pairs], "op": [o for _, o in pairs]})
    start = time.perf_counter()
    frame = frame.merge(_complexity(model, pairs, tuple(x.shape[1:])), on=["position", "op"], how="left")
    seconds["complexity"] = (time.perf_counter() - start) / len(pairs)

    if bank is not None:
        scores = bank.to_frame()[["position", "op", "family", "replace1_acc", "distill_loss"]]
        frame = frame.merge(scores.rename(columns={"family": "op_family"}), on=["position", "op"], how="left")
        if settings.heldout_batches > 0 and in_bank:
            start = time.perf_counter()
            held = heldout_distill_loss(model, bank, data, batches=settings.heldout_batches,
                                        batch_size=settings.batch_size, device=device)
            seconds["heldout"] = (time.perf_counter() - start) / len(held)
            frame["heldout_loss"] = [held.get((p, o)) for p, o in zip(frame["position"], frame["op"])]

    inits = [i for i in settings.init if i == "random" or in_bank]
    teacher_values = {}
    if inits and settings.proxies:
        start = time.perf_counter()
        rows = []
        for how in inits:  # lana only where the bank has the pair
            chosen = in_bank if how == "lana" else pairs
            rows.append(pair_proxies(model.to(device), bank, chosen, batches, init=(how,), seed=settings.seed,
                                     names=settings.proxies))
        proxies = pd.concat(rows, ignore_index=True)
        seconds["proxies"] = (time.perf_counter() - start) / len(pairs)
        seconds.update({f"proxy_{n}": float(proxies[f"seconds_{n}"].sum()) / len(pairs) for n in settings.proxies})
        own = proxies[proxies["init"] != "teacher"]
        teacher_values = proxies[proxies["init"] == "teacher"].drop_duplicates("position").set_index("position")
        teacher_values = {int(p): {n: _num(r[n]) for n in settings.proxies} for p, r in teacher_values.iterrows()}
        columns = [c for n in settings.proxies for c in (n, f"{n}_block")]
        wide = own.pivot(index=["position", "op"], columns="init", values=columns)
        wide.columns = [f"{how}_{name}" for name, how in wide.columns]
        order = [f"{how}_{c}" for how in inits for c in columns if f"{how}_{c}" in wide.columns]
        frame = frame.merge(wide[order].reset_index(), on=["position", "op"], how="left")
    if "op_family" not in frame:
        from opswap.ops import parse_op

        frame["op_family"] = [parse_op(o).family for o in frame["op"]]
    front = ["position", "op", "op_family"]
    frame = frame[front + [c for c in frame.columns if c not in front]]
    total = time.perf_counter() - t0
    seconds["total"] = total / len(pairs)
    meta = {"key": key, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.model_dump(exclude={"correction"}), "pairs": len(pairs), "device": str(device),
            "threads": torch.get_num_threads(), "heldout_split": "val" if data.x_val is not None else "test",
            "images": {"proxies": sum(len(b[0]) for b in batches)},
            "seconds_per_pair": {k: round(v, 4) for k, v in seconds.items()}, "teacher_proxies": teacher_values}
    write_features(path, frame, meta)
    log.info(f"features: {len(pairs)} pairs in {total:.0f} s ({total / len(pairs):.2f} s per pair) → {path}")


def _num(value) -> float | None:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _complexity(teacher, pairs: list[tuple[int, str]], image: tuple[int, ...]):
    """Params and MACs of each substituted network and of its op (fresh weights: counts only)."""
    import pandas as pd

    from opswap.substitution import complexity, op_at, positions, swap

    spots = {p.index: p for p in positions(teacher)}
    rows = []
    for position, op in pairs:
        net = swap(teacher, {position: op})
        params, macs = complexity(net, (1, *image))
        spot = spots[position]
        op_params, op_macs = complexity(op_at(net, position), (1, spot.c_in, spot.resolution, spot.resolution))
        rows.append({"position": position, "op": op, "params": params, "macs": macs,
                     "op_params_count": op_params, "op_macs": op_macs})
    return pd.DataFrame(rows)
