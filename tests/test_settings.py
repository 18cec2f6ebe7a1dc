"""Every setting is checked before anything is written: the Python API's types, and every knob of
every registered method (the cases are generated from the registry, so a knob added later is
covered without a new test)."""
import math

import pytest

import flash_jax
from flash_jax import cli
from flash_jax.config import Config, ConfigError
from flash_jax.fl.methods import methods

NUMBERS = ("-1", "0", "1e308", "-1e308")


def bad_values(knob) -> list[str]:
    """Values of the wrong type, out of range, empty, NaN and huge, as they would be typed."""
    default = knob.default
    if isinstance(default, bool):
        return []
    if isinstance(default, str):
        return ["no_such_choice", ""] if knob.choices else ["abc", ",", "nan", "1e400"] if knob.valid else []
    wrong = ["abc", "", "nan", "1e400", "-1e400"] + (["2.5", str(2**64)] if isinstance(default, int) else [])
    return wrong + [v for v in NUMBERS if knob.valid and not _valid(knob, v)]


def _valid(knob, text: str) -> bool:
    try:
        value = type(knob.default)(float(text))
    except (ValueError, OverflowError):
        return False
    return math.isfinite(value) and knob.valid(value)


KNOBS = [(name, knob) for name, method in methods().items() for knob in method.knobs]  # as registered now
CASES = [(name, knob.name, value) for name, knob in KNOBS for value in bad_values(knob)]


@pytest.mark.parametrize("method, knob, value", CASES)
def test_every_bad_knob_value_is_refused_in_one_line_before_anything_is_written(method, knob, value, tmp_path,
                                                                                 capsys):
    workdir = tmp_path / "w"
    try:
        status = cli.main(["--experiment_type", method, f"--{knob}={value}", "--fl_rounds", "1", "--quiet",
                           "--workdir", str(workdir)])
    except SystemExit as stop:  # argparse's own refusals (a value that is not of the flag's type)
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--{knob}" in err and not workdir.exists()


def test_every_knob_has_a_range_and_the_cases_probe_it():
    """A number knob states its valid range and a value outside it is among the cases; a text knob
    has choices or a check, and its cases include a value it refuses."""
    numbers = {k.name: k for _, k in KNOBS if type(k.default) in (int, float)}
    texts = {k.name: k for _, k in KNOBS if isinstance(k.default, str)}
    assert numbers and all(k.valid for k in numbers.values()), [n for n, k in numbers.items() if not k.valid]
    assert all(k.valid or k.choices for k in texts.values()), [n for n, k in texts.items()
                                                               if not (k.valid or k.choices)]
    out_of_range = {knob for _, knob, value in CASES if value in NUMBERS}
    assert set(numbers) <= out_of_range, set(numbers) - out_of_range
    assert set(texts) <= {knob for _, knob, _ in CASES}, set(texts) - {knob for _, knob, _ in CASES}


@pytest.mark.parametrize("settings, message", [
    (dict(fl_rounds=2.5), "fl_rounds=2.5 has the wrong type: must be a whole number"),
    (dict(num_users=10.5), "num_users=10.5 has the wrong type"),
    (dict(local_bs=2.5), "local_bs=2.5 has the wrong type"),
    (dict(seed=1.5), "seed=1.5 has the wrong type"),
    (dict(num_users="10"), "num_users='10' has the wrong type"),
    (dict(workdir=123), "workdir=123 has the wrong type: must be a string or None"),
    (dict(density=True), "density=True has the wrong type: must be a number"),
    (dict(feddst_momentum="5"), "feddst_momentum='5' has the wrong type: must be a number"),
    (dict(jmwst_update_interval=2.5), "jmwst_update_interval=2.5 has the wrong type"),
    (dict(densty=0.1), "unknown setting 'densty'"),
])
def test_config_checks_every_type_when_it_is_built(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(**settings)


def test_run_writes_nothing_before_every_check_has_passed(tmp_path):
    with pytest.raises(ConfigError, match="--prunefl_layer_costs"):
        flash_jax.run(Config(experiment_type="prunefl", prunefl_layer_costs="1", fl_rounds=1, quiet=True,
                             workdir=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()
    assert Config(density=1).density == 1.0 and isinstance(Config(density=1).density, float)


@pytest.mark.parametrize("method", ["dense", "feddst", "topk", "sparsyfed", "prunefl", "prunefl_feddst"])
def test_update_mode_is_refused_where_the_method_aggregates_its_own_way(method):
    with pytest.raises(ConfigError) as err:
        flash_jax.settings.validate(Config(experiment_type=method, update_mode=1))
    assert str(err.value) == (f"--update_mode 1 works with --experiment_type pdst, spdst, jmwst, nst; {method} "
                              "aggregates its own way (leave --update_mode at 0)")
    flash_jax.settings.validate(Config(experiment_type="nst", update_mode=1))
