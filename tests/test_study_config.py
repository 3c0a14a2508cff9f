"""Study files: every broken study is rejected with a clear message before anything runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from opswap.cli import main as cli
from opswap.study.load import load_study
from opswap.study.schema import StudyError, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_studies").glob("*.toml"))
BUNDLED = sorted((ROOT / "studies").glob("*.toml"))
TINY = 'name = "tiny"\nmodel = "wrn-10-1"\ndataset = "synthetic"\n'


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <regex>'"
    return first[len("# expect: "):]


def test_there_are_many_kinds_of_bad_study():
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_study_is_rejected_with_a_clear_message(path):
    with pytest.raises(StudyError) as err:
        load_study(path)
    message = str(err.value)
    assert re.search(_expected(path), message), message
    assert str(path) in message  # names the file


@pytest.mark.parametrize("path", BAD[:: max(1, len(BAD) // 8)], ids=lambda p: p.stem)
def test_bad_study_writes_nothing(path, tmp_path, capsys):
    code = cli(["run", str(path), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")])
    assert code == 2
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()
    err = capsys.readouterr().err
    assert "opswap run: error:" in err
    assert "in the study; nothing was run:" in err or "not valid TOML" in err


def test_all_problems_are_reported_at_once(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text(TINY + "epochs = [0]\nseeds = [-1]\n[run]\nbackend = \"spark\"\n")
    with pytest.raises(StudyError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith("3 problems in the study:")
    assert all(key in message for key in ("epochs:", "seeds:", "run.backend:"))


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_studies_are_valid(path):
    study = load_study(path)
    assert study.name == path.stem


def test_defaults_of_a_minimal_study(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    study = load_study(path)
    assert study.positions == (1, 2, 3)  # "all" of WRN-10-1
    assert [c.name for c in study.candidates] == ["baseline", "identity", "mbconv_e6_k3", "conv_bn_e1",
                                                  "conv_bn_e2", "resnet_e2", "bottleneck_e2"]
    assert (study.seeds, study.epochs, study.init, study.sparsity, study.prune) == ((0,), (1,), ("lana",), (0.0,), "none")
    assert study.run.backend == "loky" and study.run.retries == 1 and study.teacher.train


@pytest.mark.parametrize("item, expected", [
    ("epochs=[1, 2]", ("epochs", [1, 2])),
    ("train.lr=0.05", ("train.lr", 0.05)),
    ("dataset=npz", ("dataset", "npz")),
    ("data=data/x.npz", ("data", "data/x.npz")),
    ('init=["lana", "random"]', ("init", ["lana", "random"])),
    ("teacher.train=false", ("teacher.train", False)),
    ("positions=all", ("positions", "all")),
])
def test_overrides_are_typed_like_toml(item, expected):
    assert parse_overrides([item]) == [expected]


@pytest.mark.parametrize("item", ["epochs", "=3", "a..b=1", "train lr=1"])
def test_malformed_override_is_rejected(item):
    with pytest.raises(StudyError, match="expected key=value"):
        parse_overrides([item])


def test_overrides_apply_before_validation(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    study = load_study(path, ["epochs=3", "seeds=[4, 5]", "train.lr=0.05", "positions=[2]", "run.workers=3"])
    assert (study.epochs, study.seeds, study.positions, study.run.workers) == ((3,), (4, 5), (2,), 3)
    assert study.train == {"lr": 0.05}
    with pytest.raises(StudyError, match=r"epochs: \[-2\] is not allowed"):
        load_study(path, ["epochs=-2"])
    with pytest.raises(StudyError, match="seedz: unknown key. Did you mean 'seeds'"):
        load_study(path, ["seedz=[1]"])


def test_teacher_checkpoint_replaces_training(tmp_path):
    ckpt = tmp_path / "teacher.safetensors"
    ckpt.write_bytes(b"0")
    path = tmp_path / "tiny.toml"
    path.write_text(TINY + f'[teacher]\ncheckpoint = "{ckpt}"\n')
    study = load_study(path)
    assert study.teacher.checkpoint == str(ckpt) and study.teacher.train is False


def test_missing_study_file(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.toml")


def test_a_refused_top_level_key_does_not_hide_the_other_problems(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\nmodel = 5\ndataset = "synthetic"\nseed = [0, 1]\n[train]\nlrr = 0.1\n')
    with pytest.raises(StudyError) as info:
        load_study(path)
    text = str(info.value)
    assert text.startswith("3 problems in the study")
    assert "seed: unknown key. Did you mean 'seeds'?" in text and "train.lrr: unknown key" in text
    assert "model: 5 (int) has the wrong type" in text and "model: missing" not in text  # one line per key


def test_an_override_meant_as_a_list_that_is_not_toml_is_refused():
    with pytest.raises(StudyError, match=r"'\[2' is not a valid TOML value"):
        parse_overrides(["epochs=[2"])
    assert parse_overrides(["epochs=[2]", "dataset=synthetic"]) == [("epochs", [2]), ("dataset", "synthetic")]


def _npz(path: Path, size: int = 32, classes: int = 3) -> Path:
    import numpy as np

    np.savez(path, x_train=np.zeros((6, size, size, 3), np.uint8), y_train=np.arange(6) % classes,
             x_test=np.zeros((3, size, size, 3), np.uint8), y_test=np.arange(3) % classes)
    return path


def test_the_dataset_sets_num_classes_and_a_contradicting_one_is_refused(tmp_path):
    from opswap.study import expand_study

    data = _npz(tmp_path / "three.npz")
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nmodel = "wrn-10-1"\ndataset = "npz"\ndata = "{data}"\npositions = [1]\n'
                    'candidates = ["conv_bn"]\nepochs = [1]\n')
    study = load_study(path)
    assert study.num_classes == 3
    assert {t.spec.num_classes for t in expand_study(study).trials} == {3}
    with pytest.raises(StudyError, match="num_classes: 10 is not allowed; dataset 'npz' has 3 classes"):
        load_study(path, ["num_classes=10"])


def test_images_the_models_cannot_take_are_refused_before_anything_runs(tmp_path):
    data = _npz(tmp_path / "big.npz", size=64)
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nmodel = "tf-cnn"\ndataset = "npz"\ndata = "{data}"\nepochs = [1]\n')
    with pytest.raises(StudyError, match=r"data: images are 64x64, but opswap's models .* take 32x32"):
        load_study(path)


def test_methods_check_their_own_data(tmp_path):
    big, three = _npz(tmp_path / "big.npz", size=64), _npz(tmp_path / "three.npz")
    path = tmp_path / "m.toml"
    head = f'name = "m"\ndataset = "npz"\ndata = "{three}"\nepochs = [1]\n'
    path.write_text(head + f'[[methods]]\nname = "a"\nmodel = "tf-cnn"\ndata = "{big}"\n'
                    f'[[methods]]\nname = "b"\nmodel = "tf-cnn"\ndata = "{big}"\n')
    with pytest.raises(StudyError) as err:
        load_study(path)
    message = str(err.value)
    assert "methods[0].data: images are 64x64" in message and "methods[1].data: images are 64x64" in message
    assert message.startswith("2 problems")
    # features of any size suit a traditional method; a method on another dataset takes its class count
    path.write_text(head + f'[[methods]]\nname = "hog"\nkind = "traditional"\ndata = "{big}"\n'
                    '[[methods]]\nname = "syn"\nmodel = "tf-cnn"\ndataset = "synthetic"\n'
                    '[[methods]]\nname = "cnn"\nmodel = "tf-cnn"\n')
    from opswap.study import expand_study

    study = load_study(path)
    by_method = {t.spec.method: t.spec.num_classes for t in expand_study(study).trials}
    assert by_method == {"hog": 3, "syn": 10, "cnn": 3}


def test_a_one_class_dataset_and_a_method_path_that_does_not_exist_are_refused(tmp_path, capsys):
    one = _npz(tmp_path / "one.npz", classes=1)
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nmodel = "wrn-10-1"\ndataset = "npz"\ndata = "{one}"\npositions = [1]\n'
                    'candidates = ["conv_bn"]\n')
    with pytest.raises(StudyError, match="data: dataset 'npz' has 1 class; a classifier needs at least 2"):
        load_study(path)
    assert cli(["train", "--model", "tf-cnn", "--dataset", "npz", "--data", str(one), "--out",
                str(tmp_path / "out")]) == 2
    assert "has 1 class; a classifier needs at least 2" in capsys.readouterr().err
    path.write_text('name = "m"\ndataset = "synthetic"\n[[methods]]\nname = "a"\nmodel = "tf-cnn"\n'
                    f'data = "{tmp_path / "absent.npz"}"\n')
    with pytest.raises(StudyError, match=r"methods\[0\]\.data: dataset root .*absent\.npz' does not exist"):
        load_study(path)


def test_train_settings_are_checked_against_the_studys_own_epochs(tmp_path):
    """warmup_epochs is bounded by the budgets the study runs, not by TrainConfig's default 10."""
    path = tmp_path / "study.toml"
    path.write_text(TINY + "init = [\"scratch\"]\nepochs = [25]\n[train]\nwarmup_epochs = 15\n")
    assert load_study(path).train["warmup_epochs"] == 15  # fits 25 epochs
    path.write_text(TINY + "init = [\"scratch\"]\nepochs = [1, 25]\n[train]\nwarmup_epochs = 5\n")
    with pytest.raises(StudyError) as err:
        load_study(path)
    message = str(err.value)
    assert "train.warmup_epochs" in message and "epochs=1" in message and "epochs=25" not in message
    # The teacher trained here runs [train] with its own budget too.
    path.write_text(TINY + "init = [\"lana\"]\nepochs = [25]\n[teacher]\nepochs = 4\n[train]\nwarmup_epochs = 5\n")
    with pytest.raises(StudyError, match=r"train\.warmup_epochs.*epochs=4"):
        load_study(path)
    # A method with its own epochs is checked with them, its table merged with the study's; a
    # problem of the study's [train] is said once, as the study's.
    methods = ('name = "m"\nkind = "methods"\ndataset = "synthetic"\nepochs = [20]\n[train]\n'
               'warmup_epochs = 8\noptimizer = "{opt}"\n[[methods]]\nname = "short"\nmodel = "tf-cnn"\nepochs = 6\n'
               '[[methods]]\nname = "tuned"\nmodel = "tf-cnn"\nepochs = 6\ntrain = {{ lr = 0.05 }}\n')
    path.write_text(methods.format(opt="sgd"))
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert "1 problem" in str(err.value)
    assert re.search(r"train\.warmup_epochs: .*epochs=6\] \(with epochs = 6 of methods\[0\]\)", str(err.value))
    path.write_text(methods.format(opt="adamx"))
    with pytest.raises(StudyError, match=r"1 problem in the study:\n.*: train\.optimizer: .*'adamx'"):
        load_study(path)
    # The study's epochs are not a budget when every method has its own.
    path.write_text('name = "m"\nkind = "methods"\ndataset = "synthetic"\nepochs = [2]\n[train]\nwarmup_epochs = 5\n'
                    '[[methods]]\nname = "a"\nmodel = "tf-cnn"\nepochs = 20\n[[methods]]\nname = "b"\n'
                    'model = "tf-cnn"\nepochs = 20\ntrain = { lr = 0.1 }\n')
    assert len(load_study(path).methods) == 2
    # One problem per field: the smallest budget it fails with.
    path.write_text(TINY + "init = [\"lana\"]\nepochs = [1]\n[teacher]\nepochs = 2\n[train]\nwarmup_epochs = 3\n")
    with pytest.raises(StudyError, match=r"1 problem in the study:\n.*train\.warmup_epochs: .*epochs=1\]"):
        load_study(path)


@pytest.mark.parametrize("candidate, words", [("mbconv_e0_k3", "must be >= 1"),
                                              ("bottleneck_e99999999", "too large to build")])
def test_a_candidate_that_cannot_be_built_is_refused_before_anything_runs(tmp_path, candidate, words):
    path = tmp_path / "study.toml"
    path.write_text(TINY + f'init = ["scratch"]\npositions = [1]\ncandidates = ["baseline", "{candidate}"]\n')
    with pytest.raises(StudyError, match=rf"candidates\[1\]: .*{words}.*\(position 1\)"):
        load_study(path)
