"""The prune methods by name: `make_pruner`, their settings and `PRUNE_METHODS` (docs/sparsity.md).

dsr, static and gradual (`pruning.py`) mask single weights; channel (`channel.py`) masks whole
channels and ends in a physically smaller network; nm (`nm.py`) keeps N of every M weights.
"""
from __future__ import annotations

from torch import nn

from opswap.sparse.channel import ChannelPruner, ChannelSettings
from opswap.sparse.layers import dynamic_layers
from opswap.sparse.nm import NMPruner, NMSettings
from opswap.sparse.pruning import (DSRPruner, DSRSettings, GradualPruner, GradualSettings, MaskPruner,
                                   StaticPruner, StaticSettings, _settings)

__all__ = ["PRUNE_METHODS", "check_prune_options", "make_pruner"]

PRUNE_METHODS = ("dsr", "static", "gradual", "channel", "nm", "none")


def check_prune_options(method: str, options: dict) -> None:
    """Raise ValueError naming the allowed options when `options` do not fit `method`."""
    method = str(method).lower()
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown prune method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    if method == "none":
        if options:
            raise ValueError(f"prune method 'none' takes no options, got {sorted(options)}")
        return
    options = {k: v for k, v in options.items() if not (method == "channel" and k == "example_input")}
    try:
        _settings(_settings_class(method), method, options)
    except TypeError as err:
        raise ValueError(f"prune method {method!r}: {err}") from None


def _settings_class(method: str):
    return {"dsr": DSRSettings, "static": StaticSettings, "gradual": GradualSettings, "channel": ChannelSettings,
            "nm": NMSettings}[method]


def make_pruner(method: str, model: nn.Module, sparsity: float, total_steps: int,
                **options) -> MaskPruner:
    """A pruner for `model`: dsr, static, gradual, nm (after `sparsify`), channel, or none.

    "channel" needs no `sparsify` (it masks whole channels of the dense layers; `sparsity` is the
    fraction of each prunable group's channels) and takes `example_input` besides its settings;
    "nm" needs `sparsity` = 1 - n/m (0.5 for 2:4).
    """
    method = str(method).lower()
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown prune method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if method == "none":
        if options:
            raise ValueError(f"prune method 'none' takes no options, got {sorted(options)}")
        return MaskPruner(model, sparsity, total_steps)
    if method == "channel":
        example_input = options.pop("example_input", None)
        settings = _settings(_settings_class(method), method, options)
        return ChannelPruner(model, sparsity, total_steps, settings, example_input=example_input)
    if not dynamic_layers(model):
        raise ValueError(f"prune method {method!r}: the model has no DynamicConv2d/DynamicLinear "
                         "layers; convert it first with opswap.sparse.sparsify(model, sparsity)")
    if method == "dsr":
        return DSRPruner(model, sparsity, total_steps, _settings(DSRSettings, method, options))
    if method == "nm":
        settings = _settings(_settings_class(method), method, options)
        if abs(float(sparsity) - settings.sparsity) > 1e-6:
            raise ValueError(f"prune method 'nm' with n={settings.n}, m={settings.m} has sparsity "
                             f"{settings.sparsity:g} (1 - n/m); got sparsity={sparsity!r}")
        return NMPruner(model, sparsity, total_steps, settings)
    if method == "static":
        return StaticPruner(model, sparsity, total_steps, _settings(StaticSettings, method, options))
    return GradualPruner(model, sparsity, total_steps, _settings(GradualSettings, method, options))
