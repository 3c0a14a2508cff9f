"""One run from a spec to its record: the typed spec, trial ids, records, run_trial and `opswap train`."""
import json
import logging

import numpy as np
import pytest
import torch

from opswap.data import synthetic
from opswap.run.record import SCHEMA, read_record, write_record
from opswap.run.spec import TrialSpec, trial_id_for
from opswap.run.trial import run_trial

RECORD_KEYS = {"schema", "trial_id", "study", "status", "error", "attempt", "settings", "history",
               "metrics", "env", "timing"}
METRIC_KEYS = {"test_acc", "test_loss", "best_test_acc", "train_acc", "train_loss", "val_acc",
               "per_class_acc", "params", "macs", "op_params_count", "op_macs", "latency_ms_b1",
               "latency_ms_batch", "latency_batch_size", "sparsity", "layer_sparsity", "dense_bytes",
               "csr_bytes", "nonzero_params", "distill_loss", "replace1_acc"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    data = synthetic(120, 40, seed=2)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()
    np.savez(path, x_train=nhwc(data.x_train), y_train=data.y_train.numpy(),
             x_test=nhwc(data.x_test), y_test=data.y_test.numpy())
    return str(path)


def quick(npz, **overrides):
    base = dict(model="tf-cnn", dataset="npz", data=npz, epochs=1, batch_size=40, latency_batch_size=8)
    return TrialSpec.create(**{**base, **overrides})


def default_settings(**settings) -> dict:
    return TrialSpec.create(**settings).to_settings()


def test_spec_fills_and_resolves_everything():
    s = default_settings(model="wrn-10-1", position=2, op="mbconv", optimizer="adam", lr=3e-3)
    assert {"kind", "model", "dataset", "data", "num_classes", "data_fraction", "position", "op",
            "op_family", "op_params", "init", "seed", "epochs", "sparsity", "prune", "train",
            "distill"} <= set(s)
    assert (s["op"], s["op_family"], s["op_params"]) == ("mbconv_e6_k3", "mbconv", {"e": 6, "k": 3})
    assert s["train"]["optimizer"] == "adam" and s["train"]["lr"] == 3e-3 and s["train"]["weight_decay"] == 0.0
    assert default_settings(dataset="cifar100")["num_classes"] == 100
    assert default_settings(sparsity=0.9)["prune"] == "dsr"


@pytest.mark.parametrize("overrides, word", [
    ({"learning_rate": 0.1}, "learning_rate"), ({"init": "imagenet"}, "init"),
    ({"op": "mbconv"}, "position"), ({"optimizer": "lbfgs"}, "optimizer"), ({"sparsity": 1.5}, "sparsity"),
    ({"model": "wrn-11-1"}, "6n"), ({"data_fraction": 0.0}, "data_fraction"), ({"position": 7, "op": "mbconv"}, "1..6"),
    ({"epochs": 0}, "epochs"), ({"dataset": "npz"}, "needs data"), ({"seed": True}, "seed"),
    ({"seed": 2**64}, r"seed.*2\*\*63"), ({"lr": float("inf")}, "lr = inf .* finite"),
    ({"position": 1, "op": "mbconv_e0"}, "must be >= 1"), ({"position": 1, "op": "bottleneck_e99999999"}, "too large"),
])
def test_spec_rejects_bad_values(overrides, word):
    with pytest.raises(ValueError, match=word):
        default_settings(**overrides)


def test_trial_id_is_a_stable_hash_of_the_settings():
    a, b = default_settings(seed=1), default_settings(seed=1)
    assert trial_id_for(a) == trial_id_for(b) and len(trial_id_for(a)) == 12
    int(trial_id_for(a), 16)
    assert trial_id_for(a) != trial_id_for(default_settings(seed=2))
    assert trial_id_for(a) != trial_id_for(default_settings(seed=1, lr=0.05))


def test_records_are_atomic_json_with_nan_as_null(tmp_path):
    record = {"schema": SCHEMA, "trial_id": "abc", "status": "diverged", "settings": {},
              "history": [{"train_loss": float("nan")}], "metrics": {"x": torch.tensor(2.5)}}
    path = write_record(record, tmp_path)
    assert path.name == "abc.json" and [p.name for p in tmp_path.iterdir()] == ["abc.json"]
    back = read_record(path)
    assert back["history"][0]["train_loss"] is None and back["metrics"]["x"] == 2.5
    with pytest.raises(ValueError, match="status"):
        write_record({**record, "status": "done"}, tmp_path)
    (tmp_path / "old.json").write_text(json.dumps({"schema": 0}))
    with pytest.raises(ValueError, match="schema"):
        read_record(tmp_path / "old.json")


def test_spec_round_trips_through_its_settings():
    spec = TrialSpec.create(model="wrn-10-1", position=2, op="mbconv_e3_k5", init="lana", sparsity=0.5,
                            prune="static", distill={"steps": 7}, lr=0.02)
    assert TrialSpec.from_settings(spec.to_settings()) == spec
    assert spec.trial_id == trial_id_for(spec.to_settings())
    assert spec.prune.method == "static" and spec.distill.steps == 7 and spec.train.lr == 0.02


def test_run_trial_returns_a_complete_record(tmp_path, npz):
    spec = quick(npz)
    record = run_trial(spec, study="t")
    assert record["status"] == "ok", record["error"]
    assert list(tmp_path.iterdir()) == []  # run_trial writes nothing: its caller writes the record once
    write_record(record, tmp_path)
    on_disk = read_record(tmp_path / f"{spec.trial_id}.json")
    assert set(on_disk) == RECORD_KEYS and METRIC_KEYS <= set(on_disk["metrics"])
    m = on_disk["metrics"]
    assert m["params"] == 122_570 and m["dense_bytes"] == 4 * 122_570 and m["csr_bytes"] is None
    assert m["op_params_count"] is None and m["latency_ms_b1"] > 0 and m["latency_batch_size"] == 8
    assert len(on_disk["history"]) == 1 and on_disk["settings"] == spec.to_settings()
    assert on_disk["env"]["device"] == "cpu" and on_disk["timing"]["seconds"] > 0
    assert on_disk["env"]["git_commit"] == "unknown" or len(on_disk["env"]["git_commit"].split("+")[0]) == 40


def test_exceptions_become_failed_records(tmp_path, npz):
    bank = tmp_path / "bank.safetensors"
    bank.write_text("not a bank")
    spec = quick(npz, model="wrn-10-1", position=2, op="mbconv", init="lana")
    record = run_trial(spec, trial_id="f" * 12, study="t", teacher=str(bank), bank=str(bank))
    assert record["status"] == "failed" and "is not a safetensors file" in record["error"]


def test_a_measurement_failing_after_training_keeps_the_trained_record(npz, monkeypatch, caplog):
    """Out of memory at the latency batch is no reason to train the network again."""
    import opswap.run.trial as trial_module

    real = trial_module._latency

    def out_of_memory(model, key, size, repeats, device):  # at the throughput batch only
        if size > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, key, size, repeats, device)

    monkeypatch.setattr(trial_module, "_latency", out_of_memory)
    monkeypatch.setattr(logging.getLogger("opswap"), "propagate", True)  # the CLI may have turned it off
    with caplog.at_level(logging.WARNING, logger="opswap"):
        record = run_trial(quick(npz, sparsity=0.8, prune="static"), trial_id="l" * 12, study="t")
    assert record["status"] == "ok" and record["error"] is None
    m = record["metrics"]
    assert m["test_acc"] is not None and m["latency_ms_b1"] > 0 and m["latency_ms_batch"] is None
    assert m["measurement_error"] == "latency at batch 8: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert m["deployed_ms_b1"] > 0  # the other measurements still ran
    assert "latency at batch 8 measurement failed" in caplog.text

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no sparse kernel for this device")

    monkeypatch.setattr(trial_module, "_deployed", no_kernel)
    m = run_trial(quick(npz, sparsity=0.8, prune="static"), trial_id="j" * 12, study="t")["metrics"]
    assert m["measurement_error"].endswith("; deployed form: NotImplementedError: no sparse kernel for this device")
    assert all(m[k] is None for k in trial_module.DEPLOYED_KEYS)  # null, not absent
    monkeypatch.undo()
    assert "measurement_error" not in run_trial(quick(npz), trial_id="k" * 12, study="t")["metrics"]


def test_exploding_learning_rate_is_recorded_as_diverged(npz):
    record = run_trial(quick(npz, optimizer="sgd", lr=1e12, epochs=2), trial_id="d" * 12, study="t")
    assert record["status"] == "diverged" and "loss became" in record["error"]


def test_teacher_then_random_init_at_a_position(tmp_path, npz):
    teacher = quick(npz, model="wrn-10-1", save_weights=True)
    weights = tmp_path / f"{teacher.trial_id}.safetensors"
    assert run_trial(teacher, study="t", weights_path=weights)["status"] == "ok"
    assert weights.is_file()
    settings = quick(npz, model="wrn-10-1", position=2, op="conv_bn_e1", init="random")
    record = run_trial(settings, trial_id="r" * 12, study="t", teacher=str(weights))
    assert record["status"] == "ok", record["error"]
    assert record["metrics"]["op_params_count"] > 0 and record["metrics"]["distill_loss"] is None
    missing = run_trial(settings, trial_id="m" * 12, study="t")
    assert missing["status"] == "failed" and "teacher" in missing["error"]
    with pytest.raises(ValueError, match="init 'lana'"):
        settings.replace(init="teacher")
    same = run_trial(quick(npz, model="wrn-10-1", init="teacher", lr=1e-12, save_weights=True),
                     trial_id="s" * 12, study="t", teacher=str(weights),
                     weights_path=tmp_path / "again" / ("s" * 12 + ".safetensors"))
    assert same["status"] == "ok", same["error"]
    from safetensors.torch import load_file

    before, after = load_file(str(weights)), load_file(str(tmp_path / "again" / ("s" * 12 + ".safetensors")))
    convs = [k for k in before if "conv" in k and k.endswith("weight")]
    assert convs and all(torch.allclose(before[k], after[k], atol=1e-8) for k in convs)  # the teacher's


def test_sparse_whole_model(npz):
    record = run_trial(quick(npz, sparsity=0.8, prune="static"), trial_id="s" * 12, study="t")
    assert record["status"] == "ok", record["error"]
    m = record["metrics"]
    assert m["sparsity"] == pytest.approx(0.8, abs=0.05) and m["csr_bytes"] < m["dense_bytes"]


def test_opswap_train_command(tmp_path, npz, capsys):
    from opswap.cli import main

    code = main(["train", "--model", "tf-cnn", "--dataset", "npz", "--data", npz, "--epochs", "1",
                 "--optimizer", "adam", "--batch-size", "32", "--normalize", "unit", "--no-augment",
                 "--out", str(tmp_path / "seed000"), "--no-progress", "--latency-batch-size", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "record:" in out
    (path,) = (tmp_path / "seed000").glob("*.json")
    record = read_record(path)
    assert record["study"] == "seed000" and record["settings"]["train"]["normalize"] == "unit"
    assert record["settings"]["train"]["schedule"] == "constant" and not record["settings"]["train"]["augment"]
    assert record["metrics"]["latency_ms_b1"] is None  # --latency-batch-size 0 skips latency
    assert main(["train", "--model", "tf-cnn", "--dataset", "npz", "--out", str(tmp_path)]) == 2


def test_opswap_train_refuses_a_cifar_root_it_cannot_read_or_download_and_writes_nothing(tmp_path, capsys,
                                                                                        monkeypatch):
    import opswap.data
    from opswap.cli import main

    def offline(name, root):
        raise FileNotFoundError(f"{name}: downloading failed (offline); pass --data with a root that holds it")

    monkeypatch.setattr(opswap.data, "_cifar_download", offline)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    common = ["train", "--model", "wrn-10-1", "--dataset", "cifar10", "--epochs", "1", "--out", str(out)]
    assert main(common + ["--data", str(tmp_path / "afile")]) == 2
    assert "is a file; --data for cifar10 is the folder" in capsys.readouterr().err
    assert main(common + ["--data", str(tmp_path / "empty")]) == 2
    assert "downloading failed (offline)" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_run_prints_one_line_and_keeps_the_traceback_in_the_record(tmp_path, npz, capsys, monkeypatch):
    import opswap.run.trial as trial_module
    from opswap.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("the dataset broke half-way")

    monkeypatch.setattr(trial_module, "_build", broken)
    code = main(["train", "--model", "wrn-10-1", "--dataset", "npz", "--data", npz, "--epochs", "1",
                 "--out", str(tmp_path / "out"), "--no-progress", "--latency-batch-size", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "status failed: RuntimeError: the dataset broke half-way\nrecord:" in out
    (path,) = (tmp_path / "out").glob("*.json")
    assert 'File "' in read_record(path)["error"]  # the record keeps the traceback's last lines


def test_opswap_train_refuses_a_val_split_that_holds_out_nothing_before_running(tmp_path, capsys):
    from opswap.cli import main

    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", x_train=x, y_train=np.arange(3), x_test=x, y_test=np.arange(3))
    out = tmp_path / "out"
    args = ["train", "--model", "tf-cnn", "--dataset", "npz", "--data", str(tmp_path / "one.npz"),
            "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main([*args, "--val-fraction", "0.5"]) == 2
    assert "--val-fraction 0.5 holds out no image: every class of dataset 'npz' has a single" in capsys.readouterr().err
    assert not out.exists()  # refused up front: no failed record


def test_same_settings_give_the_same_record_from_scratch(npz):
    """Fresh weights follow the trial's seed, so a rerun reproduces the history exactly."""
    settings = quick(npz, model="wrn-10-1", position=1, op="mbconv")
    first, second = run_trial(settings), run_trial(settings)
    strip = lambda h: [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in h]
    assert first["status"] == second["status"] == "ok"
    assert strip(first["history"]) == strip(second["history"])
    other = run_trial(quick(npz, model="wrn-10-1", position=1, op="mbconv", seed=1))
    assert strip(other["history"]) != strip(first["history"])


def test_prune_options_from_the_command_line(tmp_path, npz, capsys):
    from opswap.cli import main

    common = ["train", "--model", "tf-cnn", "--dataset", "npz", "--data", npz, "--epochs", "1",
              "--batch-size", "40", "--no-progress", "--latency-batch-size", "0", "--sparsity", "0.9",
              "--prune", "dsr", "--out", str(tmp_path)]
    assert main(common + ["--prune-option", "period=2", "--prune-option", "threshold=0.01"]) == 0
    (path,) = tmp_path.glob("*.json")
    record = read_record(path)
    assert record["settings"]["prune_options"] == {"period": 2, "threshold": 0.01}
    assert record["metrics"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    capsys.readouterr()
    assert main(common + ["--prune-option", "perod=2"]) == 2
    assert "unknown option(s) ['perod']" in capsys.readouterr().err
    assert len(list(tmp_path.glob("*.json"))) == 1  # nothing written for the bad request


@pytest.mark.parametrize("extra,message", [
    (["--position", "3", "--op", "identity"], "does not fit position 3"),
    (["--position", "9", "--op", "mbconv"], "positions are 1..6"),
    (["--model", "wrn-11-1"], "6n+4"), (["--data-fraction", "0"], "data_fraction"),
    (["--op", "mbconv"], "needs a position"),
    (["--position", "2", "--op", "mbconv", "--init", "lana"], "needs --teacher"),
    (["--position", "2", "--op", "mbconv", "--init", "random", "--teacher", "missing.safetensors"],
     "does not exist"),
])
def test_opswap_train_refuses_bad_requests_before_training(tmp_path, capsys, extra, message):
    from opswap.cli import main

    out = tmp_path / "out"
    code = main(["train", "--model", "wrn-16-1", "--dataset", "synthetic", "--epochs", "1",
                 "--out", str(out)] + extra)  # a later --model replaces the first
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_opswap_train_and_a_study_trial_write_the_same_record(tmp_path, npz, capsys):
    """The same settings through `opswap train` and through a study: one trial id, the same keys."""
    from opswap.cli import main
    from opswap.study import expand_study, load_study

    study = tmp_path / "one.toml"
    study.write_text(f'name = "one"\nmodel = "tf-cnn"\ndataset = "npz"\ndata = "{npz}"\ninit = ["scratch"]\n'
                     'epochs = [1]\n[train]\nbatch_size = 40\n[run]\nworkers = 1\n')
    (trial,) = expand_study(load_study(study)).trials
    assert main(["run", str(study), "--results", str(tmp_path / "results"), "--no-report", "--no-progress"]) == 0
    assert main(["train", "--model", "tf-cnn", "--dataset", "npz", "--data", npz, "--epochs", "1",
                 "--batch-size", "40", "--out", str(tmp_path / "train"), "--no-progress"]) == 0
    capsys.readouterr()
    from_study = read_record(tmp_path / "results" / "one" / f"{trial.trial_id}.json")
    (path,) = (tmp_path / "train").glob("*.json")
    from_train = read_record(path)
    assert path.stem == trial.trial_id  # one spec, one id
    assert set(from_study) == set(from_train) == RECORD_KEYS
    assert from_study["settings"] == from_train["settings"]
    assert set(from_study["metrics"]) == set(from_train["metrics"])
    assert set(from_study["env"]) == set(from_train["env"]) and set(from_study["timing"]) == set(from_train["timing"])
    assert [set(r) for r in from_study["history"]] == [set(r) for r in from_train["history"]]


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    import os

    from opswap.atomic import write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text(tmp_path / "atomic.txt", "x")
    # mkstemp alone would leave 0600: a shared results folder would hide its records from others.
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_opswap_train_ids_follow_the_teacher_and_bank_files(tmp_path):
    """Another teacher (or bank) is another trial: its record never replaces the first one's."""
    import argparse

    from opswap.cli import train as train_cli
    from opswap.models import build_model
    from opswap.run.spec import file_identity
    from opswap.training import save_weights

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"teacher{seed}.safetensors")
        save_weights(build_model("wrn-10-1"), paths[-1])
    bank_a, bank_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    bank_a.write_bytes(b"a")
    bank_b.write_bytes(b"b")

    def spec(*extra):
        return train_cli.spec_from_args(parser.parse_args(["--model", "wrn-10-1", "--dataset", "synthetic", *extra]))

    first, second = (spec("--init", "teacher", "--teacher", str(p)) for p in paths)
    assert first.teacher == file_identity("checkpoint", paths[0]) and first.trial_id != second.trial_id
    assert spec("--init", "teacher", "--teacher", str(paths[0])).trial_id == first.trial_id  # same file, same id
    lana = [spec("--init", "lana", "--teacher", str(paths[0]), "--position", "1", "--op", "identity", "--bank", str(b))
            for b in (bank_a, bank_b)]
    assert lana[0].trial_id != lana[1].trial_id and lana[0].teacher.endswith(file_identity("bank", bank_a))
    assert spec().teacher is None  # from scratch: the id as before


def test_opswap_train_takes_the_class_count_and_refuses_images_of_another_size(tmp_path, capsys):
    from opswap.cli import main

    rng = np.random.default_rng(0)
    for name, size in (("three", 32), ("big", 40)):
        np.savez(tmp_path / f"{name}.npz", x_train=rng.integers(0, 256, (12, size, size, 3), dtype=np.uint8),
                 y_train=np.arange(12) % 3, x_test=rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8),
                 y_test=np.arange(6) % 3)
    out = tmp_path / "out"
    base = ["train", "--model", "tf-cnn", "--dataset", "npz", "--epochs", "1", "--batch-size", "6",
            "--latency-batch-size", "0", "--no-progress", "--out", str(out)]
    assert main(base + ["--data", str(tmp_path / "three.npz")]) == 0
    record = read_record(next(out.glob("*.json")))
    assert record["settings"]["num_classes"] == 3 and len(record["metrics"]["per_class_acc"]) == 3
    capsys.readouterr()
    assert main(base + ["--data", str(tmp_path / "three.npz"), "--num-classes", "10"]) == 2
    assert "--num-classes 10: dataset 'npz' has 3 classes" in capsys.readouterr().err
    assert main(base + ["--data", str(tmp_path / "big.npz")]) == 2
    assert "images are 40x40, but opswap's models (WRN, tf-cnn) take 32x32" in capsys.readouterr().err
    assert len(list(out.glob("*.json"))) == 1  # nothing written for the refused requests
    # through the API the trial fails with the same reason, before any training
    spec = TrialSpec.create(model="tf-cnn", dataset="npz", data=str(tmp_path / "big.npz"), num_classes=3, epochs=1)
    record = run_trial(spec)
    assert record["status"] == "failed" and "images are 40x40" in record["error"] and record["history"] == []
