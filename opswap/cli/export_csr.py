"""`opswap export-csr`: store a sparse model's weights as CSR arrays (safetensors)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from opswap.sparse.csr import export_csr
from opswap.sparse.layers import default_keep_dense, sparsity_report, to_dynamic


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, child)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="a trial's weights (.safetensors, saved with save_weights)")
    parser.add_argument("--model", required=True, help="model name the weights belong to, e.g. tf-cnn")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs")
    parser.add_argument("--position", type=int, default=None, help="substituted position, if any")
    parser.add_argument("--op", default=None, help="candidate op at --position, e.g. bottleneck_e2")
    parser.add_argument("--out", default=None,
                        help="output file (default: <weights stem>.csr.safetensors next to the input)")


def _model_for(args: argparse.Namespace, state: dict[str, torch.Tensor]) -> nn.Module:
    from opswap.models import build_model

    model = build_model(args.model, num_classes=args.num_classes)
    if (args.position is None) != (args.op is None):
        raise ValueError("--position and --op go together: give both (a substituted model) or neither")
    if args.op is not None:
        from opswap.substitution import swap

        model = swap(model, {args.position: args.op})
    expected = set(model.state_dict())
    given = {key for key in state if not key.endswith(".mask")}
    if expected != given:  # another model's weights: say so before any layer is looked up
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        what = f" with {args.op} at position {args.position}" if args.op else ""
        raise ValueError(f"{args.weights} does not fit --model {args.model}{what}: {len(missing)} tensors missing "
                         f"(e.g. {', '.join(missing[:3]) or 'none'}), {len(unexpected)} unexpected "
                         f"(e.g. {', '.join(unexpected[:3]) or 'none'}); saved from another model, or "
                         "another --position/--op?")
    masked = {key[: -len(".mask")] for key in state if key.endswith(".mask")}
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if masked:
        chosen = [(n, m) for n, m in candidates if n in masked]
    else:  # a dense checkpoint: the DSR dense-layer rule decides, masks follow the zeros
        keep = default_keep_dense(model)
        chosen = [(n, m) for n, m in candidates if not keep(n, m)]
    for name, layer in chosen:
        _set_child(model, name, to_dynamic(layer))
    if not masked:
        for name, _ in chosen:
            state = {**state, f"{name}.mask": state[f"{name}.weight"] != 0}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{args.weights} does not fit --model {args.model}"
                         f"{f' with {args.op} at position {args.position}' if args.op else ''}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def main(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from opswap.run.trial import check_safetensors

    source = Path(args.weights)
    check_safetensors(source, "weights file")
    model = _model_for(args, load_file(str(source)))
    out = Path(args.out) if args.out else source.with_name(source.stem + ".csr.safetensors")
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; give the file to write, e.g. "
                         f"{str(out / (source.stem + '.csr.safetensors'))!r}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"--out {str(out)!r} is the weights file itself; the CSR export is written beside it, "
                         "not over it: give another --out")
    file_bytes = export_csr(model, out)
    report = sparsity_report(model)
    ratio = report["csr_bytes"] / report["dense_bytes"]
    print(f"model       {args.model}  ({len(report['layer_sparsity'])} CSR layers, "
          f"sparsity {report['sparsity']:.4f})")
    print(f"dense bytes {report['dense_bytes']:>12,}  (all parameters fp32)")
    print(f"CSR bytes   {report['csr_bytes']:>12,}  ({ratio:.3f} x dense)")
    print(f"written     {out}  ({file_bytes:,} bytes with buffers and header)")
    return 0
