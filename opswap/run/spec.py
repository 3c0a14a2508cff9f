"""The typed trial spec: every setting of one run, validated once, where it is built.

A `TrialSpec` is built by study expansion and by `opswap train` (`TrialSpec.create`), and
rebuilt from a record's `settings` (`TrialSpec.from_settings`). It nests the training
(`TrainConfig`), distillation (`DistillConfig`) and pruning (`PruneConfig`) settings, each
validated by its own class, and serialises canonically (`to_settings`): the flat dict stored
in every record, whose SHA-256 is the trial id. The ids of unchanged settings never change, so
stored results stay valid (tests pin two of them).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from opswap.data import DATASETS
from opswap.distill.engine import DistillConfig
from opswap.ops import check_op, parse_op
from opswap.sparse.methods import PRUNE_METHODS, check_prune_options
from opswap.training import MAX_SEED, TrainConfig

__all__ = ["TrialSpec", "PruneConfig", "Init", "TrialKind", "INITS", "TRIAL_KINDS", "trial_id_for", "file_identity",
           "model_positions", "TRAIN_KEYS", "ASSEMBLY_KEYS"]

Init = Literal["scratch", "teacher", "lana", "random"]
TrialKind = Literal["train", "traditional"]
INITS: tuple[str, ...] = get_args(Init)
TRIAL_KINDS: tuple[str, ...] = get_args(TrialKind)
# Training settings a trial takes from its own epochs and seed, not from [train].
_PER_TRIAL = ("epochs", "seed")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in _PER_TRIAL)
# Training settings changed after records of schema 1 were first written: at their defaults they
# hash as the settings they replaced did, so the ids of older trials stay what they were.
# precision "auto" replaced amp = true and channels_last = true; compile None (on CUDA only)
# replaced compile = false.
_ID_LEGACY_TRAIN = {"precision": ("auto", {"amp": True, "channels_last": True}), "compile": (None, {"compile": False})}
# The settings of an assembled network (one op per position, LANA phase 2), stored and hashed
# only when an assignment is set: the ids of single-position trials stay what they were.
ASSEMBLY_KEYS = ("assignment", "picked_by", "budget", "objective")


@functools.lru_cache(maxsize=8)
def model_positions(model: str, num_classes: int = 10) -> tuple[Any, tuple[Any, ...]]:
    """A model built by name and its positions (cached: building large models takes seconds)."""
    from opswap.models import build_model
    from opswap.substitution import positions

    built = build_model(model, num_classes=num_classes)
    return built, tuple(positions(built))


@dataclass(frozen=True)
class PruneConfig:
    """How a trial is sparsified: the method, the target sparsity and the method's options."""

    method: str = "none"
    sparsity: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity {self.sparsity!r} is outside [0, 1); it is the fraction of zero weights")
        object.__setattr__(self, "sparsity", float(self.sparsity))
        method = self.method
        if method not in PRUNE_METHODS:
            raise ValueError(f"unknown prune method {method!r}; allowed: {', '.join(PRUNE_METHODS)}")
        if self.sparsity > 0 and method == "none":
            method = "dsr"  # a sparsity without a method means DSR, the paper's method
            object.__setattr__(self, "method", method)
        if self.sparsity == 0:
            # A dense trial has no pruning, whatever was asked: its id is the dense one.
            object.__setattr__(self, "method", "none")
            object.__setattr__(self, "options", {})
        else:
            check_prune_options(method, dict(self.options))
            object.__setattr__(self, "options", dict(self.options))

    @property
    def active(self) -> bool:
        return self.sparsity > 0


@dataclass(frozen=True)
class TrialSpec:
    """One run: network, data, initialisation, training, distillation and pruning settings."""

    kind: str = "train"
    model: str = "wrn-16-2"
    dataset: str = "synthetic"
    data: str | None = None
    num_classes: int | None = None  # None: from the dataset (100 for cifar100, else 10)
    data_fraction: float = 1.0
    val_fraction: float = 0.0
    position: int | None = None
    op: str = "baseline"
    init: str = "scratch"
    seed: int = 0
    epochs: int = 10
    prune: PruneConfig = PruneConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = None
    latency_batch_size: int = 256
    save_weights: bool = False
    # What the trial's teacher is: "trained:<id>" or "checkpoint:sha256:…" (`opswap train` adds
    # ",bank:sha256:…" for the bank it was given): part of the id, so another teacher is another trial.
    teacher: str | None = None
    method: str | None = None   # the method label of a methods study
    # An assembled network: the teacher with a bank entry at each (position, op) listed (sorted,
    # teacher's block elsewhere), how it was picked (milp | random | greedy | uniform), under which
    # budget text, by which objective (None for picks that use no scores).
    assignment: tuple[tuple[int, str], ...] | None = None
    picked_by: str | None = None
    budget: str | None = None
    objective: str | None = None
    op_family: str = field(default="baseline", init=False)
    op_params: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self):
        def bad(key, value, allowed):
            raise ValueError(f"trial setting {key} = {value!r} is invalid; allowed: {allowed}")

        if self.kind not in TRIAL_KINDS:
            bad("kind", self.kind, " | ".join(TRIAL_KINDS))
        if self.init not in INITS:
            bad("init", self.init, " | ".join(INITS))
        if self.dataset not in DATASETS:
            bad("dataset", self.dataset, " | ".join(DATASETS))
        if self.dataset in ("npz", "folder") and not self.data:
            raise ValueError(f"dataset {self.dataset!r} needs data (the .npz file or the image folder)")
        for key in ("seed", "epochs", "latency_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "epochs" else 0) \
                    or (key == "seed" and value > MAX_SEED):
                bad(key, value, "an integer >= 1" if key == "epochs" else
                    "an integer in [0, 2**63 - 1]" if key == "seed" else "an integer >= 0")
        if not isinstance(self.data_fraction, (int, float)) or not 0.0 < self.data_fraction <= 1.0:
            bad("data_fraction", self.data_fraction, "a fraction in (0, 1]")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", self.val_fraction, "a fraction in [0, 1)")
        object.__setattr__(self, "data_fraction", float(self.data_fraction))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if self.data is not None:
            object.__setattr__(self, "data", str(self.data))
        if self.num_classes is None:
            object.__setattr__(self, "num_classes", 100 if self.dataset == "cifar100" else 10)
        elif isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            bad("num_classes", self.num_classes, "an integer >= 2")
        if self.train.epochs != self.epochs or self.train.seed != self.seed:
            object.__setattr__(self, "train", dataclasses.replace(self.train, epochs=self.epochs, seed=self.seed))
        spec = parse_op(self.op or "baseline")
        object.__setattr__(self, "op", spec.name)
        object.__setattr__(self, "op_family", spec.family)
        object.__setattr__(self, "op_params", dict(spec.kwargs))
        self._check_assembly_fields()
        if self.kind == "traditional":
            return
        self._check_network()
        if self.assignment is not None:
            self._check_assignment()

    def _check_assembly_fields(self) -> None:
        """An assignment as sorted ((position, canonical op), ...); its labels only with it."""
        if self.assignment is None:
            given = [k for k in ASSEMBLY_KEYS[1:] if getattr(self, k) is not None]
            if given:
                raise ValueError(f"trial settings {', '.join(given)} describe an assembled network and need "
                                 "an assignment, e.g. assignment = [[2, \"identity\"], [5, \"mbconv\"]]")
            return
        pairs = []
        for item in self.assignment:
            if not isinstance(item, (tuple, list)) or len(item) != 2 or isinstance(item[0], bool) \
                    or not isinstance(item[0], int) or not isinstance(item[1], str):
                raise ValueError(f"assignment entry {item!r} is invalid; each entry is [position, op], "
                                 "e.g. [2, \"identity\"]")
            pairs.append((item[0], parse_op(item[1]).name))
        positions = [p for p, _ in pairs]
        if len(set(positions)) != len(positions):
            raise ValueError(f"assignment {pairs!r} names a position twice; one op per position")
        object.__setattr__(self, "assignment", tuple(sorted(pairs)))
        for key in ("picked_by", "budget", "objective"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"trial setting {key} = {value!r} is invalid; allowed: a non-empty string")
        if self.picked_by is None:
            raise ValueError("an assignment needs picked_by (milp | random | greedy | uniform | ...)")

    def _check_assignment(self) -> None:
        """Every (position, op) of the assignment fits the model; the rest of the spec is the teacher's."""
        from opswap.substitution import valid_ops

        if self.position is not None or self.op != "baseline":
            raise ValueError("an assembled network takes its ops from assignment; leave position and op unset")
        if self.init != "lana":
            raise ValueError(f"an assembled network is the teacher with weight-bank entries: init 'lana', "
                             f"not {self.init!r}")
        if self.prune.active:
            raise ValueError("an assembled network is trained dense; sparsity must be 0")
        model, table = model_positions(self.model, self.num_classes)
        for position, op in self.assignment:
            if not 1 <= position <= len(table):
                raise ValueError(f"assignment position {position} is not valid for {self.model}; positions are "
                                 f"1..{len(table)}")
            if op == "baseline":
                raise ValueError(f"assignment position {position}: list only replaced positions, not 'baseline'")
            p = table[position - 1]
            if op not in valid_ops(model, position, [op]):
                raise ValueError(f"assignment: op {op!r} does not fit position {position} of {self.model} "
                                 f"({p.c_in}→{p.c_out} channels, stride {p.stride})")
            check_op(op, p.c_in, p.c_out, p.stride)

    def _check_network(self) -> None:
        """The model exists, the position is in range and the op fits there."""
        from opswap.substitution import valid_ops

        model, table = model_positions(self.model, self.num_classes)  # ValueError for an unknown model
        if self.position is None:
            if self.op != "baseline":
                raise ValueError(f"op {self.op!r} needs a position (1-based block index)")
            return
        if isinstance(self.position, bool) or not isinstance(self.position, int) \
                or not 1 <= self.position <= len(table):
            raise ValueError(f"position {self.position!r} is not valid for {self.model}; positions are "
                             f"1..{len(table)}" if table else f"{self.model} has no substitutable positions")
        if self.op != "baseline" and self.op not in valid_ops(model, self.position, [self.op]):
            p = table[self.position - 1]
            raise ValueError(f"op {self.op!r} does not fit position {self.position} of {self.model} "
                             f"({p.c_in}→{p.c_out} channels, stride {p.stride})")
        if self.op != "baseline":  # its parameters build there, at a size that fits in memory
            p = table[self.position - 1]
            check_op(self.op, p.c_in, p.c_out, p.stride)
        if self.init == "teacher" and self.op != "baseline":
            raise ValueError(f"init 'teacher' trains the unmodified teacher; op {self.op!r} at position "
                             f"{self.position} needs init 'lana' (weight bank) or 'random'")

    # -- construction and serialisation ---------------------------------------------------------

    @classmethod
    def create(cls, **settings) -> "TrialSpec":
        """Build a spec from flat keyword settings (the record's keys; training keys flat or in `train`)."""
        settings = dict(settings)
        train = dict(settings.pop("train", None) or {})
        for key in list(settings):
            if key in TRAIN_KEYS:
                train[key] = settings.pop(key)
        prune = PruneConfig(settings.pop("prune", "none") or "none", settings.pop("sparsity", 0.0),
                            dict(settings.pop("prune_options", None) or {}))
        distill = settings.pop("distill", None)
        settings.pop("op_family", None), settings.pop("op_params", None)  # derived from op
        allowed = {f.name for f in dataclasses.fields(cls) if f.init} - {"prune", "train", "distill"}
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise ValueError(f"unknown trial settings {unknown}; allowed: {sorted(allowed)}, prune, "
                             f"sparsity, prune_options, distill and the training settings {sorted(TRAIN_KEYS)}")
        for key in _PER_TRIAL:
            if key in train:
                raise ValueError(f"train.{key} is set by the trial's own {key}")
        unknown_train = sorted(set(train) - set(TRAIN_KEYS))
        if unknown_train:
            raise ValueError(f"unknown training settings {unknown_train}; allowed: {sorted(TRAIN_KEYS)}")
        train = {k: tuple(v) if isinstance(v, list) else v for k, v in train.items()}
        config = TrainConfig(epochs=settings.get("epochs", cls.epochs), seed=settings.get("seed", cls.seed), **train)
        if isinstance(distill, dict):
            distill = DistillConfig(**distill) if distill else None
        return cls(prune=prune, train=config, distill=distill, **settings)

    @classmethod
    def from_settings(cls, settings: dict) -> "TrialSpec":
        """The spec of a record's `settings` (the inverse of `to_settings`)."""
        return cls.create(**settings)

    def to_settings(self) -> dict[str, Any]:
        """The canonical flat settings: what records store and what the trial id hashes."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _PER_TRIAL}
        return {"kind": self.kind, "model": self.model, "dataset": self.dataset, "data": self.data,
                "num_classes": self.num_classes, "data_fraction": self.data_fraction,
                "val_fraction": self.val_fraction, "position": self.position, "op": self.op,
                "op_family": self.op_family, "op_params": dict(self.op_params), "init": self.init,
                "seed": self.seed, "epochs": self.epochs, "sparsity": self.prune.sparsity,
                "prune": self.prune.method, "prune_options": dict(self.prune.options),
                "distill": self.distill.to_dict() if self.distill is not None else {},
                "latency_batch_size": self.latency_batch_size, "save_weights": self.save_weights,
                "teacher": self.teacher, "method": self.method, "train": train,
                **self._assembly_settings()}

    def _assembly_settings(self) -> dict[str, Any]:
        """The assembly keys, present only for an assembled network (so other ids never change)."""
        if self.assignment is None:
            return {}
        return {"assignment": [[p, op] for p, op in self.assignment], "picked_by": self.picked_by,
                "budget": self.budget, "objective": self.objective}

    @property
    def trial_id(self) -> str:
        """12 hex characters of the SHA-256 of the canonical settings."""
        return trial_id_for(self.to_settings())

    def replace(self, **changes) -> "TrialSpec":
        """A copy with some flat settings changed (validated again)."""
        return TrialSpec.create(**{**self.to_settings(), **changes})


def file_identity(kind: str, path: str | Path) -> str:
    """`<kind>:sha256:<16 hex>` of a file's bytes: a teacher checkpoint or bank as part of a trial id."""
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{kind}:sha256:{h.hexdigest()[:16]}"


def trial_id_for(settings: dict) -> str:
    """12 hex characters of the SHA-256 of the settings' canonical JSON."""
    settings = dict(settings)
    train = dict(settings.get("train") or {})
    for key, (default, legacy) in _ID_LEGACY_TRAIN.items():
        if key in train and train[key] == default:
            del train[key]
            for old, value in legacy.items():
                train.setdefault(old, value)
    if "train" in settings:
        settings["train"] = train
    distill = settings.get("distill")
    if isinstance(distill, dict) and distill.get("precision") == "auto":  # added with precision, as above
        settings["distill"] = {k: v for k, v in distill.items() if k != "precision"}
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
