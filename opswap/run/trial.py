"""One run, from a `TrialSpec` to its record: the path shared by `opswap train` and every study trial.

A trial builds the network (from scratch, or the teacher with a candidate at one position,
initialised LANA-style from the weight bank or at random, or the teacher with bank entries at
several positions: an assembled network), optionally makes it sparse (DSR,
Mostafa & Wang 2019), trains it with `opswap.training.train`, measures it and returns one record
(docs/records.md). Failures become records too: status `failed` with a one-line reason, or
`diverged`. The caller writes the record (`opswap.run.record.write_record`), once.
"""
from __future__ import annotations

import functools
import logging
import time
import traceback
from pathlib import Path

from opswap.run.record import json_safe, new_record, now
from opswap.run.spec import TrialSpec

log = logging.getLogger(__name__)

__all__ = ["run_trial", "check_inputs", "check_safetensors", "assembled_model"]


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str | None, val_fraction: float, train_fraction: float, seed: int):
    from opswap.data import load_dataset

    return load_dataset(name, root, val_fraction=val_fraction, train_fraction=train_fraction, seed=seed)


def _error_text(err: BaseException) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-3:]).strip()


def check_inputs(spec: TrialSpec, *, teacher: str | None = None, bank: str | None = None) -> None:
    """Refuse, before any work, a trial whose teacher or bank is missing or unreadable."""
    needs_teacher = spec.kind == "train" and (spec.init != "scratch" or spec.train.kd_weight > 0)
    if needs_teacher and teacher is None:
        why = f"init {spec.init!r}" if spec.init != "scratch" else "train.kd_weight > 0"
        raise ValueError(f"{why} needs a teacher checkpoint (safetensors); none was given")
    if spec.kind == "train" and spec.init == "lana" and (spec.position is not None or spec.assignment) \
            and bank is None:
        raise ValueError("init 'lana' needs a weight bank (opswap distill writes one); none was given")
    if needs_teacher:
        check_safetensors(teacher, "teacher checkpoint")
    if spec.init == "lana" and bank is not None:
        check_safetensors(bank, "weight bank")


def check_safetensors(path, what: str) -> None:
    """ValueError naming `path` unless it is a readable safetensors file (only its header is read)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; expected a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # safetensors raises its own error types for a foreign file
        raise ValueError(f"{what} {str(path)!r} is not a safetensors file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'unreadable header'})") from None


def _build(spec: TrialSpec, num_classes: int, teacher: str | None, bank: str | None):
    """The network to train and the metrics its initialisation yields."""
    from opswap.models import build_model
    from opswap.substitution import swap
    from opswap.training import load_weights

    extra = {"distill_loss": None, "replace1_acc": None}
    swapped = spec.position is not None and spec.op != "baseline"
    if spec.init == "scratch":
        model = build_model(spec.model, num_classes=num_classes)
        return (swap(model, {spec.position: spec.op}) if swapped else model), extra
    base = load_weights(build_model(spec.model, num_classes=num_classes), teacher)
    if spec.assignment is not None:
        return assembled_model(base, bank, spec.assignment), extra
    if spec.init == "teacher" or spec.position is None:
        return base, extra
    if spec.init == "random":
        return swap(base, {spec.position: spec.op}), extra
    from opswap.distill import WeightBank, substituted_model

    weights = WeightBank.load(bank)
    entry = weights.entry(spec.position, spec.op)
    extra = {"distill_loss": entry.distill_loss, "replace1_acc": entry.replace1_acc}
    return substituted_model(base, weights, spec.position, spec.op), extra


def assembled_model(teacher, bank, assignment):
    """The teacher with the weight bank's entry at every (position, op) of `assignment` (LANA phase 2)."""
    from opswap.distill import WeightBank
    from opswap.ops import create_op
    from opswap.substitution import swap

    weights = bank if isinstance(bank, WeightBank) else WeightBank.load(bank)
    weights.check_teacher(teacher)
    modules = {}
    for position, op in assignment:
        entry = weights.entry(position, op)
        module = create_op(entry.op, entry.c_in, entry.c_out, entry.stride)
        module.load_state_dict(entry.state_dict)
        modules[position] = module
    return swap(teacher, modules) if modules else teacher


def _sparsify(model, spec: TrialSpec, total_steps: int):
    """Make the swapped op (or the whole model) sparse and build its pruner."""
    from opswap import sparse
    from opswap.substitution import positions

    sparsity = spec.prune.sparsity
    options = dict(spec.prune.options)
    if spec.prune.method in ("dsr", "channel"):
        options.setdefault("seed", spec.seed)  # regrowth follows the trial's seed
    if spec.prune.method == "channel":
        # Whole channels of the dense layers: the swapped block's internal channels, or the model's.
        import torch

        if spec.position:
            options.setdefault("scope", positions(model)[spec.position - 1].path)
        return sparse.make_pruner("channel", model, sparsity, total_steps,
                                  example_input=torch.randn(2, 3, 32, 32), **options)
    # Fresh weights (scratch, or a random candidate) are rescaled by 1/sqrt(1 - s) to keep
    # activations at the dense scale; weights from a teacher or a weight bank are left as they are.
    rescale = spec.init in ("scratch", "random")
    if spec.position:
        path = positions(model)[spec.position - 1].path
        block = model.get_submodule(path)
        converted = sparse.sparsify(block, sparsity, seed=spec.seed, rescale=rescale)
        if converted is not block:
            model.set_submodule(path, converted)
    else:
        sparse.sparsify(model, sparsity, seed=spec.seed, rescale=rescale)
    return sparse.make_pruner(spec.prune.method, model, sparsity, total_steps, **options)


def run_trial(spec: TrialSpec, *, trial_id: str | None = None, study: str = "train", teacher=None, bank=None,
              device=None, progress: bool = False, attempt: int = 1, weights_path=None,
              checkpoint_path=None) -> dict:
    """Run one trial and return its record (not written: the caller writes it once).

    `teacher` and `bank` are paths (a safetensors checkpoint, a weight bank); with
    `spec.save_weights` the trained weights go to `weights_path`. With `checkpoint_path` the
    training is resumable: checkpointed after every epoch, resumed from the checkpoint when one
    is there, and stopped at the next step when a stop is requested (`opswap.run.stop`: a
    signal in a worker), which gives a record of status "preempted" without final measurements.
    """
    from opswap.training import resolve_device

    if isinstance(spec, dict):
        spec = TrialSpec.from_settings(spec)
    trial_id = trial_id or spec.trial_id
    device = resolve_device(device)
    record = new_record(spec.to_settings(), trial_id=trial_id, study=study, attempt=attempt, device=device)
    t0 = time.perf_counter()
    try:
        _run(record, spec, teacher, bank, device, progress, weights_path, checkpoint_path)
    except Exception as err:  # a trial never takes its runner down: the failure is the record
        record.update(status="failed", error=_error_text(err))
    # A resumed run's time includes the stretches before its pre-emptions (from its checkpoint).
    record["timing"].update(finished=now(), seconds=time.perf_counter() - t0 + record.pop("_prior_seconds", 0.0))
    return json_safe(record)  # what is returned is what is written: plain JSON, NaN as null


def _run(record, spec: TrialSpec, teacher, bank, device, progress, weights_path, checkpoint_path=None) -> None:
    data = _dataset(spec.dataset, spec.data, spec.val_fraction, spec.data_fraction, spec.seed)
    if spec.num_classes != data.num_classes:
        raise ValueError(f"settings say num_classes={spec.num_classes} but dataset "
                         f"{spec.dataset!r} has {data.num_classes} classes")
    if spec.kind == "traditional":
        from opswap.methods.traditional import fit_evaluate

        record["metrics"] = fit_evaluate(data, seed=spec.seed)
        record["status"] = "ok"
        return
    import torch

    from opswap.models import INPUT_SIZE, check_image_size
    from opswap.substitution import complexity, positions
    from opswap.training import load_weights, save_weights, train

    check_image_size(tuple(data.x_train.shape[2:]), f"dataset {spec.dataset!r}")
    check_inputs(spec, teacher=teacher, bank=bank)
    torch.manual_seed(spec.seed)  # fresh weights (scratch, random init) follow the seed
    model, extra = _build(spec, data.num_classes, teacher, bank)
    params, macs = complexity(model, (1, *INPUT_SIZE))
    pos = positions(model)[spec.position - 1] if spec.position else None
    config = spec.train
    teacher_model = None
    if config.kd_weight > 0:
        teacher_model = load_weights(_fresh(spec, data.num_classes), teacher)
    pruner = None
    if spec.prune.active:
        steps = config.epochs * -(-len(data.y_train) // config.batch_size)
        pruner = _sparsify(model, spec, steps)
    resumable = {}
    if checkpoint_path is not None:
        from opswap.run import stop

        resumable = {"checkpoint": checkpoint_path, "resume": True, "should_stop": stop.stop_requested}
    result = train(model, data, config, device=device, teacher=teacher_model, pruner=pruner,
                   progress=progress, eval_split="val" if data.x_val is not None else "test", **resumable)
    if result.prior_seconds:
        record["_prior_seconds"] = result.prior_seconds
    if result.status == "preempted":  # resumes from the checkpoint; measured when it finishes
        from opswap.run.stop import stop_reason

        reason = stop_reason()
        error = result.error.replace("pre-empted", f"pre-empted ({reason})", 1) if reason else result.error
        record.update(status="preempted", error=error, history=result.history,
                      metrics={"params": params, "macs": macs, "precision": result.precision})
        return
    metrics = {**result.metrics, "params": params, "macs": macs, "precision": result.precision,
               "op_params_count": pos.params if pos else None, "op_macs": pos.macs if pos else None}
    batch = spec.latency_batch_size
    # The network is trained: a measurement that fails now (out of memory at the latency batch,
    # a sparse kernel the device lacks) leaves its metrics null and says why, never discards
    # the training (a failed trial is run again from scratch).
    problems: list[str] = []
    metrics["latency_batch_size"] = batch or None
    for key, size, repeats in (("latency_ms_b1", 1, 20), ("latency_ms_batch", batch, 5)):
        if not batch:
            metrics.update({key: None, f"{key}_iqr": None})
            continue
        measure = functools.partial(_latency, model, key, size, repeats, device)
        _measure(metrics, problems, f"latency at batch {size}", measure, {key: None, f"{key}_iqr": None})
    if pruner is not None:
        from opswap.sparse import sparsity_report

        metrics.update(sparsity_report(model))
        if batch:
            _measure(metrics, problems, "deployed form", lambda: _deployed(model, batch, device, spec),
                     dict.fromkeys(DEPLOYED_KEYS))
    else:
        metrics.update(sparsity=0.0, layer_sparsity={}, nonzero_params=params, dense_bytes=4 * params,
                       csr_bytes=None)
    metrics.update(extra)
    if problems:
        metrics["measurement_error"] = "; ".join(problems)
    record.update(status=result.status, error=result.error, history=result.history, metrics=metrics)
    if spec.save_weights and weights_path is not None and result.status == "ok":
        save_weights(model, Path(weights_path), {"trial_id": record["trial_id"]})


def _measure(metrics: dict, problems: list[str], what: str, measure, when_failed: dict) -> None:
    """`metrics.update(measure())`; when it raises, `when_failed` instead and the error in `problems`."""
    try:
        metrics.update(measure())
    except Exception as err:  # noqa: BLE001 - any failure of a measurement is reported, not raised
        last = (traceback.format_exception_only(type(err), err)[-1]).strip()
        problems.append(f"{what}: {last}")
        log.warning("%s measurement failed (%s); the trained network's record is kept", what, last)
        metrics.update(when_failed)


def _latency(model, key: str, size: int, repeats: int, device) -> dict:
    """Median forward time (ms) of `model` at batch `size`, with its spread (IQR), as `key` and `key`_iqr."""
    from opswap.training import measure_latency

    measured = measure_latency(model, size, device=device, warmup=2, repeats=repeats, min_run_time=0.1)
    median = measured.get("median_ms") if isinstance(measured, dict) else getattr(measured, "median_ms", measured)
    iqr = measured.get("iqr_ms") if isinstance(measured, dict) else getattr(measured, "iqr_ms", None)
    return {key: float(median), f"{key}_iqr": None if iqr is None else float(iqr)}


DEPLOYED_KEYS = ("deployed_ms_b1", "dense_ms_b1", "deployed_ms_batch", "dense_ms_batch", "deployed_speedup_b1",
                 "deployed_speedup_batch", "deployed_bytes", "structured_bytes", "nm_bytes", "deployed_forms")


def _deployed(model, batch: int, device, spec: TrialSpec) -> dict:
    """The deployed form of a pruned model (chosen per layer by measurement) against dense."""
    from opswap.sparse.deploy import deployed_report

    nm = (spec.prune.options.get("n", 2), spec.prune.options.get("m", 4)) if spec.prune.method == "nm" else None
    report = deployed_report(model.eval(), batch_sizes=(1, batch), device=device, nm=nm, min_run_time=0.1)
    b1, bb = report["batches"][0], report["batches"][-1]
    return {"deployed_ms_b1": b1["deployed_ms"], "dense_ms_b1": b1["dense_ms"],
            "deployed_ms_batch": bb["deployed_ms"], "dense_ms_batch": bb["dense_ms"],
            "deployed_speedup_b1": b1["speedup"], "deployed_speedup_batch": bb["speedup"],
            "deployed_bytes": bb["stored_bytes"], "structured_bytes": report.get("structured_bytes"),
            "nm_bytes": report.get("nm_bytes"), "deployed_forms": bb["forms"]}


def _fresh(spec: TrialSpec, num_classes: int):
    from opswap.models import build_model

    return build_model(spec.model, num_classes=num_classes)
