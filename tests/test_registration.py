"""The method registry: the built-in methods as records, and a registered method's flags, help,
validation and Config keys. Registering a method or a model from outside the package refuses a
mistake at once, in one line that names the thing and the fix, instead of failing later somewhere
else."""
import dataclasses

import jax
import pytest
from flax import linen as nn

import flash_jax
from flash_jax.config import Config, ConfigError
from flash_jax.fl.methods import Knob, Method, get_method, methods, register_method
from flash_jax.fl.rules import (CLIENT_FIXED_MASK, FEDAVG, SERVER_FIXED_MASK, SERVER_MODEL_SUPPORT,
                                SERVER_NO_MASK)
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


def method(name, *knobs):
    return flash_jax.Method(name=name, help="a test method", client=CLIENT_FIXED_MASK, server_mask=SERVER_FIXED_MASK,
                            aggregation=lambda setup: FEDAVG, knobs=knobs)


class Tiny(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask=None) -> jax.Array:
        return nn.Dense(self.num_classes, name="out")(x.reshape(x.shape[0], -1))


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("knob, message", [
    (flash_jax.Knob("density", 0.5, "clashes"), "knob --density has the name of a setting every run has; rename "
                                                "the knob (e.g. reg_clash_density)"),
    (flash_jax.Knob("reg_bad_default", 5, "its default fails", lambda v: v < 1, "< 1"),
     "knob --reg_bad_default: its default 5 fails its own check (< 1); fix the default or the check"),
    (flash_jax.Knob("reg_bad_choice", "x", "not a choice", choices=("a", "b")),
     "its default 'x' fails its own check (one of a, b)"),
])
def test_a_bad_knob_is_refused_at_registration(knob, message):
    with pytest.raises(ValueError) as refused:
        flash_jax.register_method(method("reg_clash", knob))
    assert message in one_line(refused.value)
    assert "reg_clash" not in flash_jax.fl.methods.methods()
    Config()  # and every other Config still builds


def test_a_knob_of_the_wrong_type_names_the_knob():
    flash_jax.register_method(method("reg_typed", flash_jax.Knob("reg_typed_steps", 3, "an int knob")))
    for value in (2.5, "5"):
        with pytest.raises(ConfigError) as refused:
            Config(experiment_type="reg_typed", reg_typed_steps=value)
        assert f"reg_typed_steps={value!r} has the wrong type: must be a whole number" == one_line(refused.value)


def test_a_mask_pattern_that_is_not_a_regex_is_refused_at_registration():
    with pytest.raises(ValueError) as refused:
        flash_jax.register_model("reg_badregex", lambda n, conv_impl: Tiny(n), mask_pattern="([")
    assert one_line(refused.value).startswith("model 'reg_badregex': mask_pattern '([' is not a regular expression")
    assert one_line(refused.value).endswith("fix the pattern")


def test_a_models_pattern_that_matches_nothing_names_the_models_pattern(tmp_path):
    flash_jax.register_model("reg_nomatch", lambda n, conv_impl: Tiny(n), mask_pattern=r"^nothing$")
    with pytest.raises(ConfigError) as refused:
        flash_jax.run(Config(model_type="reg_nomatch", experiment_type="pdst", fl_rounds=1, quiet=True,
                             workdir=str(tmp_path / "w")))
    assert one_line(refused.value) == ("--model_type reg_nomatch: its mask pattern '^nothing$' matches no tensor "
                                       "(out/bias, out/kernel); register it with a pattern that does, or pass "
                                       "--mask_pattern")
    assert not (tmp_path / "w").exists()


class Pooled(nn.Module):
    """Pools 28x28 images away: 4x4 windows, three times, leave nothing for the classifier."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask=None) -> jax.Array:
        for _ in range(3):
            x = nn.max_pool(x, (4, 4), strides=(4, 4))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="out")(x / x.shape[1])


def test_a_model_that_cannot_take_its_min_input_size_is_one_line_naming_it(tmp_path):
    flash_jax.register_model("reg_pooled", lambda n, conv_impl: Pooled(n), mask_pattern=r"^out/kernel$")
    with pytest.raises(ConfigError) as refused:
        flash_jax.run(Config(model_type="reg_pooled", experiment_type="pdst", fl_rounds=1, quiet=True,
                             workdir=str(tmp_path / "w")))
    text = one_line(refused.value)
    assert text.startswith("--model_type reg_pooled: model 'reg_pooled' cannot take a 1x1 image, its "
                           "min_input_size (ZeroDivisionError"), text
    assert text.endswith("register it with the min_input_size its downsampling needs")
    assert not (tmp_path / "w").exists()
