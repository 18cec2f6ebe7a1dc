"""The method registry and the typed round state: registration, knobs on the command line and in
Config, and checkpoints of another state format refused."""
import dataclasses

import pytest

from flash_jax.config import Config, ConfigError
from flash_jax.data.sources import load_dataset
from flash_jax.fl import checkpoint
from flash_jax.fl.loop import run
from flash_jax.fl.methods import Knob, Method, get_method, methods, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FEDAVG, SERVER_FIXED_MASK, SERVER_MODEL_SUPPORT, SERVER_NO_MASK
from flash_jax.settings import validate
from run import build_parser, parse_config

BUILT_IN = ("dense", "pdst", "spdst", "jmwst", "nst", "feddst")


def test_built_in_methods_are_registered_records():
    assert tuple(methods())[:len(BUILT_IN)] == BUILT_IN
    assert not get_method("dense").sparse and all(get_method(m).sparse for m in BUILT_IN[1:])
    assert [m for m in BUILT_IN if get_method(m).report_pruned] == ["nst"]  # the model is its own mask's support
    assert get_method("nst").server_mask is SERVER_MODEL_SUPPORT and get_method("pdst").server_mask is SERVER_FIXED_MASK
    assert [m for m in BUILT_IN if get_method(m).stage1] == ["spdst", "jmwst"]
    assert [m for m in BUILT_IN if get_method(m).hetero] == ["spdst", "jmwst"]
    with pytest.raises(KeyError, match="unknown --experiment_type 'fedprox'; one of dense, pdst"):
        get_method("fedprox")


def test_a_registered_method_gets_flags_help_validation_and_config_keys(capsys):
    knob = Knob("test_lucky_number", 7, "a knob of a test method", lambda v: v > 0, "> 0")
    register_method(Method(name="test_keep", help="a test method: PDST under another name", client=CLIENT_FIXED_MASK,
                           server_mask=SERVER_FIXED_MASK, aggregation=lambda setup: FEDAVG, knobs=(knob,)))
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method(name="test_keep", help="", client=CLIENT_FIXED_MASK, server_mask=SERVER_NO_MASK,
                               aggregation=lambda setup: FEDAVG))
    with pytest.raises(ValueError, match="knob --test_lucky_number is already defined"):
        register_method(Method(name="test_other", help="", client=CLIENT_FIXED_MASK, server_mask=SERVER_NO_MASK,
                               aggregation=lambda setup: FEDAVG, knobs=(knob,)))
    assert "test_other" not in methods()

    config = parse_config(["--experiment_type", "test_keep", "--test_lucky_number", "3"])
    assert config.test_lucky_number == 3 and config.to_dict()["test_lucky_number"] == 3
    assert Config(test_lucky_number=7) == Config()  # a knob at its default is not stored
    assert dataclasses.replace(config, seed=2).test_lucky_number == 3
    with pytest.raises(ConfigError, match=r"--test_lucky_number=0 is invalid: must be > 0"):
        validate(Config(test_lucky_number=0))
    with pytest.raises(ConfigError, match="unknown setting .test_unlucky."):
        Config(test_unlucky=1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--test_lucky_number INT" in text and "a test method: PDST under another name" in text
    assert "--feddst_momentum FLOAT" in text and "\nFedDST:\n" in text  # built-in knobs come the same way


def test_a_checkpoint_of_another_state_format_is_refused(tmp_path, monkeypatch):
    digits = load_dataset("digits")
    config = Config(experiment_type="pdst", num_users=4, frac=0.5, fl_rounds=1, quiet=True, workdir=str(tmp_path))
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", checkpoint.FORMAT_VERSION - 1)
    run(config, digits)
    monkeypatch.undo()
    with pytest.raises(checkpoint.CheckpointFormatError, match=r"has state format 1, this flash_jax reads format 2"):
        run(dataclasses.replace(config, fl_rounds=2), digits)
