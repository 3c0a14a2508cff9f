"""`load_study`: a TOML study file → a validated `Study`, every problem reported at once.

The schema (`schema.py`) checks the file's shape and types; here come the checks that need
values: ranges, names (with the closest valid one for a misspelling), the model and its
positions, the op registry, the prune options, and paths that must exist.
"""
from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from opswap.data import DATASETS, check_dataset
from opswap.run.spec import model_positions
from opswap.training import MAX_SEED
from opswap.sparse.methods import PRUNE_METHODS, check_prune_options
from opswap.study.assembly import assembly_settings
from opswap.study.schema import (_EXPECTED, _METHOD_KEYS, _NAME, STUDY_INITS, STUDY_KINDS, Candidate, Method,
                                 PredictConfig, Problems, RunConfig, Study, StudyError, StudyFile, TeacherConfig,
                                 _closest, apply_override, check_table, parse_overrides)

__all__ = ["load_study", "validate"]

_NUM_CLASSES = {"cifar100": 100}


def _dataset_info(problems: Problems, key: str, dataset: str, data: str | None):
    """The dataset's class count and image size, checked cheaply (headers and labels) before anything runs."""
    if dataset not in DATASETS or problems.has(key):
        return None
    try:
        return check_dataset(dataset, data)
    except (ValueError, OSError) as err:
        problems.add(key, str(err))
        return None


def _num_classes(problems: Problems, key: str, given: int | None, dataset: str, info) -> int:
    """`given`, or the dataset's class count when it is left out; a count the data contradicts is refused."""
    if given is None:
        if info is None:
            return _NUM_CLASSES.get(dataset, 10)
        if info.num_classes < 2:
            problems.add(key.replace("num_classes", "data"),
                         f"dataset {dataset!r} has {info.num_classes} class; a classifier needs at least 2")
            return 2  # checked no further
        return info.num_classes
    if given < 2:
        problems.add(key, f"{given} is not allowed; a classifier needs at least 2 classes")
    elif info is not None and given != info.num_classes:
        problems.add(key, f"{given} is not allowed; dataset {dataset!r} has {info.num_classes} classes "
                          "(leave num_classes out to take the dataset's)")
    return given


def _image_size_ok(problems: Problems, key: str, info) -> None:
    from opswap.models import check_image_size

    try:
        check_image_size(info.image_size)
    except ValueError as err:
        problems.add(key, str(err))


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
    overrides = list(overrides)
    pairs = parse_overrides([o for o in overrides if isinstance(o, str)]) + \
        [tuple(o) for o in overrides if not isinstance(o, str)]
    for key, value in pairs:
        apply_override(raw, key, value)
    return dataclasses.replace(validate(raw, source), overrides=tuple(pairs))


def validate(raw: dict, source: str) -> Study:
    """Check a parsed study (after overrides) and build the `Study`; raise `StudyError` listing every problem."""
    problems = Problems(source)
    try:
        parsed = StudyFile.model_validate(raw)
    except ValidationError as err:
        problems.pydantic(err, raw=raw, expected=_EXPECTED, fields=StudyFile.model_fields)
        # Go on without the refused keys, so that the other problems (in [train], ...) are listed too.
        refused = {str(e["loc"][0]) for e in err.errors() if e["loc"]}
        try:
            parsed = StudyFile.model_validate({k: v for k, v in raw.items() if k not in refused})
        except ValidationError:
            problems.raise_if_any()
        problems.settled |= refused
    study = _resolve(parsed, problems, source)
    problems.raise_if_any()
    return study


def _path(problems: Problems, key: str, path: str | None, what: str, *, parent_ok: bool = False) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists() or (parent_ok and p.parent.exists()):
        return
    problems.add(key, f"{what} {str(p)!r} does not exist (relative paths are read from the current "
                 f"directory {str(Path.cwd())!r})")


def _resolve(f: StudyFile, problems: Problems, source: str) -> Study:
    if not _NAME.fullmatch(f.name):
        problems.add("name", f"{f.name!r} cannot name a results folder; use ASCII letters, digits, '-', '_' and '.'")
    kind = f.kind or ("methods" if f.methods else "assemble" if f.budgets is not None else "substitution")
    if kind not in STUDY_KINDS:
        problems.add("kind", f"{kind!r} is not a study kind; allowed: {', '.join(STUDY_KINDS)}{_closest(kind, STUDY_KINDS)}")
    if f.dataset not in DATASETS:
        problems.add("dataset", f"unknown dataset {f.dataset!r}.{_closest(f.dataset, DATASETS)} Allowed: {', '.join(DATASETS)}")
    if f.dataset in ("npz", "folder") and f.data is None:
        problems.add("data", f'dataset {f.dataset!r} needs its root: data = "path/to/'
                     f'{"file.npz" if f.dataset == "npz" else "folder"}"')
    _path(problems, "data", f.data, "dataset root", parent_ok=f.dataset in ("cifar10", "cifar100"))
    info = _dataset_info(problems, "data", f.dataset, f.data)
    num_classes = _num_classes(problems, "num_classes", f.num_classes, f.dataset, info)
    if info is not None and kind != "methods":  # a methods study's networks are checked per method
        _image_size_ok(problems, "data", info)
    if kind != "methods" and f.model is None:
        problems.add("model", f"missing; {_EXPECTED['model']}")
    if not f.seeds or any(not 0 <= s <= MAX_SEED for s in f.seeds) or len(set(f.seeds)) != len(f.seeds):
        problems.add("seeds", f"{f.seeds!r} is not allowed; seeds are distinct integers in [0, 2**63 - 1], e.g. [0, 1, 2]")
    if not f.epochs or any(e <= 0 for e in f.epochs):
        problems.add("epochs", f"{f.epochs!r} is not allowed; epochs are positive integers, e.g. [25, 50]")
    for key, hint in (("init", '["lana"]'), ("sparsity", "[0.0]"), ("data_fraction", "[1.0]")):
        if getattr(f, key) == []:
            problems.add(key, f"the list is empty; give at least one value, e.g. {key} = {hint} (or leave {key} out)")
    for i in f.init:
        if i not in STUDY_INITS:
            problems.add("init", f"{i!r} is not an init.{_closest(i, STUDY_INITS)} Allowed: {', '.join(STUDY_INITS)}")
    for s in f.sparsity:
        if not 0.0 <= s < 1.0:
            problems.add("sparsity", f"{s!r} is outside [0, 1); sparsity is the fraction of zero weights, e.g. 0.9")
    prune = f.prune or ("dsr" if any(s > 0 for s in f.sparsity) else "none")
    if prune not in PRUNE_METHODS:
        problems.add("prune", f"unknown prune method {prune!r}.{_closest(prune, PRUNE_METHODS)} "
                     f"Allowed: {', '.join(PRUNE_METHODS)}")
    elif prune == "none" and any(s > 0 for s in f.sparsity):
        methods = ", ".join(f'"{m}"' for m in PRUNE_METHODS if m != "none")
        problems.add("prune", f"sparsity > 0 needs a prune method: prune = one of {methods}")
    else:
        _prune_options(problems, "prune_options", prune, f.prune_options)
    for x in f.data_fraction:
        if not 0.0 < x <= 1.0:
            problems.add("data_fraction", f"{x!r} is outside (0, 1]")
    teacher = _table(problems, "teacher", f.teacher, TeacherConfig)
    # [train] runs with every budget of the study (and the teacher's, when it trains one here).
    trains_teacher = (kind == "assemble" or (kind == "substitution" and any(i != "scratch" for i in f.init))) \
        and teacher.train and teacher.checkpoint is None
    budgets = [*f.epochs, *([teacher.epochs] if trains_teacher else [])]
    # A methods study's [train] runs with each method's budget: checked per method (_methods).
    train = check_table(problems, "train", f.train, "train", budgets, check_values=kind != "methods")
    distill = check_table(problems, "distill", f.distill, "distill")
    # Candidates imitate the teacher on the inputs it was trained on: same scaling, same augmentation.
    distill = {**{k: train[k] for k in ("normalize", "augment") if k in train}, **distill}
    if teacher.checkpoint is not None:
        _path(problems, "teacher.checkpoint", teacher.checkpoint, "teacher checkpoint")
        if f.teacher.get("train") is True:
            problems.add("teacher", "give either train = true or checkpoint = \"path\", not both")
        teacher = teacher.model_copy(update={"train": False})
    run = _table(problems, "run", f.run, RunConfig)
    predict = _table(problems, "predict", f.predict, PredictConfig)
    methods = _methods(problems, f.methods, f, info, num_classes) if kind == "methods" else ()
    if f.reference is not None:
        names = [m.name for m in methods]
        if kind != "methods":
            problems.add("reference", "only a methods study names a reference; a substitution study is "
                                      "compared with its baseline network")
        elif names and f.reference not in names:
            problems.add("reference", f"{f.reference!r} is not one of the methods.{_closest(f.reference, names)} "
                                      f"Methods: {', '.join(names)}")
    positions: tuple[int, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    if f.model is not None and _model_ok(problems, "model", f.model) and kind in ("substitution", "assemble"):
        positions = _positions(problems, f.positions, f.model, num_classes)
        candidates = _candidates(problems, f.candidates)
        _candidates_build(problems, f.model, num_classes, positions, candidates, f.candidates)
    needs_teacher = kind == "assemble" or (kind == "substitution" and any(i != "scratch" for i in f.init))
    assembly = assembly_settings(problems, f, kind, positions)  # {} unless kind = "assemble"
    if needs_teacher and not teacher.train and teacher.checkpoint is None:
        problems.add("teacher", "init lana/random needs a teacher: set train = true or checkpoint = \"path\"")
    if problems.items:
        return Study(name=f.name, path=source, model="", dataset=f.dataset)
    return Study(
        name=f.name, path=source, model=f.model or "", dataset=f.dataset, kind=kind, description=f.description,
        data=f.data, num_classes=num_classes, data_fraction=tuple(float(x) for x in f.data_fraction),
        positions=positions, candidates=candidates, seeds=tuple(f.seeds), epochs=tuple(f.epochs),
        init=tuple(f.init), sparsity=tuple(float(s) for s in f.sparsity), prune=prune,
        prune_options=dict(f.prune_options), train=train, distill=distill, teacher=teacher, run=run,
        predict=predict, methods=methods, reference=f.reference, **assembly)


def _table(problems: Problems, key: str, table: dict, cls):
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        expected = {"workers": 'a positive integer or "auto"', "address": 'a scheduler address, e.g. "tcp://10.0.0.1:8786"',
                    "devices": '"auto", "cpu", "cuda" or a list such as ["cuda:0", "cuda:1"]',
                    "retries": "a non-negative integer (0 = no retry)", "stale_after": "seconds, a positive number",
                    "epochs": "a positive integer, e.g. 200", "seed": "an integer in [0, 2**63 - 1]",
                    "train": "true or false", "checkpoint": "a path string",
                    "order": '"plan" (as listed), "promising" (highest predicted Δ first) or "informative" '
                             '(least measured, most uncertain first)',
                    "features": "true or false", "proxies": 'a list of proxy names, e.g. ["synflow", "snip"]',
                    "init": 'a list drawn from "lana", "random"', "batches": "a positive integer",
                    "batch_size": "an integer >= 2", "heldout_batches": "a non-negative integer (0: skip)",
                    "correction": '"holm" or "bh"'}
        problems.pydantic(err, where=f"{key}.", raw=table, expected=expected, fields=cls.model_fields)
        return cls()


def _model_ok(problems: Problems, key: str, model: str) -> bool:
    try:
        model_positions(model)
    except (ValueError, TypeError) as err:
        problems.add(key, str(err))
        return False
    return True


def _prune_options(problems: Problems, key: str, method: str, options: Any) -> None:
    if not isinstance(options, dict):
        problems.add(key, f"{options!r} has the wrong type; expected a table such as {{ period = 100 }}")
        return
    try:
        check_prune_options(method, options)
    except (TypeError, ValueError) as err:
        problems.add(key, str(err))


def _candidates(problems: Problems, items: list | None) -> tuple[Candidate, ...]:
    from opswap.ops import DEFAULT_CANDIDATES, OpError, list_ops, parse_op

    items = list(items) if items is not None else list(DEFAULT_CANDIDATES)
    if items == ["all"]:
        items = list(DEFAULT_CANDIDATES)
    out: list[Candidate] = []
    for i, item in enumerate(items):
        where = f"candidates[{i}]"
        if isinstance(item, dict):
            params = {k: v for k, v in item.items() if k != "name"}
            name = item.get("name")
            if not isinstance(name, str):
                problems.add(where, 'a candidate table needs name = "<op>", e.g. { name = "mbconv", e = 3, k = 5 }')
                continue
            spec: Any = (name, params)
        else:
            name, spec = item, item
        try:
            op = parse_op(spec)
        except OpError as err:
            msg = str(err)
            if "unknown op" in msg and "Did you mean" not in msg:
                msg += _closest(name, list_ops() + list(DEFAULT_CANDIDATES))
            problems.add(where, msg)
            continue
        cand = Candidate(op.name, op.family, dict(op.params))
        if any(c.name == cand.name for c in out):
            problems.add(where, f"{op.name!r} is listed twice; list each candidate once")
            continue
        out.append(cand)
    if not out and not problems.has("candidates"):
        problems.add("candidates", "the list is empty; name at least one op (see `opswap ops`)")
    return tuple(out)


def _candidates_build(problems: Problems, model: str, num_classes: int, positions: tuple[int, ...],
                      candidates: tuple[Candidate, ...], items) -> None:
    """Each candidate builds, at every study position it fits, at a size that fits in memory
    (`opswap.ops.check_op`: on the meta device, nothing allocated)."""
    from opswap.ops import OpError, check_op, get_op

    table = model_positions(model, num_classes)[1]
    names = [c if isinstance(c, str) else c.get("name") for c in (items or [])] if items not in (None, ["all"]) else []
    for i, cand in enumerate(candidates):
        if cand.family == "baseline":
            continue
        for index in positions:
            p = table[index - 1]
            if get_op(cand.family).same_shape_only and (p.c_in != p.c_out or p.stride != 1):
                continue  # skipped there, with the reason (expansion)
            try:
                check_op(cand.name, p.c_in, p.c_out, p.stride)
            except OpError as err:
                where = f"candidates[{names.index(cand.name) if cand.name in names else i}]"
                problems.add(where, f"{err} (position {index})")
                break


def _positions(problems: Problems, value, model: str, num_classes: int) -> tuple[int, ...]:
    available = [p.index for p in model_positions(model, num_classes)[1]]
    if value == "all":
        return tuple(available)
    if isinstance(value, str):
        problems.add("positions", f'{value!r} is not allowed; write "all" or a list such as [1, 7, 18]')
        return ()
    span = f"1..{max(available)}" if available else "none (this model has no substitutable blocks)"
    bad = [v for v in value if v not in available]
    if bad:
        problems.add("positions", f"{', '.join(map(repr, bad))} not valid for {model}; positions are {span}")
    elif len(set(value)) != len(value):
        problems.add("positions", f"{value} repeats a position; list each once")
    elif not value:
        problems.add("positions", f'the list is empty; give positions in {span} or "all"')
    return tuple(v for v in value if v in available)


def _method_data(problems: Problems, where: str, settings: dict, f: StudyFile, info, num_classes: int) -> None:
    """A method's dataset (its own or the study's): readable, of the method's class count and image size."""
    own = "dataset" in settings or "data" in settings
    dataset = settings.get("dataset", f.dataset)
    if own:
        if dataset not in DATASETS:
            problems.add(f"{where}.dataset", f"unknown dataset {dataset!r}.{_closest(dataset, DATASETS)} "
                                             f"Allowed: {', '.join(DATASETS)}")
            return
        data = settings.get("data", f.data)  # as the trials get it
        if "data" in settings:
            _path(problems, f"{where}.data", data, "dataset root", parent_ok=dataset in ("cifar10", "cifar100"))
            if problems.has(f"{where}.data"):
                return
        if dataset in ("npz", "folder") and data is None:
            problems.add(f"{where}.data", f"dataset {dataset!r} needs its root: data = \"path/to/...\"")
            return
        info = _dataset_info(problems, f"{where}.data", dataset, data)
    if "num_classes" in settings:
        _num_classes(problems, f"{where}.num_classes", settings["num_classes"], dataset, info)
    elif own:
        settings["num_classes"] = _num_classes(problems, f"{where}.num_classes", None, dataset, info)
    if info is not None and settings.get("kind", "train") != "traditional":  # features work at any size
        _image_size_ok(problems, f"{where}.data" if own else "data", info)


# The type of each [[methods]] key (the value checks follow in _methods and in the trial spec).
_METHOD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), 'a string: "train" or "traditional"'), "model": ((str,), 'a model name, e.g. "tf-cnn"'),
    "dataset": ((str,), "a dataset name"), "data": ((str,), "a path"), "num_classes": ((int,), "an integer"),
    "position": ((int,), "a 1-based position"), "op": ((str,), "an op name"), "init": ((str,), "an init name"),
    "epochs": ((int,), "a positive integer"), "sparsity": ((int, float), "a fraction in [0, 1)"),
    "prune": ((str,), "a prune method"), "prune_options": ((dict,), "a table, e.g. { period = 100 }"),
    "train": ((dict,), "a table of [train] settings, e.g. { lr = 0.05 }"),
    "distill": ((dict,), "a table of [distill] settings"),
}


def _method_value_ok(key: str, value: Any) -> bool:
    types = _METHOD_TYPES.get(key, ((object,), ""))[0]
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _methods(problems: Problems, items: list[dict], f: StudyFile, info, num_classes: int) -> tuple[Method, ...]:
    """The [[methods]] tables, checked; a method with its own dataset gets that dataset's class count."""
    out, reported = [], set()  # [train] problems said once over the methods
    for i, item in enumerate(items):
        where = f"methods[{i}]"
        if not isinstance(item.get("name"), str):
            problems.add(where, 'each [[methods]] table needs name = "<label>" and settings such as model = "tf-cnn"')
            continue
        settings = {k: v for k, v in item.items() if k != "name"}
        for key in list(settings):
            if key not in _METHOD_KEYS:
                problems.add(f"{where}.{key}", f"unknown key.{_closest(key, _METHOD_KEYS)} "
                             f"Allowed keys in [[methods]]: {', '.join(sorted(_METHOD_KEYS))}")
            elif not _method_value_ok(key, settings[key]):
                problems.add(f"{where}.{key}", f"{settings[key]!r} ({type(settings[key]).__name__}) has the wrong "
                                               f"type; expected {_METHOD_TYPES[key][1]}")
                settings.pop(key)  # checked no further
        own = settings.get("train") if isinstance(settings.get("train"), dict) else {}
        epochs = settings.get("epochs")
        check_table(problems, f"{where}.train", own, "train", [epochs] if isinstance(epochs, int) else f.epochs,
                    base=f.train if isinstance(f.train, dict) else {}, reported=reported)
        if settings.get("kind", "train") not in ("train", "traditional"):
            problems.add(f"{where}.kind", f"{settings['kind']!r} is not allowed; use \"train\" or \"traditional\"")
        if "model" in settings:
            _model_ok(problems, f"{where}.model", settings["model"])
        sp = settings.get("sparsity", 0.0)
        if isinstance(sp, bool) or not isinstance(sp, (int, float)) or not 0.0 <= sp < 1.0:
            problems.add(f"{where}.sparsity", f"{sp!r} is outside [0, 1)")
        if settings.get("prune", "none") not in PRUNE_METHODS:
            problems.add(f"{where}.prune", f"{settings['prune']!r} is not a prune method; allowed: {', '.join(PRUNE_METHODS)}")
        elif "prune_options" in settings:
            _prune_options(problems, f"{where}.prune_options", settings.get("prune", "none"), settings["prune_options"])
        _method_data(problems, where, settings, f, info, num_classes)
        if any(m.name == item["name"] for m in out):
            problems.add(where, f"method name {item['name']!r} is used twice")
        out.append(Method(item["name"], settings))
    if not out and not problems.items:
        problems.add("methods", "the list is empty; add [[methods]] tables")
    return tuple(out)
