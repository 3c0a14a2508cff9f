"""load_results / load_history: one row per trial (and epoch), tolerant of partial studies."""
import json

import pandas as pd
import pytest

from opswap.analysis.results import export, load_history, load_results
from record_factory import make_record, paper_records, write_records


@pytest.fixture
def study_dir(tmp_path):
    records = paper_records(epochs=3)
    records.append(make_record(test_acc=None, op="resnet_e2", position=1, status="failed"))
    return write_records(tmp_path / "demo", records)


def test_one_row_per_trial_with_flat_settings_and_metrics(study_dir):
    frame = load_results(study_dir)
    assert len(frame) == 3 + 3 + 3 + 2 + 1 + 1
    assert frame["trial_id"].is_unique
    row = frame[(frame.op == "conv_bn_e2") & (frame.position == 1) & (frame.seed == 1)].iloc[0]
    assert row.test_acc == pytest.approx(95.0)
    assert row.train_acc == pytest.approx(100.0)
    assert row.op_family == "conv_bn" and row.op_params == "e=2"
    assert row.train_optimizer == "sgd" and row.train_lr == pytest.approx(0.1)
    assert row.distill_steps == 10 and row.distill_loss == pytest.approx(0.05)
    assert row.env_torch == "2.5.0" and row.seconds == pytest.approx(60.0)
    assert row.per_class_acc == [95.0] * 10
    assert str(frame["position"].dtype) == "Int64"
    assert frame.loc[frame.op == "baseline", "position"].isna().all()
    failed = frame[frame.status == "failed"].iloc[0]
    assert failed.error.startswith("RuntimeError") and pd.isna(failed.test_acc)


def test_history_has_one_row_per_trial_and_epoch(study_dir):
    history = load_history(study_dir)
    assert len(history) == 12 * 3  # the failed trial has no history
    trial = history[(history.op == "baseline") & (history.seed == 2)]
    assert trial["epoch"].tolist() == [1, 2, 3]
    assert trial["test_acc"].iloc[-1] == pytest.approx(96.4)
    assert trial["test_acc"].iloc[0] == pytest.approx(96.4 / 3)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"hello": 1}',
                                     '{"trial_id": "t", "settings": {}, "history": "x"}',
                                     '{"trial_id": "t", "settings": "x"}',
                                     '{"trial_id": "t", "settings": {}, "attempt": [1]}',
                                     '{"trial_id": "t", "settings": {}, "metrics": "x"}',
                                     '{"schema": 2, "trial_id": "t", "settings": {}}'])
def test_corrupt_or_foreign_files_are_skipped_with_a_warning_naming_them(study_dir, content):
    (study_dir / "broken.json").write_text(content)
    with pytest.warns(UserWarning, match="broken.json"):
        frame = load_results(study_dir)
    assert len(frame) == 13


def test_empty_directory_gives_the_standard_columns(tmp_path):
    frame = load_results(tmp_path)
    assert frame.empty and {"trial_id", "test_acc", "position", "csr_bytes"} <= set(frame)


def test_missing_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_round_trips_the_numbers(study_dir, tmp_path, suffix):
    frame = load_results(study_dir)
    path = export(frame, tmp_path / f"out{suffix}")
    back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert list(back["trial_id"]) == list(frame["trial_id"])
    assert back["test_acc"].sum() == pytest.approx(frame["test_acc"].sum())
    assert json.loads(back["per_class_acc"].dropna().iloc[0])[0] == pytest.approx(
        frame["per_class_acc"].dropna().iloc[0][0])


def test_export_rejects_unknown_formats(study_dir, tmp_path):
    with pytest.raises(ValueError, match=".parquet or .csv"):
        export(load_results(study_dir), tmp_path / "out.xlsx")


def test_a_record_of_another_schema_is_never_taken_for_corrupt(tmp_path):
    """A newer opswap's result: a study run stops with a clear error instead of running it again over it."""
    import json

    from opswap.run.record import CORRUPT, RecordSchemaError, load_record

    (tmp_path / "abc.json").write_text(json.dumps({"schema": 2, "trial_id": "abc", "settings": {}}))
    with pytest.raises(RecordSchemaError, match="another opswap version"):
        load_record(tmp_path, "abc")
    (tmp_path / "bad.json").write_text(json.dumps({"trial_id": "bad", "settings": {}, "attempt": [1]}))
    assert load_record(tmp_path, "bad") is CORRUPT


def test_a_record_with_a_seed_past_int64_does_not_break_loading(tmp_path):
    """Records written by hand or by an older opswap may hold any JSON integer."""
    from record_factory import make_record, write_records

    huge = make_record(test_acc=90.0, seed=0)
    huge["settings"]["seed"] = 99999999999999999999
    huge["trial_id"] = "a" * 12
    frame = load_results(write_records(tmp_path / "r", [huge, make_record(test_acc=91.0, seed=1)]))
    assert len(frame) == 2 and sorted(frame["seed"].tolist()) == [1.0, 99999999999999999999.0]
