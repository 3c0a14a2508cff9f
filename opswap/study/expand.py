"""Study expansion: a `Study` → the trials it runs, each identified by a hash of its settings.

A substitution study crosses positions × candidates × init × seeds × epochs × sparsity ×
data fractions (the grid of the operation-substitution paper, Table 2/3), adds the baseline
network for each seed and budget, and lists the pairs that cannot be built (identity where the
shape changes) as skipped. A methods study crosses its methods with data fractions, seeds and
epochs (the method-comparison histogram of the dynamic-pruning paper).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from opswap.distill.engine import DistillConfig
from opswap.run.spec import TrialSpec, model_positions
from opswap.study.schema import Study

__all__ = ["Trial", "Skipped", "Expansion", "expand_study", "teacher_spec", "teacher_ref"]


@dataclass(frozen=True)
class Trial:
    """One run of a study: its id (hash of the spec's settings), its spec and a readable label."""

    trial_id: str
    spec: TrialSpec = field(hash=False, compare=False)
    label: str = ""

    @property
    def settings(self) -> dict[str, Any]:
        """The canonical settings (what the record stores); a stand-in trial's plain dict as it is."""
        return self.spec.to_settings() if isinstance(self.spec, TrialSpec) else dict(self.spec)


@dataclass(frozen=True)
class Skipped:
    """A (position, op) pair the study names but the model cannot take, and why."""

    position: int
    op: str
    reason: str


@dataclass(frozen=True)
class Expansion:
    """The trials of a study (in a stable order) and its skipped pairs."""

    trials: tuple[Trial, ...]
    skipped: tuple[Skipped, ...] = ()


def _trial(settings: dict[str, Any], label: str) -> Trial:
    spec = TrialSpec.create(**settings)
    return Trial(spec.trial_id, spec, label)


def _common(study: Study) -> dict[str, Any]:
    return {"model": study.model, "dataset": study.dataset, "data": study.data,
            "num_classes": study.num_classes, "train": dict(study.train)}


def teacher_spec(study: Study) -> TrialSpec:
    """The study's teacher: the baseline network from scratch, weights saved (no KD from itself)."""
    common = _common(study)
    if common["train"].get("kd_weight", 0) > 0:
        common["train"] = {k: v for k, v in common["train"].items() if k not in ("kd_weight", "kd_temperature")}
    return TrialSpec.create(**common, position=None, op="baseline", init="scratch",
                            seed=study.teacher.seed, epochs=study.teacher.epochs, save_weights=True)


def teacher_ref(study: Study) -> str | None:
    """What a trial initialised from the teacher depends on: the teacher's settings or file.

    It is part of those trials' settings, so a different teacher gives different trial ids and
    a rerun never mixes trials of two teachers.
    """
    if not study.needs_teacher:
        return None
    if study.teacher.checkpoint is not None:
        from opswap.run.spec import file_identity

        return file_identity("checkpoint", study.teacher.checkpoint)
    return f"trained:{teacher_spec(study).trial_id}"


def _fmt_sparsity(s: float, prune: str) -> str:
    return f" {prune}@{s:g}" if s > 0 else ""


def _substitution(study: Study) -> Expansion:
    from opswap.substitution import valid_ops

    model, table = model_positions(study.model, study.num_classes)
    shapes = {p.index: p for p in table}
    names = [c.name for c in study.candidates if c.family != "baseline"]
    fits = {pos: set(valid_ops(model, pos, names)) for pos in study.positions}
    skipped = [Skipped(pos, name, f"{name} cannot change the shape; position {pos} maps "
                       f"{shapes[pos].c_in}→{shapes[pos].c_out} channels with stride {shapes[pos].stride}")
               for pos in study.positions for name in names if name not in fits[pos]]
    distill = DistillConfig(**study.distill).to_dict()
    teacher = teacher_ref(study)
    trials: list[Trial] = []
    grid = itertools.product(study.seeds, study.epochs, study.sparsity, study.data_fraction)
    for seed, epochs, sparsity, fraction in grid:
        base = {**_common(study), "seed": seed, "epochs": epochs, "sparsity": sparsity,
                "prune": study.prune if sparsity > 0 else "none", "data_fraction": fraction,
                "prune_options": dict(study.prune_options) if sparsity > 0 else {}}
        if sparsity > 0 or fraction < 1.0:
            suffix = f"{_fmt_sparsity(sparsity, study.prune)}{f' data={fraction:g}' if fraction < 1 else ''}"
        else:
            suffix = ""
        for init in study.init:
            # The unmodified network under the same budget: from the teacher, or from scratch.
            base_init = "scratch" if init == "scratch" else "teacher"
            ref = None if base_init == "scratch" else teacher
            trials.append(_trial({**base, "position": None, "op": "baseline", "init": base_init, "teacher": ref},
                                 f"baseline {base_init} seed={seed} epochs={epochs}{suffix}"))
        for pos in study.positions:
            for name in names:
                if name not in fits[pos]:
                    continue
                for init in study.init:
                    extra: dict[str, Any] = {"distill": distill} if init == "lana" else {}
                    if init != "scratch":
                        extra["teacher"] = teacher
                    trials.append(_trial({**base, "position": pos, "op": name, "init": init, **extra},
                                         f"p{pos} {name} {init} seed={seed} epochs={epochs}{suffix}"))
    return Expansion(_unique(trials), tuple(skipped))


def _methods(study: Study) -> Expansion:
    trials = []
    for method in study.methods:
        for fraction, seed, epochs in itertools.product(study.data_fraction, study.seeds, study.epochs):
            settings = {"model": study.model or "tf-cnn", "dataset": study.dataset, "data": study.data,
                        "num_classes": study.num_classes, "position": None, "op": "baseline",
                        "init": "scratch", "seed": seed, "epochs": epochs, "data_fraction": fraction}
            overrides = dict(method.settings)
            settings["train"] = {**study.train, **overrides.pop("train", {})}
            settings.update(overrides)
            if settings.get("kind") == "traditional":
                settings["train"] = {}
            # The method's label travels in the record, so tables and figures can name it.
            trials.append(_trial({**settings, "method": method.name},
                                 f"{method.name} data={fraction:g} seed={seed} epochs={epochs}"))
    return Expansion(_unique(trials))


def _unique(trials: list[Trial]) -> tuple[Trial, ...]:
    seen: dict[str, Trial] = {}
    for t in trials:
        seen.setdefault(t.trial_id, t)
    return tuple(seen.values())


def _assembly(study: Study, results_dir) -> Expansion:
    from opswap.study.assembly import assembly_trials

    items = assembly_trials(study, results_dir, base=_common(study), teacher=teacher_ref(study),
                            distill=DistillConfig(**study.distill).to_dict())
    return Expansion(_unique([_trial(settings, label) for settings, label in items]))


def expand_study(study: Study, results_dir=None) -> Expansion:
    """The trials of a study, in a stable order, and the pairs it skips.

    An assemble study's trials beyond the teacher fine-tuned come from its plan in `results_dir`
    (`opswap.study.assembly`); without one they are not known yet.
    """
    if study.kind == "assemble":
        return _assembly(study, results_dir)
    return _methods(study) if study.kind == "methods" else _substitution(study)
