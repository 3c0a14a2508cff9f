"""The candidate-operation registry (DESIGN.md, "Candidate operations").

An op is built by `factory(c_in, c_out, stride, **params)` and maps a block's input to its
output: the residual stream, which can be negative, so no candidate ends in an activation.
Parameters are part of the name (`mbconv_e3_k5`, `conv_bn_e4`) or passed as keywords; every op
has one canonical name with all its parameters spelled out (`mbconv` → `mbconv_e6_k3`).
The registry is a plain dict behind a decorator, as in timm.
"""
from __future__ import annotations

import difflib
import functools
import fnmatch
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from opswap.models.wrn import WRNBlock, conv1x1, conv3x3

__all__ = ["OpError", "OpInfo", "OpSpec", "register_op", "list_ops", "get_op", "parse_op", "create_op",
           "check_op", "MAX_OP_PARAMS", "DEFAULT_CANDIDATES", "op_family"]

MAX_OP_PARAMS = 1_000_000_000  # the largest op built by name (as opswap.models.MAX_PARAMS for models)


class OpError(ValueError):
    """A request for an operation that does not exist or does not fit."""


@dataclass(frozen=True)
class OpInfo:
    """A registered op: its factory, parameter defaults and shape rule."""

    name: str
    factory: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    same_shape_only: bool = False
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    """A resolved op: registry family, full parameters, and its canonical name."""

    family: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.family + "".join(f"_{k}{_fmt(v)}" for k, v in self.params)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


_REGISTRY: dict[str, OpInfo] = {}

# The seven candidates of the operation-substitution study, in the papers' order.
DEFAULT_CANDIDATES = ("baseline", "identity", "mbconv_e6_k3", "conv_bn_e1", "conv_bn_e2", "resnet_e2",
                      "bottleneck_e2")


def _fmt(v: Any) -> str:
    return str(v).replace(".", "p") if isinstance(v, float) else str(v)


def register_op(name: str, *, same_shape_only: bool = False):
    """Decorator registering `factory(c_in, c_out, stride, **params)` under `name`.

    Keyword-only parameters of the factory, with their defaults, become the op's parameters
    (spelled in names as `_<key><value>`). A duplicate name is an error.
    """
    if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*", name) or re.search(r"_[a-z]+\d", name):
        raise OpError(f"invalid op name {name!r}: use lower-case words joined by '_' and no "
                      "'_<letter><digit>' parts (those spell parameters, e.g. 'mbconv_e6_k3')")

    def decorator(factory: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise OpError(f"an op named {name!r} is already registered; choose another name")
        sig = inspect.signature(factory)
        positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 3:
            raise OpError(f"op {name!r}: the factory must take (c_in, c_out, stride, **params)")
        defaults = {p.name: p.default for p in sig.parameters.values()
                    if p.kind == p.KEYWORD_ONLY}
        missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
        if missing:
            raise OpError(f"op {name!r}: keyword parameters need defaults: {missing}")
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = OpInfo(name, factory, defaults, same_shape_only, doc)
        return factory

    return decorator


def list_ops(pattern: str | None = None) -> list[str]:
    """Registered op names (families), optionally filtered with an fnmatch pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_op(name: str) -> OpInfo:
    """The registry entry of a family name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OpError(_unknown(name)) from None


def _unknown(name: str) -> str:
    known = list(dict.fromkeys(list_ops() + list(DEFAULT_CANDIDATES)))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown op {name!r}.{hint} Registered ops: {', '.join(list_ops())}."


def _coerce(op: str, key: str, value: Any, default: Any) -> Any:
    """Check a parameter value against its default's type (ints stay ints)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        raise OpError(f"op {op!r}: parameter {key!r} must be {type(default).__name__} "
                      f"(default {default!r}), got {value!r}")
    return value


def parse_op(spec: str | tuple | OpSpec, **params: Any) -> OpSpec:
    """Resolve `"mbconv_e3_k5"`, `("mbconv", {"e": 3})` or a name plus keywords to an OpSpec."""
    if isinstance(spec, OpSpec):
        return parse_op(spec.family, **{**spec.kwargs, **params})
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[1], dict):
            raise OpError(f"an op given as a pair must be (name, params_dict), got {spec!r}")
        return parse_op(spec[0], **{**spec[1], **params})
    if not isinstance(spec, str):
        raise OpError(f"an op must be a registry name, (name, params) or nn.Module, got {type(spec).__name__}")
    name = spec.strip().lower()
    # Longest registered family that prefixes the name; the rest spells parameters.
    family = next((f for f in sorted(_REGISTRY, key=len, reverse=True)
                   if name == f or name.startswith(f + "_")), None)
    if family is None:
        raise OpError(_unknown(name))
    info = _REGISTRY[family]
    values: dict[str, Any] = {}
    rest = name[len(family):]
    for token in filter(None, rest.split("_")):
        m = re.fullmatch(r"([a-z]+)(\d+(?:p\d+)?)", token)
        if not m or m.group(1) not in info.defaults:
            allowed = ", ".join(f"{k} (default {v!r})" for k, v in info.defaults.items()) or "none"
            raise OpError(f"op {spec!r}: cannot read parameter {token!r}; parameters of "
                          f"{family!r}: {allowed}")
        key, raw = m.groups()
        default = info.defaults[key]
        values[key] = float(raw.replace("p", ".")) if isinstance(default, float) else int(raw.replace("p", "."))
    for key, value in params.items():
        if key not in info.defaults:
            allowed = ", ".join(info.defaults) or "none"
            raise OpError(f"op {family!r} has no parameter {key!r}; its parameters: {allowed}")
        if key in values and values[key] != value:
            raise OpError(f"op {spec!r}: parameter {key!r} given twice ({values[key]!r} and {value!r})")
        values[key] = value
    full = tuple((k, _coerce(family, k, values.get(k, d), d)) for k, d in info.defaults.items())
    return OpSpec(family, full)


def op_family(spec: str | tuple | OpSpec) -> str:
    """The registry family of an op name (`"mbconv_e3_k5"` → `"mbconv"`)."""
    return parse_op(spec).family


def check_op(name: str | tuple | OpSpec, c_in: int, c_out: int, stride: int = 1, **params: Any) -> OpSpec:
    """Refuse, without allocating anything, an op that cannot be built for this shape contract.

    The op is built on PyTorch's meta device (shapes only, no memory), so a parameter its factory
    refuses (`mbconv_e0`) and a size no machine holds (`bottleneck_e99999999`: over
    `MAX_OP_PARAMS` parameters) are refused in milliseconds, before any work starts. A factory
    that cannot run on the meta device is checked when it is really built. (A factory therefore
    runs once more, on the meta device, the first time an op is asked for at a shape.)
    """
    spec = parse_op(name, **params)
    info = _REGISTRY[spec.family]
    if info.same_shape_only and (c_in != c_out or stride != 1):
        raise OpError(f"op {spec.name!r} needs c_in == c_out and stride 1 (it cannot change the "
                      f"shape), but this position maps {c_in}→{c_out} channels with stride {stride}")
    count = _meta_params(spec, c_in, c_out, stride)
    if count is not None and count > MAX_OP_PARAMS:
        raise OpError(f"op {spec.name!r} would have {count:.2g} parameters at this position ({c_in}→{c_out} "
                      f"channels; {4 * count / 2**30:,.0f} GiB in fp32), over the {MAX_OP_PARAMS:.0e} an op is "
                      "built with; choose smaller parameters")
    return spec


@functools.lru_cache(maxsize=4096)
def _meta_params(spec: OpSpec, c_in: int, c_out: int, stride: int) -> int | None:
    """The op's parameter count, built on the meta device; None when its factory needs real
    tensors there (numpy conversion, `.item()`): it is then checked when really built. The
    factory's own refusals (OpError, ValueError) and sizes past 2**63 bytes are raised."""
    try:
        with torch.device("meta"):
            module = _REGISTRY[spec.family].factory(c_in, c_out, stride, **spec.kwargs)
    except OpError:
        raise
    except Exception as err:  # noqa: BLE001 - what a factory raises on the meta device varies
        text = str(err)
        if "overflow" in text.lower():  # a tensor whose byte size does not fit in 64 bits
            raise OpError(f"op {spec.name!r} is too large to build at this position ({c_in}→{c_out} channels: "
                          "a tensor of it would exceed 2**63 bytes); choose smaller parameters") from err
        if isinstance(err, ValueError) and "meta" not in text:  # the factory refused its parameters
            raise OpError(f"op {spec.name!r} cannot be built for {c_in}→{c_out} channels, stride {stride}: "
                          f"{text}") from err
        return None
    return sum(p.numel() for p in module.parameters())


def create_op(name: str | tuple | OpSpec, c_in: int, c_out: int, stride: int = 1, **params: Any) -> nn.Module:
    """Build an op for a position with the given shape contract (checked first: `check_op`)."""
    spec = check_op(name, c_in, c_out, stride, **params)
    return _REGISTRY[spec.family].factory(c_in, c_out, stride, **spec.kwargs)


# ---------------------------------------------------------------------------------------------
# The seven candidates of DESIGN.md. `proj` = identity when shapes match, else conv1x1(stride)+BN.

def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _proj(c_in: int, c_out: int, stride: int) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return nn.Sequential(conv1x1(c_in, c_out, stride), _bn(c_out))


class Residual(nn.Module):
    """body(x) + shortcut(x): the skip that mbconv, resnet and bottleneck ops share."""

    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _check_positive(op: str, **values: int) -> None:
    for key, v in values.items():
        if v < 1:
            raise OpError(f"op {op!r}: parameter {key!r} must be >= 1, got {v}")


@register_op("baseline")
def baseline(c_in: int, c_out: int, stride: int) -> nn.Module:
    """The WRN pre-activation basic block."""
    return WRNBlock(c_in, c_out, stride)


@register_op("identity", same_shape_only=True)
def identity(c_in: int, c_out: int, stride: int) -> nn.Module:
    """x (only where c_in = c_out and stride = 1)."""
    return nn.Identity()


@register_op("mbconv")
def mbconv(c_in: int, c_out: int, stride: int, *, e: int = 6, k: int = 3) -> nn.Module:
    """MobileNetV2 inverted residual: expand 1x1, depthwise kxk, project 1x1; skip when shapes match."""
    _check_positive("mbconv", e=e, k=k)
    if k % 2 == 0:
        raise OpError(f"op 'mbconv': kernel size k must be odd, got {k}")
    hidden = e * c_in
    layers: list[nn.Module] = []
    if e != 1:
        layers += [conv1x1(c_in, hidden), _bn(hidden), nn.ReLU6(inplace=True)]
    layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), _bn(hidden),
               nn.ReLU6(inplace=True), conv1x1(hidden, c_out), _bn(c_out)]
    body = nn.Sequential(*layers)
    return Residual(body, nn.Identity()) if c_in == c_out and stride == 1 else body


def _conv_bn_body(c_in: int, c_out: int, stride: int, e: int) -> nn.Sequential:
    mid = e * c_out
    return nn.Sequential(conv3x3(c_in, mid, stride), _bn(mid), nn.ReLU(inplace=True), conv3x3(mid, c_out), _bn(c_out))


@register_op("conv_bn")
def conv_bn(c_in: int, c_out: int, stride: int, *, e: int = 1) -> nn.Module:
    """conv3x3 → e·c_out (stride), BN, ReLU, conv3x3 → c_out, BN; no skip."""
    _check_positive("conv_bn", e=e)
    return _conv_bn_body(c_in, c_out, stride, e)


@register_op("resnet")
def resnet(c_in: int, c_out: int, stride: int, *, e: int = 2) -> nn.Module:
    """conv_bn with expansion e, + proj(x)."""
    _check_positive("resnet", e=e)
    return Residual(_conv_bn_body(c_in, c_out, stride, e), _proj(c_in, c_out, stride))


@register_op("bottleneck")
def bottleneck(c_in: int, c_out: int, stride: int, *, e: int = 2) -> nn.Module:
    """conv1x1 → e·c_out, BN, ReLU, conv3x3 (stride), BN, ReLU, conv1x1 → c_out, BN; + proj(x)."""
    _check_positive("bottleneck", e=e)
    mid = e * c_out
    body = nn.Sequential(conv1x1(c_in, mid), _bn(mid), nn.ReLU(inplace=True),
                         conv3x3(mid, mid, stride), _bn(mid), nn.ReLU(inplace=True),
                         conv1x1(mid, c_out), _bn(c_out))
    return Residual(body, _proj(c_in, c_out, stride))


def ops_table() -> list[dict]:
    """One row per registered op: name, parameters with defaults, default canonical name, doc."""
    rows = []
    for name in list_ops():
        info = get_op(name)
        rows.append({
            "op": name,
            "params": ", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "-",
            "default": parse_op(name).name,
            "shape": "c_in=c_out, stride 1 only" if info.same_shape_only else "any",
            "description": info.doc,
        })
    return rows
