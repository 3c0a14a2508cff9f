"""opswap: operation-substitution studies on convolutional networks.

Swap the block at position p of a (trained) network for a candidate operation, initialise it by
LANA-style block distillation, optionally make it dynamically sparse (DSR), train, and compare.
"""
from __future__ import annotations

import importlib

from opswap._version import __version__

# Public names and the modules that define them; imported on first use so that
# `opswap --help` and `import opswap` stay fast.
_LAZY = {
    "build_model": "opswap.models",
    "list_models": "opswap.models",
    "positions": "opswap.substitution",
    "valid_ops": "opswap.substitution",
    "swap": "opswap.substitution",
    "complexity": "opswap.substitution",
    "list_ops": "opswap.ops",
    "create_op": "opswap.ops",
    "register_op": "opswap.ops",
    "load_dataset": "opswap.data",
    "TrainConfig": "opswap.training",
    "train": "opswap.training",
    "evaluate": "opswap.training",
    "measure_latency": "opswap.training",
    "TrialSpec": "opswap.run",
    "run_trial": "opswap.run",
    "distill_bank": "opswap.distill",
    "WeightBank": "opswap.distill",
    "load_study": "opswap.study",
    "run_study": "opswap.study",
    "write_report": "opswap.report",
    "ReportContext": "opswap.report",
    "load_results": "opswap.analysis.results",
    "load_history": "opswap.analysis.results",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'opswap' has no attribute {name!r}")


def __dir__():
    return __all__
