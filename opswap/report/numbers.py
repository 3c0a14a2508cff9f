"""How report sections write numbers: mean ± sd (n), Welch's t-test, p-values."""
from __future__ import annotations

import math
import warnings

import pandas as pd
from scipy import stats

__all__ = ["MISSING", "mean_sd", "welch", "p_text"]

MISSING = "—"


def mean_sd(values: pd.Series, digits: int = 2, *, unit: str = "", n: bool = True) -> str:
    """`12.34 ± 0.56 (n=3)`; one value: `12.34 (n=1)`; none: —. `unit` follows the mean
    (`2.00× ± 0.10`); `n=False` leaves the count out."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return MISSING
    count = f" (n={len(values)})" if n else ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}{unit}{count}"
    return f"{values.mean():.{digits}f}{unit} ± {values.std(ddof=1):.{digits}f}{count}"


def welch(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Welch's t and two-sided p (`scipy.stats.ttest_ind(equal_var=False)`); NaN below two values a side."""
    a = pd.to_numeric(a, errors="coerce").dropna().to_numpy(float)
    b = pd.to_numeric(b, errors="coerce").dropna().to_numpy(float)
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return math.nan, math.nan
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value is still given
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def p_text(p: float) -> str:
    """`<0.001`, `0.042`, or — when there is no test."""
    return MISSING if p is None or not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
