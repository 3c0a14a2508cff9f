"""One run, from settings to record: the path shared by `opswap train` and every study trial.

A trial builds the network (from scratch, or the teacher with a candidate at one position,
initialised LANA-style from the weight bank or at random), optionally makes it sparse (DSR,
Mostafa & Wang 2019), trains it with `opswap.training.train`, measures it and writes one record
(docs/records.md). Failures become records too: status `failed` with the error, or `diverged`.
"""
from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import time
import traceback
from pathlib import Path

from opswap.records import json_safe, new_record, now, write_record
from opswap.training import TrainConfig, measure_latency, resolve_device, save_weights, train

INITS = ("scratch", "teacher", "lana", "random")
KINDS = ("train", "traditional")


def default_settings(**overrides) -> dict:
    """A complete, resolved settings dict (every key of docs/records.md), `overrides` applied."""
    train_keys = set(TrainConfig.__dataclass_fields__) - {"epochs", "seed"}
    train_over = dict(overrides.pop("train", None) or {})
    for key in list(overrides):  # flat training keys (lr=..., optimizer=...) belong to "train"
        if key in train_keys:
            train_over[key] = overrides.pop(key)
    settings = {"kind": "train", "model": "wrn-16-2", "dataset": "synthetic", "data": None,
                "num_classes": None, "data_fraction": 1.0, "val_fraction": 0.0, "position": None,
                "op": "baseline", "init": "scratch", "seed": 0, "epochs": 10, "sparsity": 0.0,
                "prune": "none", "prune_options": {}, "distill": {}, "latency_batch_size": 256,
                "save_weights": False, "teacher": None, "method": None}
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"unknown trial settings {sorted(unknown)}; allowed: {sorted(settings)} "
                         f"and the training settings {sorted(train_keys)}")
    settings.update(overrides)
    if settings["kind"] not in KINDS:
        raise ValueError(f"settings kind {settings['kind']!r} is invalid; allowed: {', '.join(KINDS)}")
    if settings["init"] not in INITS:
        raise ValueError(f"settings init {settings['init']!r} is invalid; allowed: {', '.join(INITS)}")
    if settings["num_classes"] is None:
        settings["num_classes"] = 100 if settings["dataset"] == "cifar100" else 10
    if settings["data"] is not None:
        settings["data"] = str(settings["data"])
    if not 0.0 <= float(settings["sparsity"]) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {settings['sparsity']}")
    if settings["sparsity"] > 0 and settings["prune"] == "none":
        settings["prune"] = "dsr"
    if settings["sparsity"] > 0:
        from opswap.sparse.pruning import check_prune_options

        check_prune_options(settings["prune"], settings["prune_options"])
    if settings["position"] is None and settings["op"] not in (None, "baseline"):
        raise ValueError(f"op {settings['op']!r} needs a position (1-based block index)")
    from opswap.ops import parse_op

    spec = parse_op(settings["op"] or "baseline")
    settings.update(op=spec.name, op_family=spec.family, op_params=spec.kwargs)
    config = TrainConfig(epochs=settings["epochs"], seed=settings["seed"], **train_over)
    settings["train"] = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "seed")}
    return settings


def trial_id_for(settings: dict) -> str:
    """12 hex characters of the SHA-256 of the settings' canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str | None, val_fraction: float, train_fraction: float, seed: int):
    from opswap.data import load_dataset

    return load_dataset(name, root, val_fraction=val_fraction, train_fraction=train_fraction, seed=seed)


def _error_text(err: BaseException) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-3:]).strip()


def _build(settings: dict, num_classes: int, teacher: str | None, bank: str | None):
    """The network to train and the metrics its initialisation yields."""
    import opswap
    from opswap.training import load_weights

    init, position, op = settings["init"], settings["position"], settings["op"]
    extra = {"distill_loss": None, "replace1_acc": None}
    if init == "scratch":
        model = opswap.build_model(settings["model"], num_classes=num_classes)
        return (opswap.swap(model, {position: op}) if position and op != "baseline" else model), extra
    if init == "teacher" and op != "baseline":
        raise ValueError(f"init 'teacher' trains the unmodified teacher; op {op!r} at position {position} "
                         "needs init 'lana' (weight bank) or 'random'")
    if teacher is None:
        raise ValueError(f"init {init!r} needs a teacher checkpoint (safetensors); none was given")
    base = load_weights(opswap.build_model(settings["model"], num_classes=num_classes), teacher)
    if init == "teacher" or position is None:
        return base, extra
    if init == "random":
        return opswap.swap(base, {position: op}), extra
    if bank is None:
        raise ValueError("init 'lana' needs a weight bank (opswap distill writes one); none was given")
    from opswap.distill import WeightBank, substituted_model

    weights = WeightBank.load(bank)
    entry = weights.entry(position, op)
    extra = {"distill_loss": entry.distill_loss, "replace1_acc": entry.replace1_acc}
    return substituted_model(base, weights, position, op), extra


def _sparsify(model, settings: dict, total_steps: int):
    """Make the swapped op (or the whole model) dynamic-sparse and build its pruner."""
    from opswap import sparse

    position = settings["position"]
    # Fresh weights (scratch, or a random candidate) are rescaled by 1/sqrt(1 - s) to keep
    # activations at the dense scale; weights from a teacher or a weight bank are left as they are.
    rescale = settings["init"] in ("scratch", "random")
    if position:
        import opswap

        path = opswap.positions(model)[position - 1].path
        block = model.get_submodule(path)
        converted = sparse.sparsify(block, settings["sparsity"], seed=settings["seed"], rescale=rescale)
        if converted is not block:
            model.set_submodule(path, converted)
    else:
        sparse.sparsify(model, settings["sparsity"], seed=settings["seed"], rescale=rescale)
    options = dict(settings.get("prune_options", {}))
    if settings["prune"] == "dsr":
        options.setdefault("seed", settings["seed"])  # regrowth follows the trial's seed
    return sparse.make_pruner(settings["prune"], model, settings["sparsity"], total_steps, **options)


def run_trial(settings: dict, *, trial_id: str | None = None, study: str = "train", out_dir=None,
              teacher=None, bank=None, device=None, progress: bool = False, attempt: int = 1) -> dict:
    """Run one trial and return its record; written to `out_dir/<trial_id>.json` when given."""
    trial_id = trial_id or trial_id_for(settings)
    device = resolve_device(device)
    record = new_record(settings, trial_id=trial_id, study=study, attempt=attempt, device=device)
    t0 = time.perf_counter()
    try:
        _run(record, settings, trial_id, out_dir, teacher, bank, device, progress)
    except Exception as err:  # a trial never takes its runner down: the failure is the record
        record.update(status="failed", error=_error_text(err))
    record["timing"].update(finished=now(), seconds=time.perf_counter() - t0)
    record = json_safe(record)  # what is returned is what is written: plain JSON, NaN as null
    if out_dir is not None:
        write_record(record, out_dir)
    return record


def _run(record, settings, trial_id, out_dir, teacher, bank, device, progress) -> None:
    import opswap

    data = _dataset(settings["dataset"], settings["data"], float(settings.get("val_fraction", 0.0)),
                    float(settings["data_fraction"]), int(settings["seed"]))
    if settings["num_classes"] not in (None, data.num_classes):
        raise ValueError(f"settings say num_classes={settings['num_classes']} but dataset "
                         f"{settings['dataset']!r} has {data.num_classes} classes")
    if settings["kind"] == "traditional":
        from opswap.analysis.traditional import fit_evaluate

        record["metrics"] = fit_evaluate(data, seed=settings["seed"])
        record["status"] = "ok"
        return
    import torch

    torch.manual_seed(int(settings["seed"]))  # fresh weights (scratch, random init) follow the seed
    model, extra = _build(settings, data.num_classes, teacher, bank)
    params, macs = opswap.complexity(model, (1, 3, 32, 32))
    position = settings["position"]
    pos = opswap.positions(model)[position - 1] if position else None
    config = TrainConfig(epochs=settings["epochs"], seed=settings["seed"], **settings["train"])
    teacher_model = None
    if config.kd_weight > 0:
        if teacher is None:
            raise ValueError("train.kd_weight > 0 needs a teacher checkpoint")
        from opswap.training import load_weights

        teacher_model = load_weights(opswap.build_model(settings["model"], num_classes=data.num_classes), teacher)
    pruner = None
    if settings["sparsity"] > 0:
        steps = config.epochs * -(-len(data.y_train) // config.batch_size)
        pruner = _sparsify(model, settings, steps)
    result = train(model, data, config, device=device, teacher=teacher_model, pruner=pruner,
                   progress=progress, eval_split="val" if data.x_val is not None else "test")
    metrics = {**result.metrics, "params": params, "macs": macs,
               "op_params_count": pos.params if pos else None, "op_macs": pos.macs if pos else None}
    batch = int(settings.get("latency_batch_size") or 0)
    metrics["latency_ms_b1"] = measure_latency(model, 1, device=device) if batch else None
    metrics["latency_ms_batch"] = measure_latency(model, batch, device=device, warmup=2, repeats=5) if batch else None
    metrics["latency_batch_size"] = batch or None
    if pruner is not None:
        from opswap.sparse import sparsity_report

        metrics.update(sparsity_report(model))
    else:
        metrics.update(sparsity=0.0, layer_sparsity={}, nonzero_params=params, dense_bytes=4 * params,
                       csr_bytes=None)
    metrics.update(extra)
    record.update(status=result.status, error=result.error, history=result.history, metrics=metrics)
    if settings.get("save_weights") and out_dir is not None and result.status == "ok":
        save_weights(model, Path(out_dir) / f"{trial_id}.safetensors", {"trial_id": trial_id})


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `opswap train`."""
    a = parser.add_argument
    a("--model", required=True, help="wrn-<depth>-<widen> (e.g. wrn-16-2) or tf-cnn")
    a("--dataset", required=True, choices=["cifar10", "cifar100", "synthetic", "npz", "folder"])
    a("--data", help="dataset root or file (npz: the .npz file; folder: a dir with train/ and test/)")
    a("--epochs", type=int, default=10)
    a("--optimizer", choices=["sgd", "adam"], default="sgd")
    a("--lr", type=float, help="learning rate (default: sgd 0.1, adam 1e-3)")
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, help="default: sgd 5e-4, adam 0")
    a("--schedule", choices=["cosine", "step", "onecycle", "constant"],
      help="default: sgd cosine, adam constant")
    a("--warmup-epochs", type=float, default=0.0)
    a("--label-smoothing", type=float, default=0.0)
    a("--batch-size", type=int, default=128)
    a("--normalize", choices=["standard", "unit"], default="standard",
      help="standard: per-dataset mean/std; unit: inputs in [0, 1]")
    a("--no-augment", action="store_true", help="no random crop / flip")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--seed", type=int, default=0)
    a("--val-fraction", type=float, default=0.0, help="hold out this share of train for validation")
    a("--data-fraction", type=float, default=1.0, help="train on this stratified share of train")
    a("--position", type=int, help="block position (1-based) to substitute")
    a("--op", default="baseline", help="candidate op at --position, e.g. mbconv_e6_k3")
    a("--init", choices=list(INITS), default="scratch")
    a("--teacher", help="teacher checkpoint (safetensors) for --init teacher|lana|random")
    a("--bank", help="weight bank from `opswap distill` for --init lana")
    a("--sparsity", type=float, default=0.0)
    a("--prune", choices=["dsr", "static", "gradual", "none"], default="none")
    a("--prune-option", action="append", default=[], metavar="KEY=VALUE",
      help="a setting of the prune method, e.g. period=50 (repeatable; see docs/sparsity.md)")
    a("--latency-batch-size", type=int, default=256, help="large batch for latency (0: skip latency)")
    a("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    a("--save-weights", action="store_true", help="also write the trained weights (safetensors)")
    a("--out", default="results/train", help="directory for the record (default results/train)")
    a("--study", help="study name in the record (default: the --out folder's name)")
    a("--no-progress", action="store_true")


def _check_request(args: argparse.Namespace) -> None:
    """Refuse what cannot run before anything is trained or written."""
    import opswap

    if args.position is not None:
        # The same checks as swap(): position range, op name, parameters, shape fit.
        opswap.swap(opswap.build_model(args.model), {args.position: args.op})
    if args.init != "scratch" and not args.teacher:
        raise ValueError(f"--init {args.init} needs --teacher (a teacher checkpoint, .safetensors)")
    if args.init == "lana" and not args.bank:
        raise ValueError("--init lana needs --bank (a weight bank written by `opswap distill`)")
    for flag, path in (("--teacher", args.teacher), ("--bank", args.bank)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    if args.data and args.dataset in ("npz", "folder") and not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")  # CIFAR roots download


def train_main(args: argparse.Namespace) -> int:
    """`opswap train`: one run, its record written under --out."""
    from opswap.study.config import parse_overrides

    settings = default_settings(
        model=args.model, dataset=args.dataset, data=args.data, epochs=args.epochs, seed=args.seed,
        val_fraction=args.val_fraction, data_fraction=args.data_fraction, position=args.position,
        op=args.op, init=args.init, sparsity=args.sparsity, prune=args.prune, save_weights=args.save_weights,
        prune_options=dict(parse_overrides(args.prune_option, "--prune-option", "--prune-option period=50")),
        latency_batch_size=args.latency_batch_size,
        train={"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
               "weight_decay": args.weight_decay, "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
               "label_smoothing": args.label_smoothing, "batch_size": args.batch_size,
               "normalize": args.normalize, "augment": not args.no_augment, "compile": args.compile})
    if args.dataset in ("npz", "folder") and not args.data:
        raise ValueError(f"--dataset {args.dataset} needs --data (the .npz file or image folder)")
    _check_request(args)
    out = Path(args.out)
    trial_id = trial_id_for(settings)
    record = run_trial(copy.deepcopy(settings), trial_id=trial_id, study=args.study or out.name, out_dir=out,
                       teacher=args.teacher, bank=args.bank, device=args.device, progress=not args.no_progress)
    for row in record["history"]:
        acc = row["test_acc"] if row["test_acc"] is not None else row["val_acc"]
        print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:5.2f}  "
              f"eval acc {acc if acc is not None else float('nan'):5.2f}  {row['seconds']:6.1f} s  "
              f"{row['images_per_s']:8.0f} img/s")
    m = record["metrics"]
    if record["status"] == "ok":
        print(f"{settings['model']} on {settings['dataset']}: test acc {m['test_acc']:.2f} %, "
              f"test loss {m['test_loss']:.4f}, best {m['best_test_acc']:.2f} %, params {m['params']:,}, "
              f"{record['timing']['seconds']:.1f} s")
    else:
        print(f"status {record['status']}: {record['error']}")
    print(f"record: {out / (trial_id + '.json')}")
    return 0 if record["status"] == "ok" else 1
