"""Study files: TOML → a validated, frozen `Study` (DESIGN.md, "Studies, trials, results").

A study declares what to compare (model, dataset, positions × candidates, seeds, epoch
budgets, init, sparsity) and how to run it (teacher, distillation, workers, devices), in the
staged style of pycls/NASLib. `validate.py` checks everything before anything runs: every problem is
reported at once, each naming the file, the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StudyError", "Candidate", "Method", "TeacherConfig", "RunConfig", "Study", "load_study",
           "parse_overrides", "model_positions", "DATASETS", "INITS", "PRUNE_METHODS", "BACKENDS", "KINDS"]

DATASETS = ("cifar10", "cifar100", "synthetic", "npz", "folder")
INITS = ("lana", "random", "scratch", "teacher")
PRUNE_METHODS = ("none", "dsr", "static", "gradual")
BACKENDS = ("loky", "dask")
KINDS = ("substitution", "methods")


class StudyError(ValueError):
    """A study file that cannot run; the message lists every problem found."""


@dataclass(frozen=True)
class Candidate:
    """One candidate op: canonical registry name (`mbconv_e6_k3`), family and parameters."""

    name: str
    family: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One method of a `kind = "methods"` study: a label and its settings overrides."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherConfig:
    """How the study's teacher is obtained: trained here, or a checkpoint file."""

    train: bool = True
    epochs: int = 200
    seed: int = 0
    checkpoint: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Execution settings: workers, joblib backend, dask address, devices, retries."""

    workers: int | str = "auto"
    backend: str = "loky"
    address: str | None = None
    devices: str | tuple[str, ...] = "auto"
    retries: int = 1
    stale_after: float = 120.0


@dataclass(frozen=True)
class Study:
    """A validated study: what to compare and how to run it."""

    name: str
    path: str
    model: str
    dataset: str
    kind: str = "substitution"
    description: str = ""
    data: str | None = None
    num_classes: int = 10
    data_fraction: tuple[float, ...] = (1.0,)
    positions: tuple[int, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    seeds: tuple[int, ...] = (0,)
    epochs: tuple[int, ...] = (1,)
    init: tuple[str, ...] = ("lana",)
    sparsity: tuple[float, ...] = (0.0,)
    prune: str = "none"
    prune_options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    distill: Mapping[str, Any] = field(default_factory=dict)
    teacher: TeacherConfig = TeacherConfig()
    run: RunConfig = RunConfig()
    methods: tuple[Method, ...] = ()
    reference: str | None = None   # methods studies: the method the others are compared with
    overrides: tuple[tuple[str, Any], ...] = ()   # --set key=value pairs applied over the file

    @property
    def needs_teacher(self) -> bool:
        """Whether some trial starts from the teacher (init lana, random or teacher)."""
        return self.kind == "substitution" and any(i != "scratch" for i in self.init)


def parse_overrides(items: Iterable[str], flag: str = "--set",
                    example: str = "--set epochs=[1] or --set train.lr=0.05") -> list[tuple[str, Any]]:
    """Parse `key=value` strings (dotted keys, TOML-typed values; bare words are strings)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise StudyError(f"{flag} {item!r}: expected key=value with a (dotted) key, e.g. {example}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        parsed.append((key, value))
    return parsed


def _apply_override(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StudyError(f"--set {key}=...: {part!r} is not a table in the study")
    node[last] = value


@functools.lru_cache(maxsize=4)
def model_positions(model: str, num_classes: int = 10) -> tuple[Any, tuple[Any, ...]]:
    """A model built by name and its positions (cached: building large models takes seconds)."""
    import opswap

    built = opswap.build_model(model, num_classes=num_classes)
    return built, tuple(opswap.positions(built))


def load_study(path: str | Path, overrides: Iterable[str | tuple[str, Any]] = ()) -> Study:
    """Read and validate a study file; `overrides` are `key=value` strings or (key, value) pairs."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise StudyError(f"{source}: no such study file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{source}: not valid TOML: {err}") from None
    for key, value in parse_overrides([o for o in overrides if isinstance(o, str)]) + \
            [o for o in overrides if not isinstance(o, str)]:
        _apply_override(raw, key, value)
    from opswap.study.validate import validate

    pairs = parse_overrides([o for o in overrides if isinstance(o, str)]) + \
        [tuple(o) for o in overrides if not isinstance(o, str)]
    return dataclasses.replace(validate(raw, source), overrides=tuple(pairs))


