"""The one "Δ vs reference": a cell's mean minus the mean of the reference trained the same way.

The reference is the unmodified dense network (or, in a methods study, the method it names),
trained for the same epochs, on the same share of the data, and the same way: from scratch for
a candidate trained from scratch, fine-tuned from the teacher otherwise. When no reference was
trained exactly so, the closest one is used, in this order: same share and init kind, same
share, same init kind, any. Tables, the predictability analysis, the predictors and assembly
all use this module, so they never disagree about a cell.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["reference_values", "with_delta"]


def _unit(data: pd.DataFrame) -> pd.Series:
    """Substitutions compare within one network (model and dataset, `tables.network_names`); the
    methods of a methods study with each other."""
    if "unit" in data:
        return data["unit"].astype(str)
    return pd.Series(np.where(data["row"] == "methods", "methods", data["model"].astype(str)), index=data.index)


def _scratch(data: pd.DataFrame) -> pd.Series:
    return data["init"].fillna("teacher").eq("scratch") if "init" in data else pd.Series(False, data.index)


def reference_values(data: pd.DataFrame, metric: str = "test_acc") -> dict:
    """For each row of a `tables.labelled` frame, the reference's finished values of `metric`."""
    unit, scratch = _unit(data), _scratch(data)
    fraction = data["data_fraction"].fillna(1.0) if "data_fraction" in data else pd.Series(1.0, data.index)
    epochs = data["epochs"].fillna(-1)
    ok = (data["status"] == "ok") & data[metric].notna() & data["is_reference"]
    out: dict = {}
    for (e, u), group in data.groupby([epochs, unit], sort=False):
        refs = group[ok.loc[group.index]]
        r_fraction, r_scratch = fraction.loc[refs.index], scratch.loc[refs.index]
        cache: dict = {}
        for index in group.index:
            key = (fraction.loc[index], bool(scratch.loc[index]))
            if key not in cache:
                f, s = key
                pick = next((m for m in ((r_fraction == f) & (r_scratch == s), r_fraction == f, r_scratch == s)
                             if m.any()), r_fraction.notna())
                cache[key] = refs.loc[pick, metric].to_numpy(float)
            out[index] = cache[key]
    return out


def with_delta(data: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """`data` (a labelled frame) with `reference_mean` and `delta` = metric − reference_mean per trial."""
    refs = reference_values(data, metric)
    data = data.copy()
    data["reference_mean"] = [refs[i].mean() if len(refs.get(i, ())) else math.nan for i in data.index]
    data["delta"] = pd.to_numeric(data[metric], errors="coerce") - data["reference_mean"]
    return data
