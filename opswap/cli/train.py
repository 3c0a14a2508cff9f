"""`opswap train`: one run, writing the same record a study trial writes."""
from __future__ import annotations

import argparse
from pathlib import Path

from opswap.cli._common import check_data, check_writable_dir
from opswap.data import DATASETS
from opswap.run.record import record_path, write_record
from opswap.run.spec import INITS, TrialSpec
from opswap.sparse.methods import PRUNE_METHODS
from opswap.precision import PRECISIONS
from opswap.training import OPTIMIZERS, SCHEDULES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="wrn-<depth>-<widen> (e.g. wrn-16-2) or tf-cnn")
    a("--dataset", required=True, choices=DATASETS, help="the dataset (cifar10/100 download to --data)")
    a("--data", help="dataset root or file (npz: the .npz file; folder: a dir with train/ and test/)")
    a("--num-classes", type=int, help="classifier outputs (default: the dataset's class count)")
    a("--epochs", type=int, default=10, help="training epochs")
    a("--optimizer", choices=OPTIMIZERS, default="sgd", help="optimiser")
    a("--lr", type=float, help="learning rate (default: sgd 0.1, adam 1e-3)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    a("--weight-decay", type=float, help="weight decay (default: sgd 5e-4, adam 0)")
    a("--schedule", choices=SCHEDULES, help="learning-rate schedule (default: sgd cosine, adam constant)")
    a("--warmup-epochs", type=float, default=0.0, help="linear warm-up, in epochs")
    a("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    a("--batch-size", type=int, default=128, help="training batch size")
    a("--normalize", choices=["standard", "unit"], default="standard",
      help="standard: per-dataset mean/std; unit: inputs in [0, 1]")
    a("--no-augment", action="store_true", help="no random crop / flip")
    a("--precision", choices=PRECISIONS, default="auto",
      help="auto: bf16 autocast + channels_last where the device runs them fast (CUDA; CPUs with AMX / "
           "AVX-512 bf16), else fp32 (see docs/training.md)")
    a("--compile", action=argparse.BooleanOptionalAction, default=None,
      help="torch.compile the model (default: on CUDA, off on CPU)")
    a("--seed", type=int, default=0, help="seed of weights, data order, augmentation and pruning")
    a("--val-fraction", type=float, default=0.0, help="hold out this share of train for validation")
    a("--data-fraction", type=float, default=1.0, help="train on this stratified share of train, in (0, 1]")
    a("--position", type=int, help="block position (1-based) to substitute")
    a("--op", default="baseline", help="candidate op at --position, e.g. mbconv_e6_k3 (see `opswap ops`)")
    a("--init", choices=INITS, default="scratch",
      help="scratch, or from --teacher: teacher (unmodified), lana (--bank entry), random (candidate only)")
    a("--teacher", help="teacher checkpoint (safetensors) for --init teacher|lana|random")
    a("--bank", help="weight bank from `opswap distill` for --init lana")
    a("--sparsity", type=float, default=0.0, help="target fraction of zero weights, in [0, 1)")
    a("--prune", choices=PRUNE_METHODS, default="none", help="prune method (dsr when --sparsity > 0 and none given)")
    a("--prune-option", action="append", default=[], metavar="KEY=VALUE",
      help="a setting of the prune method, e.g. period=50 (repeatable; see docs/sparsity.md)")
    a("--latency-batch-size", type=int, default=256, help="large batch for latency (0: skip latency)")
    a("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    a("--save-weights", action="store_true", help="also write the trained weights (safetensors)")
    a("--out", default="results/train", help="directory for the record")
    a("--study", help="study name in the record (default: the --out folder's name)")
    a("--no-progress", action="store_true", help="no progress bar")


def spec_from_args(args: argparse.Namespace, num_classes: int | None = None) -> TrialSpec:
    """The trial spec of the command line (validated: a bad value raises ValueError).

    `num_classes` is the dataset's class count (`check_data`), used when --num-classes is left out.
    """
    from opswap.study.schema import parse_overrides

    train = {"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
             "label_smoothing": args.label_smoothing, "batch_size": args.batch_size,
             "normalize": args.normalize, "augment": not args.no_augment, "compile": args.compile,
             "precision": args.precision}
    options = dict(parse_overrides(args.prune_option, "--prune-option", "--prune-option period=50"))
    if args.prune != "none" and args.sparsity == 0:
        raise ValueError(f"--prune {args.prune} prunes nothing at --sparsity 0 (the run would be dense): give "
                         "--sparsity, e.g. --sparsity 0.5, or leave --prune out for a dense run")
    try:
        return TrialSpec.create(
            model=args.model, dataset=args.dataset, data=args.data, epochs=args.epochs, seed=args.seed,
            num_classes=args.num_classes if args.num_classes is not None else num_classes,
            val_fraction=args.val_fraction, data_fraction=args.data_fraction, position=args.position,
            op=args.op, init=args.init, sparsity=args.sparsity, prune=args.prune, prune_options=options,
            save_weights=args.save_weights, latency_batch_size=args.latency_batch_size, train=train,
            teacher=_inputs(args))
    except TypeError as err:  # a wrong type reached a config class
        raise ValueError(str(err)) from None


def _inputs(args: argparse.Namespace) -> str | None:
    """The teacher (and bank) the run starts from, by content: another teacher is another trial id."""
    from opswap.run.spec import file_identity

    if args.init == "scratch" or not args.teacher or not Path(args.teacher).is_file():
        return None  # scratch; a missing file is refused by check_request
    parts = [file_identity("checkpoint", args.teacher)]
    if args.init == "lana" and args.bank and Path(args.bank).is_file():
        parts.append(file_identity("bank", args.bank))
    return ",".join(parts)


def check_request(args: argparse.Namespace, spec: TrialSpec) -> None:
    """Refuse what cannot run before anything is trained or written."""
    from opswap.run.trial import check_inputs

    if args.init != "scratch" and not args.teacher:
        raise ValueError(f"--init {args.init} needs --teacher (a teacher checkpoint, .safetensors)")
    if args.init == "lana" and args.position is not None and not args.bank:
        raise ValueError("--init lana needs --bank (a weight bank written by `opswap distill`)")
    from opswap.training import resolve_device

    resolve_device(args.device)  # a device this machine lacks is refused before any work
    check_inputs(spec, teacher=args.teacher, bank=args.bank)
    check_writable_dir(args.out, "the record", "--out")
    from opswap.data import fetch_dataset

    fetch_dataset(args.dataset, args.data)  # CIFAR's files, downloaded now if missing: a failure writes nothing


def _reason(error: str | None) -> str:
    """The exception's own first line (`Type: message`) of a record's error: traceback frames are
    indented, and lines after it are hints or notes, not the reason."""
    lines = [line for line in str(error or "").splitlines() if line.strip()]
    own = [line for line in lines if not line[0].isspace() and not line.startswith(("Traceback", 'File "'))]
    return (own[0] if own else lines[-1].strip() if lines else "no reason recorded").strip()


def main(args: argparse.Namespace) -> int:
    from opswap.run.trial import run_trial

    # the dataset is checked first: its class count is part of the spec (and the trial id)
    spec = spec_from_args(args, check_data(args.dataset, args.data, args.num_classes,
                                            val_fraction=args.val_fraction))
    check_request(args, spec)
    out = Path(args.out)
    trial_id = spec.trial_id
    weights = out / f"{trial_id}.safetensors"
    record = run_trial(spec, trial_id=trial_id, study=args.study or out.name, teacher=args.teacher, bank=args.bank,
                       device=args.device, progress=not args.no_progress, weights_path=weights)
    write_record(record, out)
    for row in record["history"]:
        acc = row["test_acc"] if row.get("test_acc") is not None else row.get("val_acc")
        print(f"epoch {row['epoch']:3d}  train loss {row['train_loss'] if row['train_loss'] is not None else float('nan'):.4f} "
              f"acc {row['train_acc'] if row['train_acc'] is not None else float('nan'):5.2f}  "
              f"eval acc {acc if acc is not None else float('nan'):5.2f}  {row['seconds']:6.1f} s  "
              f"{row['images_per_s'] or 0:8.0f} img/s")
    m = record["metrics"]
    if record["status"] == "ok":
        print(f"{spec.model} on {spec.dataset}: test acc {m['test_acc']:.2f} %, "
              f"test loss {m['test_loss']:.4f}, best {m['best_test_acc']:.2f} %, params {m['params']:,}, "
              f"{record['timing']['seconds']:.1f} s")
    else:  # one line: the reason (the record's error holds the traceback's last lines)
        print(f"status {record['status']}: {_reason(record['error'])}")
    if m.get("measurement_error"):
        print(f"note: measurement failed after training: {m['measurement_error']}")
    print(f"record: {record_path(out, trial_id)}")
    # A diverged run is a result (its record says so); only a run that failed exits 1.
    return 1 if record["status"] == "failed" else 0
