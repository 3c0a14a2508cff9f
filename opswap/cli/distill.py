"""`opswap distill`: LANA-style block distillation from a teacher checkpoint into a weight bank."""
from __future__ import annotations

import argparse
from pathlib import Path

from opswap.cli._common import check_data
from opswap.data import DATASETS
from opswap.run.trial import check_safetensors
from opswap.distill.apply import load_teacher, replace1_accuracy
from opswap.distill.bank import WeightBank
from opswap.distill.engine import DistillConfig, distill_bank, valid_pairs

_DEFAULTS = DistillConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--teacher", required=True, metavar="CKPT", help="teacher checkpoint (safetensors)")
    p("--model", required=True, metavar="M", help="the teacher's model name, e.g. wrn-40-2")
    p("--dataset", required=True, choices=DATASETS, help="the dataset the teacher was trained on")
    p("--data", metavar="PATH", help="dataset root or file, where the dataset needs one")
    p("--positions", default="all", help="comma-separated positions, or 'all' (default)")
    p("--ops", default="all", help="comma-separated op names, or 'all' (default): every candidate that fits")
    p("--steps", type=int, default=_DEFAULTS.steps, help="distillation steps per pair")
    p("--batch-size", type=int, default=_DEFAULTS.batch_size, help="")
    p("--optimizer", choices=("adam", "sgd"), default=_DEFAULTS.optimizer, help="optimiser of every candidate")
    p("--lr", type=float, default=_DEFAULTS.lr, help=f"learning rate of every candidate (default {_DEFAULTS.lr:g})")
    p("--schedule", choices=("cosine", "constant"), default=_DEFAULTS.schedule, help="learning-rate schedule")
    p("--weight-decay", type=float, default=_DEFAULTS.weight_decay, help="weight decay")
    p("--max-pairs", type=int, default=None, metavar="N",
      help="train at most N pairs at once (the teacher then runs once per chunk); default: all")
    p("--seed", type=int, default=_DEFAULTS.seed, help="seed of the candidates' weights and the data order")
    p("--no-augment", action="store_true", help="no random crop and flip")
    p("--normalize", choices=("standard", "unit"), default=_DEFAULTS.normalize,
      help="input scaling the teacher was trained with (standard: mean/std; unit: [0, 1])")
    p("--out", required=True, metavar="BANK", help="weight bank file to write (.safetensors)")
    p("--resume", action="store_true", help="keep the pairs already in --out, distil only the others")
    p("--replace1", action="store_true", help="also measure replace-1 accuracy of every pair")
    p("--split", choices=("test", "val"), default="test", help="split for replace-1 accuracy")
    p("--val-fraction", type=float, default=0.0, help="hold out this fraction of train as 'val'")
    p("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p("--no-progress", action="store_true", help="no progress bar")


def _csv(text: str, convert=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [convert(t) for t in items]
    except ValueError:
        raise ValueError(f"cannot read --positions {text!r}: expected 'all' or a comma-separated list "
                         "such as 1,7,18") from None


def main(args: argparse.Namespace) -> int:
    from opswap.data import load_dataset

    config = DistillConfig(steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                           schedule=args.schedule, weight_decay=args.weight_decay,
                           max_pairs_at_once=args.max_pairs, seed=args.seed, augment=not args.no_augment,
                           normalize=args.normalize)
    from opswap.training import resolve_device

    resolve_device(args.device)  # a device this machine lacks is refused before any work
    out = Path(args.out)
    check_safetensors(args.teacher, "--teacher")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the weight bank's file name, e.g. {out / 'bank.safetensors'}")
    if out.exists() and not args.resume:
        raise ValueError(f"{out} exists; pass --resume to add the missing pairs to it, or choose another --out")
    check_data(args.dataset, args.data, val_fraction=args.val_fraction)
    positions = "all" if args.positions.strip() == "all" else _csv(args.positions, int)
    ops = "all" if args.ops.strip() == "all" else _csv(args.ops)
    data = load_dataset(args.dataset, args.data, val_fraction=args.val_fraction, seed=args.seed)
    teacher = load_teacher(args.teacher, args.model, data.num_classes)
    pairs = valid_pairs(teacher, positions, ops)
    bank = None
    if out.exists():
        bank = WeightBank.load(out)
        bank.check_teacher(teacher)
        pairs = [pair for pair in pairs if pair not in bank]
        print(f"{out}: {len(bank)} pairs already distilled, {len(pairs)} to go")
    if pairs:
        new = distill_bank(teacher, data, pairs, config, device=args.device, progress=not args.no_progress,
                           model_name=args.model)
        bank = new if bank is None else bank.merge(new)
    if args.replace1:
        replace1_accuracy(teacher, bank, data, split=args.split, device=args.device,
                          progress=not args.no_progress)
    bank.save(out)
    frame = bank.to_frame()[["position", "op", "param_count", "distill_loss", "replace1_acc"]]
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    print(f"wrote {len(bank)} pairs to {out}")
    return 0
