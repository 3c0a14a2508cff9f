"""Study files: TOML → a validated, frozen `Study` (DESIGN.md, "Studies, trials, results").

A study declares what to compare (model, dataset, positions × candidates, seeds, epoch
budgets, init, sparsity) and how to run it (teacher, distillation, workers, devices), in the
staged style of pycls/NASLib. The file's shape and types are a pydantic schema (strict: no
"25" for 25, no true for 1; unknown keys refused with the closest name); the [train] and
[distill] tables are checked against `TrainConfig` and `DistillConfig` themselves, and what
needs the model, the op registry or the file system is checked after. Every problem is
reported at once, each naming the file, the dotted key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator

from opswap.data import DATASETS
from opswap.distill.engine import DistillConfig
from opswap.sparse.methods import PRUNE_METHODS
from opswap.track import SINKS
from opswap.training import MAX_SEED, TrainConfig

__all__ = ["StudyError", "Candidate", "Method", "TeacherConfig", "RunConfig", "PredictConfig", "SlurmConfig", "SLURM_CLUSTERS", "Study", "StudyFile",
           "parse_overrides", "apply_override", "check_table", "STUDY_KINDS", "BACKENDS", "STUDY_INITS"]

StudyKind = Literal["substitution", "methods", "assemble"]
Backend = Literal["loky", "dask", "slurm"]
StudyInit = Literal["lana", "random", "scratch"]  # the inits a study compares (teacher: its baselines)
STUDY_KINDS: tuple[str, ...] = get_args(StudyKind)
BACKENDS: tuple[str, ...] = get_args(Backend)
STUDY_INITS: tuple[str, ...] = get_args(StudyInit)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_METHOD_KEYS = ("kind", "model", "dataset", "data", "num_classes", "position", "op", "init", "epochs",
                "sparsity", "prune", "prune_options", "train", "distill")


class StudyError(ValueError):
    """A study file that cannot run; the message lists every problem found."""


# -- the validated study ------------------------------------------------------------------------

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


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TeacherConfig(_Table):
    """How the study's teacher is obtained: trained here, or a checkpoint file."""

    train: bool = True
    epochs: Annotated[int, Field(gt=0)] = 200
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    checkpoint: str | None = None


SLURM_CLUSTERS = ("slurm", "local")  # submitit executors: a real SLURM cluster, or local processes (trying it out)


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class SlurmConfig(_Table):
    """The [run.slurm] table: one SLURM job array of workers (submitit), each task's resources."""

    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_task: Annotated[int, Field(ge=0)] = 1  # GPUs of one array task (one node)
    cpus_per_task: Annotated[int, Field(ge=1)] = 8  # CPUs of one worker process
    mem_gb: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] | None = None  # memory of one array task
    time_min: Annotated[int, Field(gt=0)] = 240  # time limit of one array task
    array: Annotated[int, Field(ge=1)] = 4  # array tasks (each one job on one node)
    parallel: Annotated[int, Field(ge=1)] | None = None  # at most this many array tasks at once (sbatch %N)
    signal_delay_s: Annotated[int, Field(ge=0)] = 120  # stop signal this long before the time limit
    setup: Annotated[tuple[str, ...], BeforeValidator(_tupled)] = ()  # shell lines before the worker starts
    extra: dict[str, str | int | bool] = {}  # further sbatch options: { constraint = "a100", mail-type = "END" }

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        if value not in SLURM_CLUSTERS:
            raise ValueError(f"unknown cluster {value!r}.{_closest(value, SLURM_CLUSTERS)} "
                             f"Allowed: {', '.join(SLURM_CLUSTERS)}")
        return value


class RunConfig(_Table):
    """Execution settings: workers, backend (loky, dask, slurm), devices, retries, tracking."""

    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    backend: str = "loky"
    address: str | None = None
    devices: Literal["auto", "cpu", "cuda"] | tuple[Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps)$")], ...] = "auto"
    retries: Annotated[int, Field(ge=0)] = 1
    stale_after: Annotated[float, Field(gt=0)] = 120.0
    order: Literal["plan", "promising", "informative"] = "plan"  # which pending trials run first
    trials_per_device: Annotated[int, Field(ge=1)] = 1  # trials sharing one GPU at a time
    track: tuple[str, ...] = ()  # mirror every record into these sinks: "mlflow", "tensorboard"
    tracking_uri: str | None = None  # MLflow: a server or database; default <results>/mlruns
    slurm: SlurmConfig = SlurmConfig()

    @field_validator("track")
    @classmethod
    def _track(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in SINKS:
                raise ValueError(f"unknown tracking sink {name!r}.{_closest(name, SINKS)} Allowed: {', '.join(SINKS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} names a sink twice; list each once")
        return value

    @field_validator("slurm", mode="before")
    @classmethod
    def _slurm(cls, value: Any) -> Any:
        if isinstance(value, SlurmConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{value!r} is not a table; write [run.slurm] with partition = \"gpu\", time_min = 240, ...")
        try:
            return SlurmConfig.model_validate(dict(value))
        except ValidationError as err:
            problems = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
                if e["type"] == "extra_forbidden":
                    names = list(SlurmConfig.model_fields)
                    problems.append(f"{key}: unknown key.{_closest(key, names)} Allowed keys: {', '.join(names)}")
                else:
                    problems.append(f"{key}: {e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}")
            raise ValueError("; ".join(dict.fromkeys(problems))) from None

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}.{_closest(value, BACKENDS)} Allowed: {', '.join(BACKENDS)}")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z]+://", value):
            raise ValueError(f"{value!r} is not a scheduler address; write e.g. \"tcp://10.0.0.1:8786\"")
        return value


class PredictConfig(_Table):
    """The cheap-features stage and the predictability analysis (docs/predictability.md)."""

    features: bool = True  # compute the features stage after the bank
    proxies: tuple[str, ...] = ("synflow", "naswot", "grad_norm", "snip", "fisher")
    init: tuple[Literal["lana", "random"], ...] = ("lana", "random")
    batches: Annotated[int, Field(ge=1)] = 2  # batches of training images the proxies see
    batch_size: Annotated[int, Field(ge=2)] = 64
    heldout_batches: Annotated[int, Field(ge=0)] = 4  # held-out batches for the distillation loss; 0: skip
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    correction: Literal["holm", "bh"] = "holm"  # over the many predictors of a CV scheme

    @field_validator("proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from opswap.analysis.proxies import PROXIES

        for name in value:
            if name not in PROXIES:
                raise ValueError(f"unknown proxy {name!r}.{_closest(name, PROXIES)} Allowed: {', '.join(PROXIES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} repeats a proxy; list each once")
        return value


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
    predict: PredictConfig = PredictConfig()
    methods: tuple[Method, ...] = ()
    reference: str | None = None   # methods studies: the method the others are compared with
    overrides: tuple[tuple[str, Any], ...] = ()   # --set key=value pairs applied over the file
    # kind = "assemble" (opswap.study.assembly): budgets (canonical text), objectives, k best
    # solutions differing in >= min_diff positions, and the baselines at the same budget.
    budgets: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()
    k: int = 1
    min_diff: int = 1
    random_picks: int = 5
    baselines: tuple[str, ...] = ()
    scores: str | None = None       # objective "predicted": `opswap predict --all` output (CSV or JSON)
    score_column: str = "best"

    @property
    def needs_teacher(self) -> bool:
        """Whether some trial starts from the teacher (init lana, random or teacher)."""
        return self.kind == "assemble" or (self.kind == "substitution" and any(i != "scratch" for i in self.init))


# -- the file's schema ----------------------------------------------------------------------------

def _listed(value: Any) -> Any:
    """Lists also accept one value: `epochs = 25` is `epochs = [25]`."""
    return value if isinstance(value, list) else [value]


_Listed = BeforeValidator(_listed)
_Number = int | float


class StudyFile(_Table):
    """The keys a study file may hold, with their types (ranges and names are checked after)."""

    name: str
    description: str = ""
    kind: str | None = None
    model: str | None = None
    dataset: str
    data: str | None = None
    num_classes: int | None = None
    data_fraction: Annotated[list[_Number], _Listed] = [1.0]
    positions: Annotated[list[int], _Listed] | str = "all"
    candidates: list[str | dict[str, Any]] | None = None
    seeds: Annotated[list[int], _Listed] = [0]
    epochs: Annotated[list[int], _Listed] = [1]
    init: Annotated[list[str], _Listed] = ["lana"]
    sparsity: Annotated[list[_Number], _Listed] = [0.0]
    prune: str | None = None
    prune_options: dict[str, Any] = {}
    train: dict[str, Any] = {}
    distill: dict[str, Any] = {}
    teacher: dict[str, Any] = {}
    run: dict[str, Any] = {}
    predict: dict[str, Any] = {}
    methods: list[dict[str, Any]] = []
    reference: str | None = None
    budgets: list[str | dict[str, Any]] | str | dict[str, Any] | None = None
    objective: Annotated[list[str], _Listed] | None = None
    k: int | None = None
    min_diff: int | None = None
    random_picks: int | None = None
    baselines: Annotated[list[str], _Listed] | None = None
    scores: str | None = None
    score_column: str | None = None


_EXPECTED = {
    "name": 'a name, e.g. name = "quickstart"', "description": "a string",
    "kind": f"one of {', '.join(STUDY_KINDS)}", "model": 'a model name, e.g. "wrn-40-2" or "tf-cnn"',
    "dataset": f"one of {', '.join(DATASETS)}", "data": "the dataset root or file (a path)",
    "num_classes": "a positive integer", "data_fraction": "fractions in (0, 1], e.g. [0.25, 1.0]",
    "positions": 'a list of 1-based positions, or "all"',
    "candidates": 'op names or tables, e.g. ["identity", "mbconv"] or [[candidates]] name = "mbconv", e = 3',
    "seeds": "a list of non-negative integers, e.g. [0, 1, 2]", "epochs": "a list of positive integers, e.g. [25, 50]",
    "init": f"a list drawn from {', '.join(STUDY_INITS)}", "sparsity": "a list of fractions in [0, 1), e.g. [0.0, 0.9]",
    "prune": f"one of {', '.join(PRUNE_METHODS)}", "prune_options": "a [prune_options] table, e.g. period = 100",
    "train": "a [train] table of TrainConfig fields", "distill": "a [distill] table of DistillConfig fields",
    "teacher": "a [teacher] table: train, epochs, seed, checkpoint",
    "run": "a [run] table: " + ", ".join(RunConfig.model_fields),
    "predict": "a [predict] table: " + ", ".join(PredictConfig.model_fields), "methods": '[[methods]] tables, each with name = "..."',
    "reference": 'the name of the method the others are compared with, e.g. reference = "dense"',
    "budgets": 'assemble studies: budgets, e.g. ["macs=0.5", "macs=0.7"] or [{ macs = 0.5, latency = 0.8 }]',
    "objective": 'assemble studies: one objective or a list, e.g. "replace1" or ["replace1", "distill_loss"]',
    "k": "assemble studies: how many best solutions per budget, a positive integer",
    "min_diff": "assemble studies: positions each further solution differs in, a positive integer",
    "random_picks": "assemble studies: random feasible picks per budget, a non-negative integer",
    "baselines": 'assemble studies: baselines at the same budget, drawn from "random", "greedy", "uniform"',
    "scores": 'assemble studies, objective "predicted": a file of cells, e.g. scores = "scores.csv" '
              "(`opswap predict STUDY --all --format csv`)",
    "score_column": 'assemble studies, objective "predicted": "best", "predicted_delta" or "measured_delta"',
}


def _config_model(cls: type, skip: Iterable[str] = ()) -> type[BaseModel]:
    """A strict pydantic model of a settings dataclass: its field names and annotated types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls) if f.name not in skip}
    return create_model(f"{cls.__name__}Table", __config__=ConfigDict(extra="forbid", strict=True), **fields)


_TRAIN_TABLE = _config_model(TrainConfig, skip=("epochs", "seed"))
_DISTILL_TABLE = _config_model(DistillConfig)


def _closest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _table_hint(key: str) -> str:
    """For a top-level key that belongs in a table (`lr` is `train.lr`): where it goes."""
    for table, model in (("train", _TRAIN_TABLE), ("distill", _DISTILL_TABLE)):
        if key in model.model_fields:
            return f" {key!r} is a [{table}] setting: write it under [{table}] (or --set {table}.{key}=...)."
    return ""


class Problems:
    """Collects problems as `file: key: what was wrong; what is allowed`."""

    def __init__(self, source: str):
        self.source, self.items, self.settled = source, [], set()

    def add(self, key: str, message: str) -> None:
        top = key.split(".")[0].split("[")[0]
        if top in self.settled:  # its value was refused already; what follows from leaving it out is not news
            return
        item = f"{self.source}: {key}: {message}"
        if item not in self.items:  # e.g. several methods sharing the study's dataset
            self.items.append(item)

    def has(self, prefix: str) -> bool:
        return any(p.startswith(f"{self.source}: {prefix}") for p in self.items)

    def pydantic(self, err: ValidationError, where: str = "", raw: Mapping | None = None,
                 expected: Mapping[str, str] | None = None, fields: Iterable[str] = ()) -> None:
        """One problem per pydantic error, in opswap's words."""
        seen = set()
        for e in err.errors():
            loc = [str(p) for p in e["loc"] if not isinstance(p, int)]
            top = loc[0] if loc else ""
            key = where + top
            if key in seen:  # one message per key: a union reports each of its branches
                continue
            seen.add(key)
            value = raw.get(top, e.get("input")) if raw is not None and top in raw else e.get("input")
            allowed = (expected or {}).get(top)
            if e["type"] == "value_error":
                self.add(key, e["msg"].removeprefix("Value error, "))
            elif e["type"] == "extra_forbidden":
                names = sorted(fields)
                table = f" in [{where.rstrip('.')}]" if where else ""
                hint = _closest(top, names) or (_table_hint(top) if not where else "")
                self.add(key, f"unknown key.{hint} Allowed keys{table}: {', '.join(names)}")
            elif e["type"] == "missing":
                self.add(key, f"missing; {allowed or 'required'}")
            elif e["type"].endswith(("_type", "_parsing")) or e["type"] in ("literal_error", "union_tag_invalid"):
                self.add(key, f"{value!r} ({type(value).__name__}) has the wrong type; expected "
                         f"{allowed or e['msg'].lower()}")
            else:
                self.add(key, f"{value!r} is not allowed; {allowed or e['msg']}")

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            head = f"{n} problem{'s' if n > 1 else ''} in the study:"
            raise StudyError("\n  ".join([head] + self.items))


# -- loading ------------------------------------------------------------------------------------

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
        except tomllib.TOMLDecodeError as err:
            if raw.strip().startswith(("[", "{", '"', "'")):  # meant as a list, table or quoted string
                raise StudyError(f"{flag} {item!r}: {raw.strip()!r} is not a valid TOML value ({err}), "
                                 f"e.g. {example}") from None
            value = raw.strip()
        parsed.append((key, value))
    return parsed


def apply_override(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StudyError(f"--set {key}=...: {part!r} is not a table in the study")
    node[last] = value


def check_table(problems: Problems, key: str, table: dict, which: str, epochs: Iterable[int] = (), *,
                base: dict | None = None, base_key: str = "train", reported: set | None = None,
                check_values: bool = True) -> dict:
    """Check a [train] / [distill] table (or a method's) against its settings class.

    A [train] table is checked with each of `epochs` (the budgets it will run with: settings
    such as `warmup_epochs` are bounded by them); without any, with TrainConfig's default.
    A method's table is checked merged over the study's `base` table: a problem of a key the
    method does not set is the study's (`base_key`), said once over all methods (`reported`
    collects the fields already said). `check_values=False` checks types only.
    """
    model, cls = (_TRAIN_TABLE, TrainConfig) if which == "train" else (_DISTILL_TABLE, DistillConfig)
    if which == "train":
        for name in ("epochs", "seed"):
            if name in table:
                problems.add(f"{key}.{name}", f"set by the study's top-level {name}"
                             f"{'s' if name == 'seed' else ''} list, not in [train]")
        table = {k: v for k, v in table.items() if k not in ("epochs", "seed")}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        model.model_validate(values)
    except ValidationError as err:
        types = {name: _type_name(info.annotation) for name, info in model.model_fields.items()}
        problems.pydantic(err, where=f"{key}.", raw=table, expected=types, fields=model.model_fields)
        return {}
    if not check_values:
        return dict(table)
    if base is not None:
        values = {**{k: tuple(v) if isinstance(v, list) else v for k, v in base.items()
                     if k not in ("epochs", "seed")}, **values}
    budgets = sorted({e for e in epochs if isinstance(e, int) and not isinstance(e, bool) and e > 0})
    said = reported if reported is not None else set()
    for extra in ([{"epochs": e} for e in budgets] if which == "train" and budgets else [{}]):
        try:
            cls(**values, **extra)
        except (TypeError, ValueError) as err:
            name = re.match(r"train setting (\w+) = ", str(err))
            field = name[1] if name else None
            where = key if field is None or field in table or base is None else base_key
            if (where, field) in said:
                continue  # one problem per field (the smallest budget it fails with)
            said.add((where, field))
            note = f" (with epochs = {extra['epochs']}{f' of {key.rsplit(chr(46), 1)[0]}' if where != key else ''})" \
                if extra and "epochs=" in str(err) and (len(budgets) > 1 or where != key) else ""
            problems.add(f"{where}.{field}" if field else where, str(err) + note)
    return dict(table)


def _type_name(annotation: Any) -> str:
    """`int`, `float or None`, `tuple of float`: a field's type as a reader writes it."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is tuple:
        return f"a list of {_type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))
