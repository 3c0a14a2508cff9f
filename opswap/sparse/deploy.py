"""The deployed form of a pruned model, chosen by measurement, and what deploying it gains.

`choose_forms` first removes every channel whose whole contribution is exactly zero (masked by
`ChannelPruner`, or dead) with Torch-Pruning — a physically smaller dense network — then times
each remaining dynamic layer on its real input, on the current device (`opswap.training.time_blocks`),
in each candidate form: "dense" (the masked weight materialised in a plain nn.Conv2d /
nn.Linear), "csr" (CSR matmul) and "channel" (a dense layer on the weight's nonzero rows and
input channels only, when there are zero ones and it stores fewer bytes than dense). A
non-dense form is taken only when it beats dense by `margin`, and the whole deployed model is
timed against the dense model and replaced by it if it is slower: never slower than dense, by
construction and by its own measurements.
`deployed_report` does this at batch 1 and at a throughput batch and adds the stored bytes.
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence

import torch
from torch import nn

from opswap.sparse.groups import _plain_copy, plain_layer, remove_units, zero_units
from opswap.sparse.csr import (SparseConv1x1, SparseConv2d, SparseLinear, csr_module, csr_stored_nbytes)
from opswap.sparse.layers import _set_child, dynamic_layers, is_dynamic, sparsity_report
from opswap.sparse.nm import is_nm, nm_nbytes

FORMS = ("dense", "csr", "channel")


class CompactLayer(nn.Module):
    """A conv / linear computed on its nonzero block: kept inputs gathered, kept outputs scattered back."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        plain = plain_layer(layer)
        w = plain.weight.detach()
        rows = w.reshape(w.shape[0], -1).ne(0).any(1)
        cols = w.transpose(0, 1).reshape(w.shape[1], -1).ne(0).any(1)
        if not rows.any():  # keep at least one row and one input
            rows[0] = True
        if not cols.any():
            cols[0] = True
        self.is_conv = isinstance(plain, nn.Conv2d)
        self.out_features = w.shape[0]
        keep_rows, keep_cols = rows.nonzero().squeeze(1), cols.nonzero().squeeze(1)
        inner = copy.deepcopy(plain)
        with torch.no_grad():
            inner.weight = nn.Parameter(w[keep_rows][:, keep_cols].clone())
            if plain.bias is not None:
                inner.bias = nn.Parameter(plain.bias.detach()[keep_rows].clone())
        if self.is_conv:
            inner.in_channels, inner.out_channels = len(keep_cols), len(keep_rows)
        else:
            inner.in_features, inner.out_features = len(keep_cols), len(keep_rows)
        self.inner = inner
        self.register_buffer("in_index", keep_cols if len(keep_cols) < w.shape[1] else None)
        self.register_buffer("out_index", keep_rows if len(keep_rows) < w.shape[0] else None)
        fill = plain.bias.detach().clone() if plain.bias is not None else torch.zeros(w.shape[0], device=w.device)
        fill[keep_rows] = 0
        self.register_buffer("fill", fill)  # outputs of all-zero rows: their bias

    @property
    def removes_anything(self) -> bool:
        return self.in_index is not None or self.out_index is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 if self.is_conv else -1
        if self.in_index is not None:
            x = x.index_select(dim, self.in_index)
        y = self.inner(x)
        if self.out_index is None:
            return y
        shape = list(y.shape)
        shape[dim] = self.out_features
        view = [1] * len(shape)
        view[dim] = self.out_features
        full = self.fill.view(view).expand(shape).clone()
        return full.index_copy_(dim if dim >= 0 else full.dim() - 1, self.out_index, y)

    def stored_nbytes(self) -> int:
        """fp32 parameters of the compact layer, int32 indices, and the bias of dropped rows."""
        params = sum(p.numel() for p in self.inner.parameters())
        index = sum(b.numel() for b in (self.in_index, self.out_index) if b is not None)
        dropped = self.out_features - self.inner.weight.shape[0] if self.inner.bias is not None else 0
        return 4 * (params + index + dropped)


def median_ms(fn, x: torch.Tensor, min_run_time: float) -> float:
    """Median milliseconds of `fn(x)` over timed blocks (`opswap.training.time_blocks`), at the
    current thread setting."""
    from opswap.training import time_blocks

    with torch.inference_mode():
        times, _ = time_blocks(lambda: fn(x), x.device, warmup=1, repeats=3, min_run_time=min_run_time)
    return statistics.median(times) * 1e3


def measure_ms(fns: dict, x: torch.Tensor, min_run_time: float, rounds: int = 3) -> dict[str, float]:
    """Median ms of each `fn(x)`, the least over `rounds` interleaved rounds.

    Interleaving spreads a burst of background load over all candidates, and the least median
    discards the rounds it hit (load only ever adds time). A candidate measured at more than
    twice the best one after the first round is not measured again.
    """
    best: dict[str, float] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            if r and best[name] > 2 * min(best.values()):
                continue
            best[name] = min(best.get(name, float("inf")), median_ms(fn, x, min_run_time))
    return best


def densify(model: nn.Module) -> nn.Module:
    """An eval copy with every dynamic layer a plain layer holding its masked weight (the dense reference)."""
    return _plain_copy(model)[0].eval()


def _layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
             for name, layer in dynamic_layers(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def _forms(layer, candidates: Sequence[str]) -> dict[str, nn.Module]:
    forms = {"dense": plain_layer(layer).eval()}
    if "csr" in candidates:
        forms["csr"] = csr_module(layer).eval()
    if "channel" in candidates and not (isinstance(layer, nn.Conv2d) and layer.groups > 1):
        compact = CompactLayer(layer).eval()
        # Its kept-index buffers can outweigh the few weights it drops: offered only when smaller.
        if compact.removes_anything and compact.stored_nbytes() < stored_nbytes(forms["dense"]):
            forms["channel"] = compact
    return forms


def choose_forms(model: nn.Module, example_input: torch.Tensor, *, device=None,
                 candidates: Sequence[str] = FORMS, min_run_time: float = 0.1,
                 margin: float = 0.05, rounds: int = 3) -> tuple[nn.Module, dict]:
    """(deployed eval copy of `model` on `device`, report); each layer's form chosen by measurement.

    The report holds `layers` (one row per dynamic layer: layer, chosen, ms of every form tried,
    input shape), `removed_channels` ({group root: channels removed}), `model_ms` (dense and
    deployed) and `fallback` (True when the assembled model was slower and dense was returned).
    Times are `measure_ms`: medians of timed blocks (`time_blocks`), the least of `rounds` interleaved rounds.
    """
    unknown = sorted(set(candidates) - set(FORMS))
    if unknown or "dense" not in candidates:
        raise ValueError(f"candidates must include 'dense' and come from {', '.join(FORMS)}; got {list(candidates)}")
    device = torch.device(device) if device is not None else example_input.device
    if is_dynamic(model):
        model = nn.Sequential(model)
    dense = densify(model).to(device)
    x = example_input.to(device)
    removed = zero_units(model, example_input[:1]) if "channel" in candidates else {}
    deployed = remove_units(model, removed, example_input[:1]) if removed else copy.deepcopy(model)
    deployed = deployed.eval().to(device)
    inputs = _layer_inputs(deployed, x)
    rows = []
    for name, layer in dynamic_layers(deployed):
        forms = {k: v.to(device) for k, v in _forms(layer, candidates).items()}
        ms = measure_ms(forms, inputs[name], min_run_time, rounds)
        best = min(ms, key=ms.get)
        chosen = best if best != "dense" and ms[best] < (1.0 - margin) * ms["dense"] else "dense"
        _set_child(deployed, name, forms[chosen])
        rows.append({"layer": name, "chosen": chosen, "ms": ms, "input_shape": list(inputs[name].shape)})
    model_ms = measure_ms({"dense": dense, "deployed": deployed}, x, min_run_time, rounds)
    fallback = model_ms["deployed"] > model_ms["dense"]
    report = {"device": str(device), "threads": torch.get_num_threads(), "batch_size": int(x.shape[0]),
              "layers": rows, "removed_channels": {k: len(v) for k, v in removed.items()},
              "model_ms": model_ms, "fallback": fallback}
    return (dense if fallback else deployed), report


def stored_nbytes(deployed: nn.Module) -> int:
    """Bytes of what a deployed model stores: CSR layers as CSR, compact layers compact, the rest fp32."""
    if isinstance(deployed, (SparseLinear, SparseConv2d, SparseConv1x1)):
        return csr_stored_nbytes(deployed)
    if isinstance(deployed, CompactLayer):
        return deployed.stored_nbytes()
    own = 4 * sum(p.numel() for p in deployed.parameters(recurse=False))
    return own + sum(stored_nbytes(child) for child in deployed.children())


def _nm_pattern(model: nn.Module, nm: tuple[int, int] | None) -> tuple[int, int] | None:
    layers = dynamic_layers(model)
    if nm is None:
        patterns = {getattr(layer, "nm_pattern", None) for _, layer in layers}
        nm = patterns.pop() if len(patterns) == 1 else None
    if nm is None or not layers or not all(is_nm(layer.mask, *nm) for _, layer in layers):
        return None
    return tuple(nm)


def deployed_report(model: nn.Module, example_shape: tuple[int, ...] = (3, 32, 32),
                    batch_sizes: Sequence[int] = (1, 256), device=None, *,
                    candidates: Sequence[str] = FORMS, min_run_time: float = 0.2,
                    nm: tuple[int, int] | None = None, seed: int = 0, rounds: int = 3) -> dict:
    """Latency of the deployed form beside the dense model's, per batch size, and stored bytes.

    `model` is the trained (masked) model. Per batch size: `deployed_ms`, `dense_ms` (the same
    architecture unpruned, masked weights materialised), `speedup` and the forms chosen. Bytes
    (fp32 values, int32 indices): `dense_bytes` (all parameters of the unpruned model),
    `structured_bytes` (the physically smaller dense model after channel removal), `csr_bytes`
    (dynamic layers in CSR, the rest dense; None without dynamic layers), `nm_bytes` (dynamic
    layers as N:M values + ceil(log2 M)-bit positions, when every mask follows the pattern; else
    None — N:M has no exported format here and is deployed dense on CPU) and, per batch size,
    `stored_bytes` of the chosen deployment.
    """
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    generator = torch.Generator().manual_seed(seed)
    dense = densify(model)
    dense_bytes = 4 * sum(p.numel() for p in dense.parameters())
    one = torch.randn((1, *example_shape), generator=generator)
    removed = zero_units(model, one) if "channel" in candidates else {}
    smaller = remove_units(model, removed, one) if removed else dense
    structured_params = sum(p.numel() for p in smaller.parameters())
    batches = []
    for batch in batch_sizes:
        x = torch.randn((int(batch), *example_shape), generator=generator)
        deployed, report = choose_forms(model, x, device=device, candidates=candidates,
                                        min_run_time=min_run_time, rounds=rounds)
        ms = report["model_ms"]
        deployed_ms = ms["dense"] if report["fallback"] else ms["deployed"]
        batches.append({"batch_size": int(batch), "deployed_ms": deployed_ms, "dense_ms": ms["dense"],
                        "speedup": ms["dense"] / deployed_ms, "fallback": report["fallback"],
                        "forms": {row["layer"]: row["chosen"] for row in report["layers"]},
                        "stored_bytes": stored_nbytes(deployed)})
    layers = dynamic_layers(model)
    csr_bytes = sparsity_report(model)["csr_bytes"] if layers else None
    pattern = _nm_pattern(model, nm)
    nm_bytes = None
    if pattern is not None:
        dynamic_dense = 4 * sum(layer.weight.numel() for _, layer in layers)
        nm_bytes = dense_bytes - dynamic_dense + sum(nm_nbytes(layer, *pattern) for _, layer in layers)
    return {"device": str(device), "threads": torch.get_num_threads(), "batches": batches,
            "dense_params": sum(p.numel() for p in dense.parameters()), "structured_params": structured_params,
            "dense_bytes": int(dense_bytes), "structured_bytes": 4 * structured_params, "csr_bytes": csr_bytes,
            "nm_bytes": nm_bytes, "nm_pattern": list(pattern) if pattern else None}


def to_sparse_inference(model: nn.Module, example_input: torch.Tensor | None = None, *, device=None,
                        candidates=("dense", "csr", "channel"), min_run_time: float = 0.1,
                        margin: float = 0.05, rounds: int = 3):
    """Sparse inference for `model`.

    Without `example_input` (the original behaviour): an eval copy whose dynamic layers all
    compute with CSR weights. With it: (model, report), the form of every layer chosen by
    measurement on `device` among `candidates`, never slower than dense; see
    `choose_forms`.
    """
    if example_input is not None:
        return choose_forms(model, example_input, device=device, candidates=candidates,
                            min_run_time=min_run_time, margin=margin, rounds=rounds)
    if is_dynamic(model):
        model = nn.Sequential(model)
    copied = copy.deepcopy(model).eval()
    for name, layer in dynamic_layers(copied):
        _set_child(copied, name, csr_module(layer))
    return copied
