"""The report's predictability section: is a swap's Δ predictable from cheap features, op and position?

Opens with one quotable verdict per epoch budget (`crossval.verdict`: the best predictor under
leave-one-position-out CV against the best naive baseline, p-values adjusted for the many
predictors by Holm or Benjamini–Hochberg), then the cross-validated errors of the predictors
beside the naive baselines (op-family mean, position mean), a predicted-vs-measured plot, the
cells predicted worst, and the noise ceiling of each budget — seed-to-seed rank agreement of the
cells (split-half, Spearman–Brown, bootstrap interval), the minimal detectable Δ at 80 % power
for the observed seed spread and the seeds a 0.5-point difference needs — against which the
predictors are judged. Δ is the tables' Δ (`opswap.analysis.delta`, via `analysis.cells`).
Pure: frames in, blocks out.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from opswap.analysis import crossval, figures, predict
from opswap.analysis.cells import cell_frame, predictor_features, seed_frame
from opswap.report.blocks import Block

__all__ = ["predictability_section", "noise_ceiling"]

CORRECTIONS = {"holm": ("p_holm", "Holm"), "bh": ("p_bh", "Benjamini–Hochberg")}
SHOWN = 8  # predictors per scheme in the table (besides the baselines)


_SCHEME_WORDS = {"position": "leave-one-position-out", "op": "leave-one-op-out",
                 "family": "leave-one-family-out", "cell": "leave-one-cell-out"}


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _budget(epochs: int) -> str:
    return "no epoch budget" if epochs < 0 else f"{epochs} epoch" + ("" if epochs == 1 else "s")


def _title(epochs: int, variant: str) -> str:
    return _budget(epochs) + (f", {variant}" if variant else "")


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _interval(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.2f}" + (f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) else "")


def noise_ceiling(seeds: pd.DataFrame, reference_n: int, *, metric: str = "test_acc", n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Seed-to-seed reliability of one budget's cells, pooled seed std, detectable Δ and seeds needed."""
    if seeds.duplicated(["position", "op", "seed"]).any():
        # Records of two settings pooled into a cell (the report's summary says so): one value per seed.
        seeds = seeds.groupby(["position", "op", "seed"], as_index=False)[metric].mean()
    rel = crossval.reliability(seeds, value=metric, n_boot=n_boot, seed=seed)
    spread = seeds.groupby(["position", "op"])[metric].agg(["var", "size"])
    spread = spread[spread["size"] >= 2]
    std = float(math.sqrt(spread["var"].mean())) if len(spread) else math.nan
    n = int(seeds.groupby(["position", "op"]).size().median()) if len(seeds) else 0
    mdd = needed = math.nan
    if np.isfinite(std) and std > 0 and n + max(reference_n, 1) >= 3:
        mdd = crossval.minimal_detectable_delta(std, n, n_ref=max(reference_n, 1))
        needed = crossval.seeds_needed(std, 0.5)
    # A perfect predictor still errs by the noise of the cell means it is scored against:
    # E|e| = σ·√(2/π) for e ~ N(0, σ²), σ = std/√n (the reference's noise is common to all cells).
    floor = math.sqrt(2 / math.pi) * std / math.sqrt(n) if np.isfinite(std) and n else math.nan
    return {"reliability": rel, "std": std, "n_seeds": n, "n_reference": reference_n, "mdd": mdd,
            "seeds_for_half_point": needed, "mae_floor": floor}


def _ceiling_row(title: str, c: dict[str, Any]) -> dict[str, str]:
    r = c["reliability"]
    return {"budget": title, "cells": str(r.n_cells), "seeds per cell": str(c["n_seeds"]),
            "ρ between two seeds": _fmt(r.pairwise),
            "split-half ρ": _fmt(r.split_half),
            "reliability of the mean (Spearman–Brown)": _interval(r.spearman_brown, r.low, r.high),
            "ceiling ρ (√reliability)": _interval(r.ceiling, r.ceiling_low, r.ceiling_high),
            "seed std (points)": _fmt(c["std"]),
            "MAE of a perfect predictor": _fmt(c["mae_floor"]),
            "minimal detectable Δ (80 % power)": _fmt(c["mdd"]),
            "seeds for a 0.5-point Δ": "—" if not np.isfinite(c["seeds_for_half_point"])
            else str(int(c["seeds_for_half_point"]))}


def _cv_table(cv: crossval.CrossValidation, correction: str, ceiling: float) -> pd.DataFrame:
    column, word = CORRECTIONS[correction]
    rows = []
    for scheme, part in cv.table.groupby("scheme", sort=False):
        part = part.dropna(subset=["mae"])
        models = part[part["kind"] != "baseline"].sort_values("mae").head(SHOWN)
        bases = part[part["kind"] == "baseline"].sort_values("mae")
        for _, r in pd.concat([models, bases]).iterrows():
            rows.append({
                "CV": _SCHEME_WORDS.get(scheme, scheme), "predictor": r["label"],
                "kind": "naive baseline" if r["kind"] == "baseline" else r["kind"],
                "MAE (points)": _fmt(r["mae"]),
                "ρ [95 % CI]": _interval(r["rho"], r["rho_low"], r["rho_high"]),
                f"p ({word})": _p(r[column]),
                "sign right": "—" if not np.isfinite(r["sign_agree"]) else f"{100 * r['sign_agree']:.0f} %",
                "vs best baseline (Wilcoxon)": "—" if r["kind"] == "baseline" or not np.isfinite(r["p_vs_baseline"])
                else _p(r["p_vs_baseline"]),
                "ρ / ceiling": "—" if not (np.isfinite(r["rho"]) and np.isfinite(ceiling) and ceiling > 0)
                else f"{r['rho'] / ceiling:.2f}"})
    return pd.DataFrame(rows)


def _judgement(cv: crossval.CrossValidation, ceiling: dict[str, Any]) -> str:
    """The best predictor under leave-one-position-out CV against the seed-to-seed ceiling and noise floor."""
    r = ceiling["reliability"]
    table = cv.table[(cv.table["scheme"] == "position") & cv.table["mae"].notna()]
    models = table[table["kind"] != "baseline"]
    if models.empty:
        return ""
    best = models.loc[models["mae"].idxmin()]
    if not np.isfinite(r.ceiling):
        return ("No noise ceiling: it needs at least 3 cells with 2 or more seeds, so the predictors cannot be "
                "judged against seed noise yet.")
    rho, mae = best["rho"], best["mae"]
    words = [f"Against the noise: seeds agree on the cells' ranking at ρ = {r.pairwise:.2f} (two single seeds), "
             f"so the ceiling for {ceiling['n_seeds']}-seed means is ρ ≈ {r.ceiling:.2f} "
             f"[{r.ceiling_low:.2f}, {r.ceiling_high:.2f}]."]
    if np.isfinite(rho):
        if np.isfinite(r.ceiling_low) and r.ceiling_low > 0 and rho < r.ceiling_low:
            words.append(f"The best predictor's ρ = {rho:.2f} is below that interval: the ranking of the cells is "
                         "more reproducible than this predictor, so a better one could show it.")
        else:
            share = f" ({rho / r.ceiling:.0%} of the ceiling's point estimate)" if r.ceiling > 0 else ""
            words.append(f"The best predictor's ρ = {rho:.2f}{share} is within what seed noise allows: it cannot "
                         "be told from a perfect predictor, nor, when the interval reaches 0, from none.")
    floor = ceiling["mae_floor"]
    if np.isfinite(floor):
        where = "at the noise floor" if mae <= 1.2 * floor else f"{mae / floor:.1f}× the noise floor"
        words.append(f"Its MAE {mae:.2f} is {where}: a perfect predictor would err by about {floor:.2f} points "
                     f"against means of {ceiling['n_seeds']} seeds with std {ceiling['std']:.2f}.")
    if np.isfinite(ceiling["mdd"]):
        words.append(f"One cell's Δ is resolved only to ±{ceiling['mdd']:.2f} points (minimal detectable Δ, 80 % "
                     f"power, α = 0.05, {ceiling['n_seeds']} against {ceiling['n_reference']} reference seeds); "
                     f"a 0.5-point difference needs {int(ceiling['seeds_for_half_point'])} seeds per arm.")
    return " ".join(words)


def _features_table(features: pd.DataFrame | None, used: list[str]) -> Block | None:
    if features is None:
        return None
    meta = features.attrs.get("meta", {})
    seconds = meta.get("seconds_per_pair", {})
    settings = meta.get("settings", {})
    rows = [{"part": "all features", "seconds per pair": _fmt(seconds.get("total"), 3)},
            {"part": "zero-cost proxies (" + ", ".join(settings.get("proxies", [])) + "; "
             + " and ".join(settings.get("init", [])) + " init)", "seconds per pair": _fmt(seconds.get("proxies"), 3)},
            {"part": f"held-out distillation loss ({meta.get('heldout_split', '?')} images)",
             "seconds per pair": _fmt(seconds.get("heldout"), 3)},
            {"part": "params and MACs", "seconds per pair": _fmt(seconds.get("complexity"), 3)}]
    rows += [{"part": f"  proxy {k[len('proxy_'):]}", "seconds per pair": _fmt(v, 3)}
             for k, v in seconds.items() if k.startswith("proxy_")]
    caption = (f"cheap features of {meta.get('pairs', len(features))} pairs, computed once after the bank on "
               f"{meta.get('device', '?')} ({meta.get('threads', '?')} threads); the predictors used "
               f"{len(used)} features: {', '.join(used)}")
    return Block("table", pd.DataFrame(rows), caption)


def _scheme_ok(cells: pd.DataFrame) -> list[str]:
    return [s for s in ("position", "op") if cells[crossval.SCHEMES[s]].nunique() >= 3]


def predictability_section(frame: pd.DataFrame, features: pd.DataFrame | None = None, *,
                           metric: str = "test_acc", correction: str = "holm", n_boot: int = 1000,
                           seed: int = 0) -> list[Block]:
    """The blocks of the "Predictability" section of a substitution report.

    Cells are predicted within one network: a frame holding several (one model on two datasets,
    records of two studies' models) gets the analysis once per network, each under its name.
    """
    from opswap.analysis.tables import labelled

    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be 'holm' or 'bh', not {correction!r}")
    units = labelled(frame)["unit"] if len(frame) else pd.Series([], dtype=object)
    networks = [u for u in units.unique() if u != "methods"]
    if len(networks) < 2:
        return _one_network(frame, features, metric=metric, correction=correction, n_boot=n_boot, seed=seed)
    blocks = []
    for network in networks:
        # The study's cheap features describe its own network; the others are analysed without them.
        tag = re.sub(r"[^a-z0-9]+", "-", network.lower()).strip("-")
        blocks.append(Block("text", f"Network {network}:"))
        blocks += [dataclasses.replace(b, name=f"{tag}-{b.name}") if b.kind == "figure" else b
                   for b in _one_network(frame.loc[units.index[units == network]], None, metric=metric,
                                         correction=correction, n_boot=n_boot, seed=seed)]
    return blocks


def _one_network(frame: pd.DataFrame, features: pd.DataFrame | None, *, metric: str, correction: str,
                 n_boot: int, seed: int) -> list[Block]:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be 'holm' or 'bh', not {correction!r}")
    cells_all = cell_frame(frame, features, metric=metric)
    seeds_all = seed_frame(frame, metric)
    if cells_all.empty:
        return [Block("text", "No finished swapped cell yet: nothing to predict.")]
    from opswap.analysis.delta import reference_values
    from opswap.analysis.tables import labelled

    data = labelled(frame)
    refs = reference_values(data, metric)
    blocks, ceilings, verdicts, features_block = [], [], [], None
    word = CORRECTIONS[correction][1]
    for (epochs, variant), cells in cells_all.groupby(["epochs", "variant"], sort=True):
        title = _title(epochs, variant)
        cells = cells[cells["delta"].notna()].reset_index(drop=True)
        seeds = seeds_all[(seeds_all["epochs"] == epochs) & (seeds_all["variant"] == variant)]
        ref_n = _reference_n(data, refs, epochs)
        ceiling = noise_ceiling(seeds, ref_n, metric=metric, n_boot=n_boot, seed=seed)
        ceilings.append(_ceiling_row(title, ceiling))
        schemes = _scheme_ok(cells)
        if len(schemes) < 2 or len(cells) < 4:
            verdicts.append(Block("text", f"{title}: cross-validation needs finished cells at ≥ 3 positions and "
                                  f"of ≥ 3 ops; there are {cells['position'].nunique()} positions and "
                                  f"{cells['op'].nunique()} ops in {len(cells)} cells."))
            continue
        prepared, used = predictor_features(cells)
        cv = crossval.cross_validate(prepared, used, schemes=schemes, seed=seed, n_boot=n_boot)
        m = int((cv.table["scheme"] == "position").sum())
        rel = ceiling["reliability"]
        words = [crossval.verdict(cv.table, rel, scheme=s, correction=correction) for s in schemes]
        verdicts.append(Block("text", f"{title}: " + " ".join(words) + f" ({word} correction over the {m} "
                              f"predictors of each scheme; {len(used)} cheap features, position and op family.)"))
        body = [Block("table", _cv_table(cv, correction, rel.ceiling),
                      f"{title}: out-of-fold error of Δ (points) — the {SHOWN} best predictors of each scheme by "
                      f"MAE and the naive baselines ({m} predictors tried per scheme); ρ / ceiling above 1 means the "
                      "ceiling itself is uncertain (see the noise-ceiling table)")]
        bests = {s: _best(cv, s) for s in schemes}
        body.append(Block("figure", figures.predicted_vs_measured(cv.predictions, bests, title=title),
                          f"{title}: out-of-fold predicted against measured Δ, the best predictor of each "
                          "CV scheme; dashed: perfect prediction", _name("predicted-vs-measured", epochs, variant)))
        wrong = cv.most_wrong(5, scheme="position", predictor=bests["position"])
        if len(wrong):
            body.append(Block("table", pd.DataFrame({
                "position": wrong["position"].astype(int), "op": wrong["op"], "n seeds": wrong["n"],
                "measured Δ": wrong["delta"].map(_fmt), "predicted Δ": wrong["predicted"].map(_fmt),
                "error": wrong["error"].map(lambda v: f"{v:+.2f}")}),
                f"{title}: the cells where the best predictor, {_label(cv, bests['position'])}, erred most "
                "(leave-one-position-out)"))
        judged = _judgement(cv, ceiling)
        if judged:
            body.append(Block("text", judged))
        blocks += body
        features_block = _features_table(features, used)
    ceiling_block = Block("table", pd.DataFrame(ceilings), "noise ceiling per epoch budget: how well seeds agree "
                          "on the cells' ranking (split-half with the Spearman–Brown correction, bootstrap 95 % "
                          "interval over cells) and the smallest Δ a cell can resolve (Welch/Student t-test, "
                          "noncentral t, α = 0.05)")
    return [*verdicts, *blocks, ceiling_block, *([features_block] if features_block else []),
            *_rank_blocks(frame, metric)]


def _reference_n(data: pd.DataFrame, refs: dict, epochs: int) -> int:
    rows = data[pd.to_numeric(data["epochs"], errors="coerce").fillna(-1).astype(int) == epochs]
    sizes = [len(refs[i]) for i in rows.index if i in refs]
    return max(sizes) if sizes else 0


def _best(cv: crossval.CrossValidation, scheme: str) -> str:
    t = cv.table[(cv.table["scheme"] == scheme) & (cv.table["kind"] != "baseline") & cv.table["mae"].notna()]
    return str(t.loc[t["mae"].idxmin(), "predictor"])


def _label(cv: crossval.CrossValidation, name: str) -> str:
    labels = cv.table.loc[cv.table["predictor"] == name, "label"]
    return f"{labels.iloc[0]}" if len(labels) else name


def _name(stem: str, epochs: int, variant: str) -> str:
    tail = "".join(ch if ch.isalnum() else "-" for ch in variant).strip("-")
    return f"{stem}-{epochs}ep" + (f"-{tail}" if tail else "")


def _rank_blocks(frame: pd.DataFrame, metric: str) -> list[Block]:
    """The plain rank statistics of accuracy against each recorded predictor (no fitting)."""
    if not len(predict.points(frame, metric)):
        return []
    stats = predict.format_predictability(predict.predictability(frame, metric))
    return [Block("text", "Rank statistics without fitting: Spearman ρ and Kendall τ (bootstrap 95 % interval) "
                  "of test accuracy over (position, candidate) cells, seed means; Kruskal–Wallis H with ε² for "
                  "the categorical predictors."),
            Block("table", stats, "rank statistics of test accuracy against each predictor"),
            Block("figure", figures.predictor_scatter(frame), "test accuracy against predictors", "predictors")]
