"""The schema check of study files: every problem found at once, before anything runs.

Each message names the file, the key, what was wrong and what is allowed, with the closest valid
name for a misspelling (difflib), as `opswap run` prints it.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from opswap.study.config import (BACKENDS, DATASETS, INITS, KINDS, PRUNE_METHODS, Candidate, Method, RunConfig,
                                 Study, StudyError, TeacherConfig, model_positions)

__all__ = ["validate"]

_NUM_CLASSES = {"cifar100": 100}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Top-level keys: (allowed TOML types, what to write). Lists also accept one scalar.
_TOP: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), 'a name, e.g. name = "quickstart"'),
    "description": ((str,), "a string"),
    "kind": ((str,), f"one of {', '.join(KINDS)}"),
    "model": ((str,), 'a model name, e.g. "wrn-40-2" or "tf-cnn"'),
    "dataset": ((str,), f"one of {', '.join(DATASETS)}"),
    "data": ((str,), "the dataset root or file (a path)"),
    "num_classes": ((int,), "a positive integer"),
    "data_fraction": ((list, float, int), "fractions in (0, 1], e.g. [0.25, 1.0]"),
    "positions": ((list, str, int), 'a list of 1-based positions, or "all"'),
    "candidates": ((list,), 'op names or tables, e.g. ["identity", "mbconv"] or [[candidates]] name = "mbconv", e = 3'),
    "seeds": ((list, int), "a list of non-negative integers, e.g. [0, 1, 2]"),
    "epochs": ((list, int), "a list of positive integers, e.g. [25, 50]"),
    "init": ((list, str), f"a list drawn from {', '.join(INITS[:3])}"),
    "sparsity": ((list, float, int), "a list of fractions in [0, 1), e.g. [0.0, 0.9]"),
    "prune": ((str,), f"one of {', '.join(PRUNE_METHODS)}"),
    "prune_options": ((dict,), "a [prune_options] table of the prune method's settings, e.g. period = 100"),
    "train": ((dict,), "a [train] table of TrainConfig fields"),
    "distill": ((dict,), "a [distill] table of DistillConfig fields"),
    "teacher": ((dict,), "a [teacher] table: train, epochs, seed, checkpoint"),
    "run": ((dict,), "a [run] table: workers, backend, address, devices, retries, stale_after"),
    "methods": ((list,), '[[methods]] tables, each with name = "..." and settings'),
    "reference": ((str,), 'the name of the method the others are compared with, e.g. reference = "dense"'),
}
_LISTS = ("data_fraction", "positions", "seeds", "epochs", "init", "sparsity")
_TEACHER_KEYS = {f.name for f in dataclasses.fields(TeacherConfig)}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)}
_METHOD_KEYS = ("kind", "model", "dataset", "data", "num_classes", "position", "op", "init", "epochs",
                "sparsity", "prune", "prune_options", "train", "distill")


def _closest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class _Checker:
    """Collects problems as `file: key: what was wrong; what is allowed`."""

    def __init__(self, source: str):
        self.source, self.problems = source, []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {key}: {message}")

    def unknown(self, where: str, table: Mapping, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        for key in table:
            if key not in allowed:
                self.add(f"{where}{key}", f"unknown key.{_closest(key, allowed)} "
                         f"Allowed keys{' in [' + where.rstrip('.') + ']' if where else ''}: {', '.join(allowed)}")

    def raise_if_any(self) -> None:
        if self.problems:
            head = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''} in the study; nothing was run:"
            raise StudyError("\n  ".join([head] + self.problems))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_list(raw: dict, key: str) -> list:
    value = raw[key]
    return list(value) if isinstance(value, list) else [value]


def _check_config_table(chk: _Checker, key: str, table: dict, cls: type | None) -> None:
    """Check a [train]/[distill] table against its dataclass (fields and value types)."""
    if cls is None:
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key.endswith("train"):  # set per trial from the study's epochs and seeds
        for name in ("epochs", "seed"):
            if name in table:
                chk.add(f"train.{name}", f"set by the study's top-level {name}{'s' if name == 'seed' else ''} "
                        "list, not in [train]")
        fields = {k: v for k, v in fields.items() if k not in ("epochs", "seed")}
        table = {k: v for k, v in table.items() if k not in ("epochs", "seed")}
    chk.unknown(f"{key}.", table, fields)
    defaults = cls()
    for name, value in table.items():
        if name not in fields:
            continue
        default = getattr(defaults, name)
        ok = (default is None or (isinstance(default, bool) and isinstance(value, bool))
              or (_is_int(default) and _is_int(value)) or (isinstance(default, float) and _is_num(value))
              or (isinstance(default, str) and isinstance(value, str))
              or (isinstance(default, (tuple, list)) and isinstance(value, list))
              or (isinstance(default, dict) and isinstance(value, dict)))
        if not ok:
            chk.add(f"{key}.{name}", f"{value!r} has the wrong type; expected "
                    f"{type(default).__name__} like the default {default!r}")
    if any(p.startswith(f"{chk.source}: {key}.") for p in chk.problems):
        return
    try:
        cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})
    except (TypeError, ValueError) as err:
        chk.add(key, str(err))


def _config_class(module: str, name: str) -> type | None:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _check_path(chk: _Checker, key: str, path: str | None, what: str, *, parent_ok: bool = False) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists() or (parent_ok and p.parent.exists()):
        return
    chk.add(key, f"{what} {str(p)!r} does not exist (relative paths are read from the current directory "
            f"{str(Path.cwd())!r})")


def _candidates(chk: _Checker, raw: dict) -> tuple[Candidate, ...]:
    from opswap.ops import DEFAULT_CANDIDATES, OpError, list_ops, parse_op

    items = _as_list(raw, "candidates") if "candidates" in raw else list(DEFAULT_CANDIDATES)
    if items == ["all"]:
        items = list(DEFAULT_CANDIDATES)
    out: list[Candidate] = []
    for i, item in enumerate(items):
        where = f"candidates[{i}]"
        if isinstance(item, dict):
            params = {k: v for k, v in item.items() if k != "name"}
            name = item.get("name")
            if not isinstance(name, str):
                chk.add(where, 'a candidate table needs name = "<op>", e.g. { name = "mbconv", e = 3, k = 5 }')
                continue
            spec: Any = (name, params)
        elif isinstance(item, str):
            name, spec = item, item
        else:
            chk.add(where, f"{item!r} is neither an op name nor a table; write \"mbconv\" or {{ name = \"mbconv\", e = 3 }}")
            continue
        try:
            op = parse_op(spec)
        except OpError as err:
            msg = str(err)
            if "unknown op" in msg and "Did you mean" not in msg:
                msg += _closest(name, list_ops() + list(DEFAULT_CANDIDATES))
            chk.add(where, msg)
            continue
        cand = Candidate(op.name, op.family, dict(op.params))
        if any(c.name == cand.name for c in out):
            chk.add(where, f"{op.name!r} is listed twice; list each candidate once")
            continue
        out.append(cand)
    if not out and not any(p.startswith(f"{chk.source}: candidates") for p in chk.problems):
        chk.add("candidates", "the list is empty; name at least one op (see `opswap ops`)")
    return tuple(out)


def _positions(chk: _Checker, raw: dict, model: str | None, num_classes: int) -> tuple[int, ...]:
    value = raw.get("positions", "all")
    if model is None:
        return ()
    try:
        available = [p.index for p in model_positions(model, num_classes)[1]]
    except ValueError as err:
        chk.add("model", str(err))
        return ()
    if value == "all" or value == ["all"]:
        return tuple(available)
    if isinstance(value, str):
        chk.add("positions", f'{value!r} is not allowed; write "all" or a list such as [1, 7, 18]')
        return ()
    items = value if isinstance(value, list) else [value]
    span = f"1..{max(available)}" if available else "none (this model has no substitutable blocks)"
    bad = [v for v in items if not _is_int(v) or v not in available]
    if bad:
        chk.add("positions", f"{', '.join(map(repr, bad))} not valid for {model}; positions are {span}")
    elif len(set(items)) != len(items):
        chk.add("positions", f"{items} repeats a position; list each once")
    elif not items:
        chk.add("positions", f'the list is empty; give positions in {span} or "all"')
    return tuple(v for v in items if _is_int(v) and v in available)


def _methods(chk: _Checker, raw: dict) -> tuple[Method, ...]:
    out = []
    for i, item in enumerate(_as_list(raw, "methods") if "methods" in raw else []):
        where = f"methods[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            chk.add(where, 'each [[methods]] table needs name = "<label>" and settings such as model = "tf-cnn"')
            continue
        settings = {k: v for k, v in item.items() if k != "name"}
        chk.unknown(f"{where}.", settings, _METHOD_KEYS)
        if isinstance(settings.get("train"), dict):
            _check_config_table(chk, f"{where}.train", settings["train"], _config_class("opswap.training", "TrainConfig"))
        if settings.get("kind", "train") not in ("train", "traditional"):
            chk.add(f"{where}.kind", f"{settings['kind']!r} is not allowed; use \"train\" or \"traditional\"")
        if "model" in settings:
            from opswap import build_model
            try:
                build_model(settings["model"])
            except (ValueError, TypeError) as err:
                chk.add(f"{where}.model", str(err))
        sp = settings.get("sparsity", 0.0)
        if not _is_num(sp) or not 0.0 <= sp < 1.0:
            chk.add(f"{where}.sparsity", f"{sp!r} is outside [0, 1)")
        if settings.get("prune", "none") not in PRUNE_METHODS:
            chk.add(f"{where}.prune", f"{settings['prune']!r} is not a prune method; allowed: {', '.join(PRUNE_METHODS)}")
        elif "prune_options" in settings:
            _check_prune_options(chk, f"{where}.prune_options", settings.get("prune", "none"),
                                 settings["prune_options"])
        if any(m.name == item["name"] for m in out):
            chk.add(where, f"method name {item['name']!r} is used twice")
        out.append(Method(item["name"], settings))
    if "methods" in raw and not out and not chk.problems:
        chk.add("methods", "the list is empty; add [[methods]] tables")
    return tuple(out)


def validate(raw: dict, source: str) -> Study:
    """Check a parsed study (after overrides) and build the `Study`; raise `StudyError` listing every problem."""
    chk = _Checker(source)
    chk.unknown("", raw, _TOP)
    for key in ("name", "model", "dataset"):
        if key not in raw and not (key == "model" and raw.get("kind") == "methods"):
            chk.add(key, f"missing; {_TOP[key][1]}")
    for key, value in raw.items():
        if key in _TOP and not isinstance(value, _TOP[key][0]) or isinstance(value, bool) and key in _TOP:
            chk.add(key, f"{value!r} ({type(value).__name__}) has the wrong type; expected {_TOP[key][1]}")
    chk.raise_if_any()  # types below are known to be right

    name = raw["name"]
    if not _NAME.match(name):
        chk.add("name", f"{name!r} cannot name a results folder; use letters, digits, '-', '_' and '.'")
    kind = raw.get("kind", "methods" if "methods" in raw else "substitution")
    if kind not in KINDS:
        chk.add("kind", f"{kind!r} is not a study kind; allowed: {', '.join(KINDS)}{_closest(kind, KINDS)}")
    dataset = raw["dataset"]
    if dataset not in DATASETS:
        chk.add("dataset", f"unknown dataset {dataset!r}.{_closest(dataset, DATASETS)} Allowed: {', '.join(DATASETS)}")
    data = raw.get("data")
    if dataset in ("npz", "folder") and data is None:
        chk.add("data", f'dataset {dataset!r} needs its root: data = "path/to/{"file.npz" if dataset == "npz" else "folder"}"')
    _check_path(chk, "data", data, "dataset root", parent_ok=dataset in ("cifar10", "cifar100"))
    num_classes = raw.get("num_classes", _NUM_CLASSES.get(dataset, 10))
    if num_classes < 2:
        chk.add("num_classes", f"{num_classes} is not allowed; a classifier needs at least 2 classes")

    lists = {k: _as_list(raw, k) for k in _LISTS if k in raw}
    seeds = lists.get("seeds", [0])
    if not seeds or not all(_is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        chk.add("seeds", f"{seeds!r} is not allowed; seeds are distinct non-negative integers, e.g. [0, 1, 2]")
    epochs = lists.get("epochs", [1])
    if not epochs or not all(_is_int(e) and e > 0 for e in epochs):
        chk.add("epochs", f"{epochs!r} is not allowed; epochs are positive integers, e.g. [25, 50]")
    inits = lists.get("init", ["lana"])
    for i in inits:
        if i not in INITS[:3]:
            chk.add("init", f"{i!r} is not an init.{_closest(str(i), INITS)} Allowed: lana, random, scratch")
    sparsity = lists.get("sparsity", [0.0])
    for s in sparsity:
        if not _is_num(s) or not 0.0 <= s < 1.0:
            chk.add("sparsity", f"{s!r} is outside [0, 1); sparsity is the fraction of zero weights, e.g. 0.9")
    prune = raw.get("prune", "dsr" if any(_is_num(s) and s > 0 for s in sparsity) else "none")
    if prune not in PRUNE_METHODS:
        chk.add("prune", f"unknown prune method {prune!r}.{_closest(prune, PRUNE_METHODS)} Allowed: {', '.join(PRUNE_METHODS)}")
    elif prune == "none" and any(_is_num(s) and s > 0 for s in sparsity):
        chk.add("prune", 'sparsity > 0 needs a prune method: prune = "dsr", "static" or "gradual"')
    prune_options = raw.get("prune_options", {})
    if prune in PRUNE_METHODS:
        _check_prune_options(chk, "prune_options", prune, prune_options)
    fractions = lists.get("data_fraction", [1.0])
    for f in fractions:
        if not _is_num(f) or not 0.0 < f <= 1.0:
            chk.add("data_fraction", f"{f!r} is outside (0, 1]")

    train, distill = raw.get("train", {}), raw.get("distill", {})
    _check_config_table(chk, "train", train, _config_class("opswap.training", "TrainConfig"))
    _check_config_table(chk, "distill", distill, _config_class("opswap.distill", "DistillConfig"))
    # Candidates imitate the teacher on the inputs it was trained on: same scaling, same augmentation.
    inherited = {k: train[k] for k in ("normalize", "augment") if k in train}
    distill = {**inherited, **distill}
    teacher = _teacher(chk, raw.get("teacher", {}))
    run = _run(chk, raw.get("run", {}))

    model = raw.get("model")
    positions: tuple[int, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    methods: tuple[Method, ...] = ()
    if kind == "methods":
        methods = _methods(chk, raw)
    reference = raw.get("reference")
    if reference is not None:
        names = [m.name for m in methods]
        if kind != "methods":
            chk.add("reference", "only a methods study names a reference; a substitution study is "
                                 "compared with its baseline network")
        elif names and reference not in names:
            chk.add("reference", f"{reference!r} is not one of the methods.{_closest(reference, names)} "
                                 f"Methods: {', '.join(names)}")
    if model is not None:
        from opswap import build_model
        try:
            build_model(model)
        except (ValueError, TypeError) as err:
            chk.add("model", str(err))
            model_ok = False
        else:
            model_ok = True
        if kind == "substitution" and model_ok:
            positions = _positions(chk, raw, model, num_classes)
            candidates = _candidates(chk, raw)
    needs_teacher = kind == "substitution" and any(i != "scratch" for i in inits)
    if needs_teacher and not teacher.train and teacher.checkpoint is None:
        chk.add("teacher", "init lana/random needs a teacher: set train = true or checkpoint = \"path\"")
    chk.raise_if_any()
    return Study(
        name=name, path=source, model=model or "", dataset=dataset, kind=kind,
        description=raw.get("description", ""), data=data, num_classes=num_classes,
        data_fraction=tuple(float(f) for f in fractions), positions=positions, candidates=candidates,
        seeds=tuple(seeds), epochs=tuple(epochs), init=tuple(inits),
        sparsity=tuple(float(s) for s in sparsity), prune=prune, prune_options=dict(prune_options),
        train=dict(train), distill=dict(distill),
        teacher=teacher, run=run, methods=methods, reference=reference)


def _check_prune_options(chk: _Checker, key: str, method: str, options: Any) -> None:
    from opswap.sparse.pruning import check_prune_options

    if not isinstance(options, dict):
        chk.add(key, f"{options!r} has the wrong type; expected a table such as {{ period = 100 }}")
        return
    try:
        check_prune_options(method, options)
    except ValueError as err:
        chk.add(key, str(err))


def _teacher(chk: _Checker, table: dict) -> TeacherConfig:
    chk.unknown("teacher.", table, _TEACHER_KEYS)
    values = {k: v for k, v in table.items() if k in _TEACHER_KEYS}
    if not isinstance(values.get("train", True), bool):
        chk.add("teacher.train", f"{values['train']!r} must be true or false")
    epochs = values.get("epochs", 200)
    if not _is_int(epochs) or epochs <= 0:
        chk.add("teacher.epochs", f"{epochs!r} is not allowed; a positive integer, e.g. 200")
    seed = values.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        chk.add("teacher.seed", f"{seed!r} is not allowed; a non-negative integer")
    ckpt = values.get("checkpoint")
    if ckpt is not None:
        if not isinstance(ckpt, str):
            chk.add("teacher.checkpoint", f"{ckpt!r} must be a path string")
        else:
            _check_path(chk, "teacher.checkpoint", ckpt, "teacher checkpoint")
            values.setdefault("train", False)
            if values["train"] is True:
                chk.add("teacher", "give either train = true or checkpoint = \"path\", not both")
    return TeacherConfig(**values) if not any(p.split(": ")[1].startswith("teacher") for p in chk.problems) \
        else TeacherConfig()


def _run(chk: _Checker, table: dict) -> RunConfig:
    chk.unknown("run.", table, _RUN_KEYS)
    values = {k: v for k, v in table.items() if k in _RUN_KEYS}
    workers = values.get("workers", "auto")
    if not (workers == "auto" or (_is_int(workers) and workers >= 1)):
        chk.add("run.workers", f"{workers!r} is not allowed; a positive integer or \"auto\"")
    backend = values.get("backend", "loky")
    if backend not in BACKENDS:
        chk.add("run.backend", f"unknown backend {backend!r}.{_closest(str(backend), BACKENDS)} Allowed: {', '.join(BACKENDS)}")
    address = values.get("address")
    if address is not None and not (isinstance(address, str) and re.match(r"^[a-z]+://", address)):
        chk.add("run.address", f"{address!r} is not a scheduler address; write e.g. \"tcp://10.0.0.1:8786\"")
    devices = values.get("devices", "auto")
    if isinstance(devices, list):
        if not devices or not all(isinstance(d, str) and re.fullmatch(r"cpu|cuda(:\d+)?|mps", d) for d in devices):
            chk.add("run.devices", f"{devices!r} is not allowed; a list such as [\"cuda:0\", \"cuda:1\"]")
        values["devices"] = tuple(devices)
    elif devices not in ("auto", "cpu", "cuda"):
        chk.add("run.devices", f"{devices!r} is not allowed; \"auto\", \"cpu\", \"cuda\" or a list of devices")
    retries = values.get("retries", 1)
    if not _is_int(retries) or retries < 0:
        chk.add("run.retries", f"{retries!r} is not allowed; a non-negative integer (0 = no retry)")
    stale = values.get("stale_after", 120.0)
    if not _is_num(stale) or stale <= 0:
        chk.add("run.stale_after", f"{stale!r} is not allowed; seconds, a positive number")
    return RunConfig(**values) if not any(p.split(": ")[1].startswith("run") for p in chk.problems) else RunConfig()
