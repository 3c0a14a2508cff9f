"""Analysis of study results: tidy frames, paper tables with statistics, predictability, figures.

Submodules: `results` (records → DataFrames), `tables` (the papers' tables, Welch's t-test against
the baseline), `predict` (rank correlations of accuracy with its predictors), `figures`
(seaborn), `traditional` (hand-crafted features + a linear classifier, for method comparison).
"""
from opswap.analysis.results import export, load_history, load_results

__all__ = ["export", "load_history", "load_results"]
