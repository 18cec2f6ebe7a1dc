"""Experiment presets: every file parses and validates, and flags override it."""
import glob
import importlib.util
import os
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(REPO, "experiments", "presets", "*.toml")))
spec = importlib.util.spec_from_file_location("run_cli", os.path.join(REPO, "run.py"))
run_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_cli)


def test_the_paper_setups_are_all_there():
    names = {os.path.basename(p)[:-5] for p in PRESETS}
    for dataset in ("cifar10", "cifar100"):
        assert {f"{dataset}_alpha{a}_d{d}" for a in (1, 1000) for d in ("0.05", "0.1")} <= names
    assert {"mnist", "femnist", "tiny_imagenet", "hetero_cifar10", "fashion_mnist_cpu"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_validates_and_yields_to_flags(path):
    with open(path, "rb") as f:
        values = tomllib.load(f)
    config = run_cli.parse_config(["--config", path])
    assert {k: getattr(config, k) for k in values} == values
    overridden = run_cli.parse_config(["--config", path, "--density", "0.2", "--fl_rounds", "3"])
    assert overridden.density == 0.2 and overridden.fl_rounds == 3 and overridden.dataset == config.dataset


@pytest.mark.parametrize("text, message", [
    ('densty = 0.1\n', "unknown setting 'densty'"),
    ('density = "high"\n', "density = 'high' has the wrong type"),
    ('density = \n', "not valid TOML"),
])
def test_bad_preset_is_one_line_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        run_cli.parse_config(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
