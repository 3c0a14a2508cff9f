"""Dynamic sparsity: masked layers, DSR and comparator pruners, CSR export and sparse inference.

Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019) on `DynamicConv2d` /
`DynamicLinear`; static and gradual (Zhu & Gupta, 2017) magnitude pruning as comparators; CSR
storage (safetensors) and CSR-matmul inference. See docs/sparsity.md.
"""
from __future__ import annotations

from opswap.sparse.csr import (SparseConv2d, SparseLinear, export_csr, load_csr,
                               to_sparse_inference)
from opswap.sparse.layers import (DynamicConv2d, DynamicLinear, default_keep_dense, dynamic_layers,
                                  is_dynamic, sparsify, sparsity_report)
from opswap.sparse.pruning import (PRUNE_METHODS, check_prune_options, DSRPruner, DSRSettings, GradualPruner,
                                   GradualSettings, MaskPruner, StaticPruner, StaticSettings,
                                   make_pruner)

__all__ = [
    "DynamicConv2d", "DynamicLinear", "sparsify", "default_keep_dense", "dynamic_layers", "is_dynamic",
    "sparsity_report", "make_pruner", "check_prune_options", "PRUNE_METHODS", "MaskPruner", "DSRPruner", "StaticPruner",
    "GradualPruner", "DSRSettings", "StaticSettings", "GradualSettings", "export_csr", "load_csr",
    "to_sparse_inference", "SparseLinear", "SparseConv2d",
]
