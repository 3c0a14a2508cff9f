"""Zero-cost proxies: cheap scores of a network (or of one block in it) from a few batches.

Implemented from the papers' definitions:

- `synflow` — Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020. The network is linearised: on a float64
  copy every parameter is replaced by its absolute value and every BatchNorm runs in eval mode
  with its running mean set to 0 (running variance kept), so it is the positive, data-free affine
  map x·|γ|/√(σ²+ε) + |β|; ReLU6 / hardtanh(0, ·) act as ReLU (no clipping of the linear flow).
  R = sum of the outputs for an all-ones input; score = Σ |θ ⊙ ∂R/∂θ|.
- `naswot` — Mellor, Turner, Storkey & Crowley, "Neural architecture search without training",
  ICML 2021. Binary codes c of every rectifier (ReLU, ReLU6; module or functional) over the N
  images of all given batches; K_H = c·cᵀ + (1−c)(1−c)ᵀ (= N_A − Hamming distance); score =
  log|det K_H| (slogdet; −inf when K_H is singular, NaN when no rectifier is in scope).
- `jacob_cov` — the same paper's first version (arXiv:2006.04647v1): J = ∂(Σ output)/∂input,
  one row per image; score = −Σ_i [log(λ_i + k) + 1/(λ_i + k)], λ the eigenvalues of J's
  correlation matrix, k = 1e-5. For a block: the Jacobian of the block's summed output with
  respect to the block's input.
- `grad_norm` — ‖∂L/∂θ‖₂, the L2 norm of the whole gradient of the cross-entropy L (as used by
  Abdelfattah et al., "Zero-cost proxies for lightweight NAS", ICLR 2021).
- `snip` — Lee, Ajanthan & Torr, "SNIP: single-shot network pruning based on connection
  sensitivity", ICLR 2019: Σ |θ ⊙ ∂L/∂θ|.
- `grasp` — Wang, Zhang & Grosse, "Picking winning tickets before training by preserving gradient
  flow", ICLR 2020: Σ −θ ⊙ (H g), g = ∂L/∂θ, H the Hessian of L (a Hessian-vector product).
- `fisher` — Theis et al., "Faster gaze prediction with dense networks and Fisher pruning", 2018;
  Turner et al., "BlockSwap", ICLR 2020: per channel ½·(Σ_spatial a ⊙ ∂ℓ/∂a)², averaged over
  the images and summed over channels and layers. `a` is the output of every convolution (before
  its BN): that is the feature map a channel-pruning decision removes, and it exists in every
  candidate, also in those that end without an activation (the residual stream is not
  rectified). ℓ is each image's own loss (the batch's summed cross-entropy), as in Theis et al.

L is the mean cross-entropy over all images of all batches (gradients accumulated batch by
batch). Gradient proxies and NASWOT run on a copy in train mode (batch statistics: the mode the
network is fine-tuned in); pass `mode="eval"` for running statistics. The input model is never
modified: every proxy works on its own deep copy. With `scope`, parameter sums, activation codes
and convolution outputs are restricted to that sub-module (e.g. the substituted block), while the
loss or R is still that of the whole network; a scope without parameters scores 0 (NASWOT: NaN).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["PROXIES", "compute_proxies", "pair_proxies", "hamming_kernel", "naswot_score",
           "jacob_cov_score"]

PROXIES: tuple[str, ...] = ("synflow", "naswot", "jacob_cov", "grad_norm", "snip", "grasp", "fisher")

Batch = tuple[torch.Tensor, torch.Tensor]
_RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_RELU6 = {F.relu6}


# -- pure scores ---------------------------------------------------------------------------------
def hamming_kernel(codes: torch.Tensor) -> torch.Tensor:
    """K_H = c·cᵀ + (1−c)(1−c)ᵀ of binary codes (N, N_A), in float64."""
    c = codes.reshape(len(codes), -1).to(torch.float64)
    return c @ c.T + (1 - c) @ (1 - c).T


def naswot_score(codes_or_kernel: torch.Tensor, *, kernel: bool = False) -> float:
    """log|det K_H| of binary codes (N, N_A) or of a given kernel; −inf when K_H is singular."""
    k = codes_or_kernel.to(torch.float64) if kernel else hamming_kernel(codes_or_kernel)
    if k.numel() == 0:
        return math.nan
    sign, logdet = torch.linalg.slogdet(k)
    return -math.inf if sign.item() == 0 else float(logdet)


def jacob_cov_score(jacobian: torch.Tensor, k: float = 1e-5) -> float:
    """−Σ [log(λ + k) + 1/(λ + k)] over the eigenvalues λ of the rows' correlation matrix."""
    j = jacobian.reshape(len(jacobian), -1).to(torch.float64).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(j)
    if not np.all(np.isfinite(corr)):
        return math.nan  # a constant row (e.g. an identity block): correlation undefined
    lam = np.clip(np.linalg.eigvalsh(corr), 0.0, None)
    return float(-np.sum(np.log(lam + k) + 1.0 / (lam + k)))


# -- helpers -------------------------------------------------------------------------------------
def _scope_path(model: nn.Module, scope: nn.Module | None) -> str:
    """The dotted path of `scope` inside `model` ("" for the whole model)."""
    if scope is None or scope is model:
        return ""
    for name, module in model.named_modules():
        if module is scope:
            return name
    raise ValueError(f"scope {type(scope).__name__} is not a sub-module of the given "
                     f"{type(model).__name__}; pass a module of that model, e.g. "
                     "opswap.substitution.op_at(model, position)")


def _inside(name: str, path: str) -> bool:
    return path == "" or name == path or name.startswith(path + ".")


def _params(net: nn.Module, path: str) -> list[nn.Parameter]:
    return [p for name, p in net.named_parameters() if _inside(name, path)]


@torch.no_grad()
def _total(net: nn.Module, path: str, term: Callable) -> float:
    """Σ term(θ, ∂/∂θ) over the parameters inside `path` that received a gradient (float64)."""
    return sum(float(term(p.double(), p.grad.double()).sum()) for p in _params(net, path)
               if p.grad is not None)


def _working_copy(model: nn.Module, mode: str) -> nn.Module:
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.grad = None
        p.requires_grad_(True)
    return net.train(mode == "train")


def _device_batches(net: nn.Module, batches: Sequence[Batch]) -> list[Batch]:
    p = next(net.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    return [(x.to(device, dtype), y.to(device)) for x, y in batches]


def _accumulate_loss_grads(net: nn.Module, batches: list[Batch], *, create_graph: bool = False):
    """Gradients of the mean cross-entropy over all images, accumulated batch by batch."""
    total = sum(len(x) for x, _ in batches)
    for x, y in batches:
        loss = F.cross_entropy(net(x), y, reduction="sum") / total
        loss.backward(create_graph=create_graph)


class _Rectifiers(TorchFunctionMode):
    """Sees every ReLU / ReLU6 call (nn modules and functional); records codes or linearises."""

    def __init__(self, on_output: Callable[[torch.Tensor], None] | None = None, linear: bool = False):
        super().__init__()
        self.on_output, self.linear = on_output, linear

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        is_relu6 = func in _RELU6 or (func is F.hardtanh and _min_val(args, kwargs) == 0.0)
        if self.linear and is_relu6:  # the linearised network must not clip at 6
            return F.relu(args[0], inplace=kwargs.get("inplace", False))
        out = func(*args, **kwargs)
        if self.on_output is not None and (func in _RELU or is_relu6):
            self.on_output(out)
        return out


def _min_val(args, kwargs) -> float | None:
    return float(args[1]) if len(args) > 1 else float(kwargs.get("min_val", -1.0))


class _Active:
    """Which scopes the forward pass is inside (pre-hooks and hooks on the scope modules)."""

    def __init__(self, net: nn.Module, paths: Iterable[str]):
        self.depth = {path: 0 for path in paths}
        self.handles = []
        for path in self.depth:
            if path:
                module = net.get_submodule(path)
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, a, path=path: self.depth.__setitem__(path, self.depth[path] + 1)))
                self.handles.append(module.register_forward_hook(
                    lambda m, a, o, path=path: self.depth.__setitem__(path, self.depth[path] - 1)))

    def now(self) -> tuple[str, ...]:
        return tuple(p for p, d in self.depth.items() if p == "" or d > 0)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# -- the proxies (each: model, batches, scope paths, mode -> {path: value}) ---------------------
def _synflow(model, batches, paths, mode):
    net = copy.deepcopy(model).double().eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.zero_()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.grad = None
            p.requires_grad_(True)
    x = torch.ones((1, *batches[0][0].shape[1:]), dtype=torch.float64,
                   device=next(net.parameters()).device)
    with _Rectifiers(linear=True):
        net(x).sum().backward()
    return {path: _total(net, path, lambda p, g: (p * g).abs()) for path in paths}


def _grad_norm(model, batches, paths, mode):
    net = _working_copy(model, mode)
    _accumulate_loss_grads(net, _device_batches(net, batches))
    return {path: math.sqrt(_total(net, path, lambda p, g: g.double() ** 2)) for path in paths}


def _snip(model, batches, paths, mode):
    net = _working_copy(model, mode)
    _accumulate_loss_grads(net, _device_batches(net, batches))
    return {path: _total(net, path, lambda p, g: (p * g).abs()) for path in paths}


def _grasp(model, batches, paths, mode):
    net = _working_copy(model, mode)
    batches = _device_batches(net, batches)
    params = list(net.parameters())
    _accumulate_loss_grads(net, batches)
    g = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    net.zero_grad(set_to_none=True)
    total = sum(len(x) for x, _ in batches)
    for x, y in batches:  # H g, batch by batch: ∂/∂θ of (∂L_b/∂θ · g)
        loss = F.cross_entropy(net(x), y, reduction="sum") / total
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        z = sum((gr * gi).sum() for gr, gi in zip(grads, g) if gr is not None)
        if torch.is_tensor(z) and z.requires_grad:
            z.backward()
    return {path: -_total(net, path, lambda p, g: p * g) for path in paths}


def _fisher(model, batches, paths, mode):
    net = _working_copy(model, mode)
    batches = _device_batches(net, batches)
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    sums = {name: 0.0 for name, _ in convs}

    def hook(module, args, out, name):
        a = out.detach()

        def on_grad(g):  # ½ (Σ_spatial a·g)² per image and channel, summed
            s = (a * g).flatten(2).sum(-1).double()
            sums[name] += float(0.5 * (s ** 2).sum())
        out.register_hook(on_grad)
        return out.clone()  # later in-place ops then cannot touch the tensor we differentiate

    handles = [m.register_forward_hook(lambda mod, a, o, name=name: hook(mod, a, o, name))
               for name, m in convs]
    try:
        total = 0
        for x, y in batches:
            F.cross_entropy(net(x), y, reduction="sum").backward()  # per-image loss gradients
            total += len(x)
    finally:
        for h in handles:
            h.remove()
    return {path: sum(v for name, v in sums.items() if _inside(name, path)) / total for path in paths}


def _naswot(model, batches, paths, mode):
    net = _working_copy(model, mode)
    batches = _device_batches(net, batches)
    calls: list[list[torch.Tensor]] = []  # per rectifier call (same order every batch): codes
    scopes: list[tuple[str, ...]] = []
    active = _Active(net, paths)
    state = {"i": 0, "first": True}

    def record(out):
        i = state["i"]
        if state["first"]:
            calls.append([])
            scopes.append(active.now())
        calls[i].append((out.detach() > 0).flatten(1))
        state["i"] += 1

    try:
        with torch.no_grad(), _Rectifiers(on_output=record):
            for x, _ in batches:
                state["i"] = 0
                net(x)
                state["first"] = False
    finally:
        active.close()
    n = sum(len(x) for x, _ in batches)
    kernels = {path: torch.zeros(n, n, dtype=torch.float64) for path in paths}
    seen = {path: False for path in paths}
    for codes, inside in zip(calls, scopes):
        c = torch.cat(codes).float()
        units, s = c.shape[1], c.sum(1, dtype=torch.float64)
        cc = (c @ c.T).double().cpu()  # exact: integers below 2**24
        k = 2 * cc - s[:, None].cpu() - s[None, :].cpu() + units  # = c·cᵀ + (1−c)(1−c)ᵀ
        for path in inside:
            kernels[path] += k
            seen[path] = True
    return {path: naswot_score(kernels[path], kernel=True) if seen[path] else math.nan for path in paths}


class _Stop(Exception):
    """Ends a forward pass once the scope's output is known."""


def _jacob_cov(model, batches, paths, mode):
    batches = _device_batches(model, batches)
    out = {}
    for path in paths:
        net = _working_copy(model, mode)
        rows = []
        for x, _ in batches:
            if path == "":
                x = x.clone().requires_grad_(True)
                net(x).sum().backward()
                rows.append(x.grad.detach().flatten(1))
                continue
            held = {}
            module = net.get_submodule(path)

            def pre(m, args):
                held["x"] = args[0].detach().clone().requires_grad_(True)
                return (held["x"], *args[1:])

            def post(m, args, o):
                held["y"] = o
                raise _Stop  # the rest of the network does not enter the block's Jacobian

            handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
            try:
                net(x)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            (grad,) = torch.autograd.grad(held["y"].sum(), held["x"], allow_unused=True)
            rows.append((torch.zeros_like(held["x"]) if grad is None else grad).flatten(1))
        out[path] = jacob_cov_score(torch.cat(rows))
    return out


_FUNCTIONS = {"synflow": _synflow, "naswot": _naswot, "jacob_cov": _jacob_cov, "grad_norm": _grad_norm,
              "snip": _snip, "grasp": _grasp, "fisher": _fisher}


def _check(names: Sequence[str], batches: Sequence[Batch], mode: str) -> None:
    unknown = [n for n in names if n not in _FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown proxy {unknown[0]!r}; known proxies: {', '.join(PROXIES)}")
    if not batches:
        raise ValueError("compute_proxies needs at least one (x, y) batch")
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' (batch statistics) or 'eval', not {mode!r}")


def _compute(model: nn.Module, batches: Sequence[Batch], names: Sequence[str],
             scopes: dict[str, str], mode: str) -> dict[str, float]:
    """{name + suffix: value} for each scope path (suffix → path), and `seconds_<name>`."""
    _check(names, batches, mode)
    batches = list(batches)
    out: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        values = _FUNCTIONS[name](model, batches, list(dict.fromkeys(scopes.values())), mode)
        out.update({name + suffix: float(values[path]) for suffix, path in scopes.items()})
        out["seconds_" + name] = time.perf_counter() - start
    return out


def compute_proxies(model: nn.Module, batches: Sequence[Batch], *, names: Sequence[str] = PROXIES,
                    scope: nn.Module | None = None, mode: str = "train") -> dict[str, float]:
    """{proxy: value, "seconds_<proxy>": seconds} on `batches` [(x, y)]; the model is not modified."""
    return _compute(model, batches, names, {"": _scope_path(model, scope)}, mode)


def pair_proxies(teacher: nn.Module, bank, pairs: Iterable[tuple[int, str]] | None,
                 data_batches: Sequence[Batch], *, init: Sequence[str] = ("lana", "random"),
                 seed: int = 0, names: Sequence[str] = PROXIES, mode: str = "train") -> pd.DataFrame:
    """Proxies of every substituted network, one row per (position, op, init).

    `pairs` are (position, op) of `bank` (None: all its entries). `init` "lana" uses the bank's
    weights (`substituted_model`), "random" a fresh op seeded with `seed` (`random_init_model`);
    each position also gets a row for the teacher itself (op "baseline", init "teacher").
    Columns: position, op, op_family, init, then for each proxy `<name>` (whole network) and
    `<name>_block` (parameters / codes / conv outputs of the swapped block only), `seconds`
    (the row, building the network included) and `seconds_<name>` (both scopes together).
    """
    from opswap.distill.apply import random_init_model, substituted_model
    from opswap.ops import parse_op
    from opswap.substitution import op_at

    bad = [i for i in init if i not in ("lana", "random")]
    if bad:
        raise ValueError(f"init must be 'lana' and/or 'random', not {bad[0]!r}")
    pairs = bank.keys() if pairs is None else [(int(p), parse_op(o).name) for p, o in pairs]
    if "lana" in init:
        bank.check_teacher(teacher)
    jobs = [(p, "baseline", "teacher") for p in sorted({p for p, _ in pairs})]
    jobs += [(p, op, i) for p, op in pairs for i in init]
    rows = []
    for position, op, how in jobs:
        start = time.perf_counter()
        if how == "teacher":
            net = teacher
        elif how == "lana":
            net = substituted_model(teacher, bank, position, op, check=False)
        else:
            net = random_init_model(teacher, position, op, seed=seed)
        block = _scope_path(net, op_at(net, position))
        values = _compute(net, data_batches, names, {"": "", "_block": block}, mode)
        rows.append({"position": position, "op": op, "op_family": parse_op(op).family, "init": how,
                     **{k: values[k] for k in _columns(names) if k in values},
                     "seconds": time.perf_counter() - start,
                     **{k: v for k, v in values.items() if k.startswith("seconds_")}})
    columns = ["position", "op", "op_family", "init", *_columns(names), "seconds",
               *[f"seconds_{n}" for n in names]]
    return pd.DataFrame(rows, columns=columns)


def _columns(names: Sequence[str]) -> list[str]:
    return [c for n in names for c in (n, n + "_block")]
