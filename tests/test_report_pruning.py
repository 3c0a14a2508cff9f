"""The report's pruning section: each variant against the same network dense — accuracy with
Welch's test, deployed latency and the in-trial speed-up, stored bytes."""
import math

import pandas as pd
import pytest
from scipy import stats

from opswap.report.blocks import Block
from opswap.report.pruning import is_pruning, pruning_blocks, pruning_frame, pruning_table


def row(method, prune, sparsity, seed, acc, *, op="baseline", position=None, lat=1.0, dense_ms=None,
        deployed_ms=None, batch=None, dense_batch=None, deployed_bytes=None, params=1000, status="ok"):
    return {"trial_id": f"{method}-{op}-{position}-{seed}", "status": status, "kind": "train", "model": "tf-cnn",
            "dataset": "npz", "data_fraction": 1.0, "epochs": 10, "position": position, "op": op,
            "init": "scratch" if position is None else "lana", "seed": seed, "method": method,
            "prune": prune, "sparsity": sparsity, "test_acc": acc, "latency_ms_b1": lat,
            "latency_ms_batch": 100 * lat, "deployed_ms_b1": deployed_ms, "dense_ms_b1": dense_ms,
            "deployed_ms_batch": batch, "dense_ms_batch": dense_batch, "dense_bytes": 4 * params,
            "csr_bytes": None, "deployed_bytes": deployed_bytes}


@pytest.fixture
def frame():
    rows = [row("dense", "none", 0.0, s, a, lat=2.0) for s, a in enumerate([60.0, 61.0, 62.0])]
    rows += [row("channel 0.5", "channel", 0.5, s, a, lat=2.0, dense_ms=2.0, deployed_ms=d, batch=b,
                 dense_batch=200.0, deployed_bytes=2000)
             for s, (a, d, b) in enumerate([(59.0, 1.0, 100.0), (60.5, 1.25, 80.0), (61.0, 0.8, 100.0)])]
    rows += [row("dsr 0.9", "dsr", 0.9, s, a, lat=2.1, dense_ms=2.0, deployed_ms=2.0, batch=200.0,
                 dense_batch=200.0, deployed_bytes=4000) for s, a in enumerate([55.0, 54.0])]
    rows.append(row("dsr 0.9", "dsr", 0.9, 2, None, status="failed"))  # not finished: left out
    return pd.DataFrame(rows)


def test_each_variant_is_tested_against_dense_with_its_measured_costs(frame):
    assert is_pruning(frame) and not is_pruning(frame[frame["prune"] == "none"])
    table = pruning_table(frame).set_index("variant")
    assert list(table.index) == ["dense", "channel 0.5", "dsr 0.9"]
    channel, dsr, dense = table.loc["channel 0.5"], table.loc["dsr 0.9"], table.loc["dense"]
    assert dense["test acc (%)"] == "61.00 ± 1.00 (n=3)" and dense["p"] == "—"
    assert channel["test acc (%)"] == "60.17 ± 1.04 (n=3)"
    assert channel["Δ vs dense (pts)"] == "-0.83"
    t, p = stats.ttest_ind([59.0, 60.5, 61.0], [60.0, 61.0, 62.0], equal_var=False)
    assert channel["Welch t"] == f"{t:+.2f}" and channel["p"] == f"{p:.3f}"
    # speed-up inside each trial: mean of 2/1, 2/1.25, 2/0.8 = (2 + 1.6 + 2.5) / 3
    assert channel["speed-up b1"].startswith(f"{(2 + 1.6 + 2.5) / 3:.2f}×")
    assert channel["speed-up batch"].startswith(f"{(2 + 2.5 + 2) / 3:.2f}×")
    assert channel["latency b1 (ms)"] == "1.017 ± 0.225 (n=3)"  # the deployed form's, not the masked model's
    assert channel["bytes vs dense"] == "0.50×" and channel["stored"] == "2.0 kB"
    assert dsr["n"] == 2 and dsr["Δ vs dense (pts)"] == "-6.50" and dsr["speed-up b1"] == "1.00× ± 0.00"
    assert dense["speed-up b1"] == "1.00× ± 0.00" and dense["bytes vs dense"] == "1.00×"


def test_variants_meet_only_their_own_dense_counterpart(frame):
    other = [row("dense", "none", 0.0, s, 70.0 + s, op="mbconv", position=3) for s in range(2)]
    other += [row("channel 0.5", "channel", 0.5, s, 69.0 + s, op="mbconv", position=3, dense_ms=1.0,
                  deployed_ms=0.5, deployed_bytes=1000) for s in range(2)]
    table = pruning_table(pd.concat([frame, pd.DataFrame(other)], ignore_index=True))
    at3 = table[table["network"].str.contains("position 3")].set_index("variant")
    assert at3.loc["channel 0.5", "Δ vs dense (pts)"] == "-1.00"  # vs 70.5, not vs the whole network's 61
    assert at3.loc["channel 0.5", "speed-up b1"] == "2.00× ± 0.00"
    assert set(table["network"]) == {"tf-cnn · npz · 10 epochs", "tf-cnn · npz · position 3 · mbconv · lana · 10 epochs"}


def test_without_a_dense_counterpart_the_section_says_so(frame):
    blocks = pruning_blocks(frame[frame["prune"] != "none"])
    assert all(isinstance(b, Block) for b in blocks)
    assert any(b.kind == "text" and "no dense counterpart" in b.content for b in blocks)
    table = next(b.content for b in blocks if b.kind == "table")
    assert (table["Δ vs dense (pts)"] == "—").all() and (table["p"] == "—").all()
    assert [b.kind for b in blocks].count("figure") == 1


def test_a_variant_never_deployed_falls_back_to_the_masked_model_latency(frame):
    frame = frame.copy()
    frame.loc[frame["prune"] == "dsr", ["deployed_ms_b1", "dense_ms_b1", "deployed_bytes"]] = None
    data = pruning_frame(frame)
    dsr = data[data["variant"] == "dsr 0.9"]
    assert (dsr["latency_b1"] == 2.1).all() and dsr["speedup_b1"].isna().all()
    assert (dsr["stored_bytes"] == 4000).all()  # no CSR, no deployed form: dense bytes
    assert math.isnan(pd.to_numeric(dsr["speedup_b1"]).mean())


def test_the_report_of_a_pruned_study_has_the_section(tmp_path, frame):
    from opswap.analysis.results import SETTING_COLUMNS, load_history, load_results
    from opswap.atomic import write_json
    from opswap.report.sections import ReportContext, sections

    for _, r in frame.iterrows():  # the records these rows would come from, read back as the report does
        r = r.where(r.notna(), None).to_dict()
        settings = {k: r[k] for k in SETTING_COLUMNS + ["method"] if k in r}
        metrics = {k: v for k, v in r.items() if k not in settings and k not in ("trial_id", "status")}
        history = [{"epoch": e, "train_loss": 1.0 / e, "test_acc": r["test_acc"]} for e in (1, 2)]
        write_json(tmp_path / f"{r['trial_id']}.json", {
            "schema": 1, "trial_id": r["trial_id"], "study": "s", "status": r["status"], "attempt": 1,
            "settings": settings, "metrics": {**metrics, "train_acc": 90.0, "params": 1000},
            "history": history, "timing": {"seconds": 1.0}, "error": None if r["status"] == "ok" else "boom"})
    _, parts = sections(load_results(tmp_path), load_history(tmp_path), ReportContext(study="s", reference="dense"),
                        results_dir=tmp_path)
    blocks = parts["Pruning: accuracy, latency and storage"]
    table = next(b.content for b in blocks if b.kind == "table").set_index("variant")
    assert list(table.index) == ["dense", "channel 0.5", "dsr 0.9"]
    assert table.loc["channel 0.5", "bytes vs dense"] == "0.50×" and table.loc["dsr 0.9", "n"] == 2
