"""Is bf16 training as accurate as fp32? n seeds of each, interleaved, with Welch's t-test.

The check behind `opswap.precision.CPU_BF16_VALIDATED`: `auto` may only pick bf16 on a CPU if
runs in bf16 reach the accuracy of fp32 runs within seed-to-seed noise. Two recipes on
cifar10-mini: the dynamic-pruning study's Keras CNN (tf-cnn, Adam 1e-3, batch 32, inputs in
[0, 1], no augmentation, 10 epochs) and a WRN with the SGD recipe (a few epochs). One JSON
line per run goes to --out, so an interrupted comparison resumes.

    python benchmarks/precision_accuracy.py --data ../shared/data/cifar10-mini.npz --threads 1
    python benchmarks/precision_accuracy.py --data cifar10-mini.npz --device cuda --seeds 0,1,2,3,4
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's opswap

import opswap  # noqa: E402
from opswap.training import TrainConfig, train  # noqa: E402

RECIPES = {
    "tf-cnn": dict(epochs=10, optimizer="adam", lr=1e-3, batch_size=32, normalize="unit", augment=False),
    "wrn-16-2": dict(epochs=5, optimizer="sgd", batch_size=64),  # lr 0.1, Nesterov, wd 5e-4, cosine
}


def one_run(model_name: str, data, seed: int, precision: str, device: str = "cpu", compile_: bool | None = None,
            epochs: int | None = None) -> dict:
    torch.manual_seed(seed)
    model = opswap.build_model(model_name, num_classes=data.num_classes)
    recipe = dict(RECIPES[model_name], **({"epochs": epochs} if epochs else {}))
    config = TrainConfig(seed=seed, precision=precision, compile=compile_, **recipe)
    result = train(model, data, config, device=device)
    h = result.history
    return {"model": model_name, "seed": seed, "device": device, "epochs": recipe["epochs"], "precision": result.precision, "status": result.status,
            "test_acc": result.metrics["test_acc"], "test_loss": result.metrics["test_loss"],
            "train_loss": result.metrics["train_loss"],
            "images_per_s": statistics.median(r["images_per_s"] for r in h)}


def summarise(rows: list[dict]) -> list[str]:
    """Per model: mean ± sd of test accuracy per precision, the difference and Welch's p."""
    from scipy.stats import ttest_ind

    lines = ["| model | recipe | n | fp32 test acc | bf16 test acc | bf16 − fp32 | Welch p | speed bf16/fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for model_name, recipe in RECIPES.items():
        acc = {p: [r["test_acc"] for r in rows if r["model"] == model_name and r["precision"] == p]
               for p in ("fp32", "bf16")}
        speed = {p: statistics.median(r["images_per_s"] for r in rows if r["model"] == model_name
                                      and r["precision"] == p) for p in acc if acc[p]}
        if min(len(v) for v in acc.values()) < 2:
            continue
        p_value = ttest_ind(acc["bf16"], acc["fp32"], equal_var=False).pvalue
        fmt = lambda v: f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"  # noqa: E731
        epochs = sorted({r.get("epochs", recipe["epochs"]) for r in rows if r["model"] == model_name})
        what = ", ".join(f"{k}={v}" for k, v in dict(recipe, epochs="/".join(map(str, epochs))).items())
        lines.append(f"| {model_name} | {what} | {len(acc['fp32'])} + {len(acc['bf16'])} | {fmt(acc['fp32'])} | "
                     f"{fmt(acc['bf16'])} | {statistics.mean(acc['bf16']) - statistics.mean(acc['fp32']):+.2f} | "
                     f"{p_value:.2f} | {speed['bf16'] / speed['fp32']:.2f}× |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifar10-mini.npz")
    p.add_argument("--models", default=",".join(RECIPES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda: the device both precisions train on")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile (auto: the engine's choice, on for CUDA only)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: each recipe's)")
    p.add_argument("--out", default="precision_accuracy.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    compile_ = {"auto": None, "on": True, "off": False}[args.compile]
    data = opswap.load_dataset("npz", args.data)
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    rows = [r for r in rows if r.get("device", "cpu") == args.device  # one device's comparison, one length
            and r.get("epochs", RECIPES[r["model"]]["epochs"]) == (args.epochs or RECIPES[r["model"]]["epochs"])]
    done = {(r["model"], r["seed"], r["precision"]) for r in rows}
    for model_name in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for precision in ("fp32", "bf16"):  # interleaved: load changes hit both alike
                if (model_name, seed, precision) in done:
                    continue
                row = one_run(model_name, data, seed, precision, args.device, compile_, args.epochs)
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    print("\n".join(summarise(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
