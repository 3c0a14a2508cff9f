"""The weight bank of LANA-style block distillation (Molchanov et al., ECCV 2022).

One entry per (position, candidate): the distilled candidate's weights, its final normalised
MSE, the loss history and, once measured, its replace-1 accuracy. A bank belongs to one teacher
(identified by the sha256 of its weights) and is stored as one safetensors file: tensors under
`p<position>/<canonical op name>/<parameter>`, everything else as JSON in the file's metadata.
A substituted network is the teacher's weights plus one entry.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["BankEntry", "WeightBank", "teacher_fingerprint"]

_META_KEY = "opswap_bank"
_SCHEMA = 1


def teacher_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state_dict: keys, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class BankEntry:
    """One distilled candidate: where it goes, what it is, its weights and its scores."""

    position: int
    op: str  # canonical name, e.g. "mbconv_e6_k3"
    family: str
    params: dict[str, Any]
    c_in: int
    c_out: int
    stride: int
    state_dict: dict[str, torch.Tensor]
    distill_loss: float
    history: list[float] = field(default_factory=list)
    steps: int = 0
    replace1_acc: float | None = None

    @property
    def key(self) -> tuple[int, str]:
        return self.position, self.op

    @property
    def num_params(self) -> int:
        """Learnable parameter count (BN running statistics excluded)."""
        return sum(v.numel() for k, v in self.state_dict.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))

    def scores(self) -> dict[str, Any]:
        """The entry without its tensors (what the file's metadata holds)."""
        out = asdict(self)
        out.pop("state_dict")
        return out


def _canonical(op: Any) -> str:
    from opswap.ops import parse_op

    return parse_op(op).name


class WeightBank:
    """Distilled candidates of one teacher, keyed by (position, canonical op name)."""

    def __init__(self, entries: list[BankEntry] | None = None, *, teacher_fingerprint: str,
                 settings: dict[str, Any] | None = None, model: str | None = None,
                 dataset: str | None = None):
        self.teacher_fingerprint = teacher_fingerprint
        self.settings = dict(settings or {})
        self.model, self.dataset = model, dataset
        self._entries: dict[tuple[int, str], BankEntry] = {}
        for e in entries or []:
            if e.key in self._entries:
                raise ValueError(f"weight bank: pair (position {e.position}, {e.op!r}) given twice")
            self._entries[e.key] = e

    # -- access -------------------------------------------------------------------------
    def entry(self, position: int, op: Any) -> BankEntry:
        """The entry for `op` (any spelling the registry accepts) at `position`."""
        key = (int(position), _canonical(op))
        if key not in self._entries:
            have = ", ".join(f"{p}:{o}" for p, o in sorted(self._entries)) or "none"
            raise KeyError(f"the weight bank has no entry for position {key[0]}, op {key[1]!r}; "
                           f"it holds (position:op): {have}")
        return self._entries[key]

    def __contains__(self, pair: tuple[int, Any]) -> bool:
        position, op = pair
        return (int(position), _canonical(op)) in self._entries

    def __iter__(self) -> Iterator[BankEntry]:
        return iter(self._entries[k] for k in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[tuple[int, str]]:
        """(position, canonical op) pairs, sorted."""
        return sorted(self._entries)

    def __repr__(self) -> str:
        return (f"WeightBank({len(self)} entries, model={self.model!r}, "
                f"teacher={self.teacher_fingerprint[:12]})")

    # -- combining and checking -----------------------------------------------------------
    def check_teacher(self, teacher: nn.Module) -> None:
        """Raise ValueError unless this bank was distilled from `teacher`'s exact weights."""
        fp = teacher_fingerprint(teacher)
        if fp != self.teacher_fingerprint:
            raise ValueError(
                f"this weight bank was distilled from another teacher (fingerprint "
                f"{self.teacher_fingerprint[:12]}…, model {self.model!r}); the given teacher's "
                f"fingerprint is {fp[:12]}…. Distil a new bank for this teacher, or load the "
                f"teacher checkpoint the bank was made from.")

    def merge(self, other: WeightBank, *, overwrite: bool = False) -> WeightBank:
        """A new bank with the entries of both; a pair in both is an error unless `overwrite`."""
        if other.teacher_fingerprint != self.teacher_fingerprint:
            raise ValueError("cannot merge weight banks of different teachers (fingerprints "
                             f"{self.teacher_fingerprint[:12]}… and {other.teacher_fingerprint[:12]}…)")
        both = sorted(set(self._entries) & set(other._entries))
        if both and not overwrite:
            raise ValueError(f"both weight banks hold position:op {', '.join(f'{p}:{o}' for p, o in both)}; "
                             "pass overwrite=True to keep the second bank's entries")
        entries = {**self._entries, **other._entries}
        settings = self.settings if self.settings == other.settings else {
            "merged": [self.settings, other.settings]}
        return WeightBank(list(entries.values()), teacher_fingerprint=self.teacher_fingerprint,
                          settings=settings, model=self.model or other.model,
                          dataset=self.dataset or other.dataset)

    def to_frame(self):
        """One row per entry: position, op, family, op_params, param_count, scores (a pandas DataFrame)."""
        import pandas as pd

        rows = [{"position": e.position, "op": e.op, "family": e.family,
                 "op_params": json.dumps(e.params, sort_keys=True), "param_count": e.num_params,
                 "distill_loss": e.distill_loss, "replace1_acc": e.replace1_acc, "steps": e.steps}
                for e in self]
        columns = ["position", "op", "family", "op_params", "param_count", "distill_loss", "replace1_acc",
                   "steps"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"replace1_acc": "float64", "distill_loss": "float64"})

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file (weights) with JSON metadata (the rest)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"p{e.position}/{e.op}/{k}": v.detach().cpu().contiguous().clone()
                   for e in self for k, v in e.state_dict.items()}
        meta = {"schema": _SCHEMA, "teacher_fingerprint": self.teacher_fingerprint, "model": self.model,
                "dataset": self.dataset, "settings": self.settings, "entries": [_json_safe(e.scores()) for e in self]}
        from opswap.atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> WeightBank:
        """Read a bank written by `save` (safetensors only; nothing is unpickled)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.is_dir():
            raise ValueError(f"weight bank {str(path)!r} is a directory; expected a .safetensors file")
        if not path.is_file():
            raise FileNotFoundError(f"weight bank {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(_META_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{str(path)!r} is not a safetensors file ({err}); a weight bank is "
                             "written by WeightBank.save or `opswap distill --out`") from None
        if raw is None:
            raise ValueError(f"{str(path)!r} is a safetensors file but not an opswap weight bank "
                             f"(no {_META_KEY!r} metadata); is it a model checkpoint?")
        meta = json.loads(raw)
        if meta.get("schema") != _SCHEMA:
            raise ValueError(f"weight bank {str(path)!r} has schema {meta.get('schema')!r}; "
                             f"this opswap reads schema {_SCHEMA}")
        entries = []
        for s in meta["entries"]:
            prefix = f"p{s['position']}/{s['op']}/"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            entries.append(BankEntry(state_dict=state, **{**s, "distill_loss": _num(s["distill_loss"]),
                                                          "history": [_num(v) for v in s["history"]]}))
        return cls(entries, teacher_fingerprint=meta["teacher_fingerprint"], settings=meta["settings"],
                   model=meta.get("model"), dataset=meta.get("dataset"))


def _json_safe(scores: dict[str, Any]) -> dict[str, Any]:
    """NaN/Inf losses (a diverged pair) as strings, so the metadata stays valid JSON."""
    out = dict(scores)
    out["distill_loss"] = _enc(out["distill_loss"])
    out["history"] = [_enc(v) for v in out["history"]]
    return out


def _enc(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _num(v: float | str) -> float:
    return float(v)
