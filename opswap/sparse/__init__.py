"""Sparsity: masked layers, DSR and comparator pruners, channel and N:M pruning, sparse inference.

Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019) on `DynamicConv2d` /
`DynamicLinear`; static and gradual (Zhu & Gupta, 2017) magnitude pruning as comparators;
channel pruning with Torch-Pruning's DependencyGraph (Fang et al., CVPR 2023), static or
dynamic; N:M patterns (2:4); CSR storage (safetensors), CSR-matmul inference, and a deployed
form chosen per layer by measurement. See docs/sparsity.md.
"""
from __future__ import annotations

from opswap.sparse.channel import ChannelPruner, ChannelSettings, channel_prune
from opswap.sparse.csr import SparseConv1x1, SparseConv2d, SparseLinear, export_csr, load_csr
from opswap.sparse.deploy import choose_forms, deployed_report, to_sparse_inference
from opswap.sparse.layers import (DynamicConv2d, DynamicLinear, default_keep_dense, dynamic_layers,
                                  is_dynamic, sparsify, sparsity_report)
from opswap.sparse.nm import NMPruner, NMSettings, is_nm, nm_mask, to_semi_structured
from opswap.sparse.methods import PRUNE_METHODS, check_prune_options, make_pruner
from opswap.sparse.pruning import (DSRPruner, DSRSettings, GradualPruner, GradualSettings, MaskPruner, StaticPruner,
                                   StaticSettings)

__all__ = [
    "DynamicConv2d", "DynamicLinear", "sparsify", "default_keep_dense", "dynamic_layers", "is_dynamic",
    "sparsity_report", "make_pruner", "check_prune_options", "PRUNE_METHODS", "MaskPruner", "DSRPruner", "StaticPruner",
    "GradualPruner", "DSRSettings", "StaticSettings", "GradualSettings", "export_csr", "load_csr",
    "to_sparse_inference", "SparseLinear", "SparseConv2d", "SparseConv1x1",
    "channel_prune", "ChannelPruner", "ChannelSettings", "NMPruner", "NMSettings", "nm_mask", "is_nm",
    "to_semi_structured", "choose_forms", "deployed_report",
]
