"""Command line of flash_jax with the authors' flag names; `python run.py` alone runs an offline demo.

`python run.py`, `python -m flash_jax` and this module's `main` are the same command.

Example (the authors' README line):
    python run.py --alpha=1 --init_frac=0.05 --init_epoch=10 --experiment_type=spdst
A paper setup from a preset, with a flag overriding it:
    python run.py --config experiments/presets/cifar10_alpha1_d0.05.toml --experiment_type jmwst
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib

from flash_jax import hosts, launch, processes
from flash_jax.config import GROUPS, Config, ConfigError
from flash_jax.data.sources import DataError
from flash_jax.fl.loop import train
from flash_jax.fl.methods import knobs, methods
from flash_jax.fl.stops import DISK_FULL_EXIT, DIVERGED_EXIT, DiskFull, DivergenceError, Interrupted
from flash_jax.output import print_result
from flash_jax.plugins import load_plugins
from flash_jax.settings import check_workdir_plugins, valid_values, validate

class OneLineParser(argparse.ArgumentParser):
    """Errors as one line and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag_specs() -> list[tuple[str, object, str, str, str]]:
    """(name, default, --help group, what it does, valid values) of every flag from a setting:
    Config's fields, then the registered methods' knobs."""
    valid = valid_values()
    specs = [(field.name, field.default, field.metadata["group"], field.metadata["help"], valid.get(field.name, ""))
             for field in dataclasses.fields(Config) if field.metadata]
    return specs + [(knob.name, knob.default, m.group or name, knob.help, valid.get(knob.name, ""))
                    for name, m in methods().items() for knob in m.knobs]


def build_parser() -> argparse.ArgumentParser:
    """One flag per Config field and knob, grouped, each with its default and valid values."""
    registered = methods()
    epilog = "methods (--experiment_type):\n" + "\n".join(f"  {name:10s} {m.help}" for name, m in registered.items())
    parser = OneLineParser(prog="run.py", description=__doc__.splitlines()[0], allow_abbrev=False, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    method_groups = [m.group or name for name, m in registered.items() if m.knobs]
    order = GROUPS[:GROUPS.index("hetero") + 1] + tuple(dict.fromkeys(
        g for g in method_groups if g not in GROUPS)) + GROUPS[GROUPS.index("hetero") + 1:]
    groups = {name: parser.add_argument_group(name) for name in order}
    groups["run and outputs"].add_argument(
        "--config", metavar="FILE", help="a preset (TOML, e.g. experiments/presets/*.toml); flags given here override it")
    for name, default, group_name, text, valid in flag_specs():
        text += f"; valid: {valid}" if valid else ""
        if isinstance(default, bool):
            groups[group_name].add_argument(f"--{name}", action="store_true", help=text)
            continue
        kind = type(default) if isinstance(default, (int, float)) else str
        groups[group_name].add_argument(f"--{name}", type=kind, default=default, metavar=kind.__name__.upper(),
                                        help=f"{text} (default: {default})")
    return parser


def flags_markdown() -> str:
    """The flag table of the README: every flag, its group, default and valid values."""
    rows = ["| flag | group | default | valid values | what it does |", "|---|---|---|---|---|"]
    for name, default, group, text, valid in flag_specs():
        rows.append(f"| `--{name}` | {group} | `{default}` | {valid or '-'} | {text} |".replace("\n", " "))
    return "\n".join(rows)


def setting_names() -> set[str]:
    """Every setting the command line takes (flag names without dashes): Config's fields and the
    registered methods' knobs."""
    return {field.name for field in dataclasses.fields(Config) if field.metadata} | set(knobs())


def refuse_repeated_flags(argv: list[str], parser: argparse.ArgumentParser) -> None:
    """argparse lets the last of a repeated flag win silently; a repeated flag is more likely a mistake."""
    flags = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]
    repeated = [flag for i, flag in enumerate(flags) if flag in flags[:i]]
    if repeated:
        parser.error(f"{repeated[0]} is given more than once; give each flag once")


def load_preset(path: str, parser: argparse.ArgumentParser) -> dict:
    """A preset file (TOML: flag names without dashes as keys) becomes the parser's defaults, so flags
    on the command line override it."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as err:
        parser.error(f"--config {path}: {err.strerror or err}")
    except tomllib.TOMLDecodeError as err:
        parser.error(f"--config {path}: not valid TOML ({err})")
    fields = {f.name: f.type for f in dataclasses.fields(Config) if f.metadata}
    fields.update({name: type(knob.default).__name__ for name, knob in knobs().items()})
    for key, value in values.items():
        if key not in fields:
            parser.error(f"--config {path}: unknown setting {key!r}")
        kind = {"int": int, "float": (int, float), "bool": bool}.get(fields[key], str)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            parser.error(f"--config {path}: {key} = {value!r} has the wrong type")
    return values


def parse_config(argv=None) -> Config:
    """Flags (over a --config preset, over the defaults) -> validated Config; ConfigError if invalid."""
    argv = sys.argv[1:] if argv is None else list(argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config")
    early.add_argument("--plugin")
    known, _ = early.parse_known_args(argv)
    if known.plugin:  # before the parser: its methods and models add flags and choices
        load_plugins(known.plugin)
    parser = build_parser()
    refuse_repeated_flags(argv, parser)
    if known.config:
        parser.set_defaults(**load_preset(known.config, parser))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    config = Config(**args)
    check_workdir_plugins(config)
    return validate(config)


def main(argv=None) -> int:
    """Exit status: 0 done, 2 refused (settings, data, workdir), 3 diverged, 4 lost another process of
    the run, 5 the disk filled up, 128 + signal when stopped by SIGINT (130) or SIGTERM (143). Every
    failure is one line on stderr."""
    launch.attach_worker_output()
    try:
        config = parse_config(argv)
        if config.distributed and not launch.is_worker():
            return launch.supervise([sys.executable, "-m", "flash_jax", *(sys.argv[1:] if argv is None else argv)],
                                    str(config.process_id) if config.process_id >= 0 else "?",
                                    config.coordinator_address, config.coordinator_timeout)
        processes.start(config, auto_devices=True)  # before the first computation
        history = train(config)
    except ConfigError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"run.py: error: --dataset {config.dataset}: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return DIVERGED_EXIT
    except DiskFull as err:
        print(f"run.py: error: {err}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(DISK_FULL_EXIT)  # now: what orbax's threads would still print while the process ends stays unsaid
    except Interrupted as err:
        print(err, file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:  # before the run installed its handlers (imports, flag parsing)
        print("interrupted before the first round", file=sys.stderr)
        return 130
    if not hosts.is_writer():
        return 0
    last = history[-1]
    extra = f", pruned-to-d accuracy {last['accuracy_pruned']:.4f}" if "accuracy_pruned" in last else ""
    print_result(f"{config.experiment_type} on {config.dataset}: round {last['round']} accuracy "
                 f"{last['accuracy']:.4f} loss {last['loss']:.4f} density {last['density']:.4f}{extra} "
                 f"({last['round_s']:.3f} s/round of training, {last['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
