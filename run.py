"""Command line of flash_jax with the authors' flag names; `python run.py` alone runs an offline demo.

Example (the authors' README line):
    python run.py --alpha=1 --init_frac=0.05 --init_epoch=10 --experiment_type=spdst
A paper setup from a preset, with a flag overriding it:
    python run.py --config experiments/presets/cifar10_alpha1_d0.05.toml --experiment_type jmwst
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib

from flash_jax.config import Config, ConfigError
from flash_jax.data.sources import DataError

HELP = {
    "experiment_type": "method: dense (FedAvg), nst, pdst, spdst (FLASH), jmwst (FLASH), feddst",
    "dataset": "digits (offline default), fashion_mnist, mnist, cifar10, cifar100, emnist",
    "model_type": "mnistnet, leaf_cnn, resnet18, resnet18_64, resnet34, vgg16",
    "alpha": "Dirichlet concentration of the label partition (1 non-IID, 1000 ~ IID)",
    "iid": "partition uniformly at random instead of by Dirichlet",
    "density": "target density d of the maskable tensors, in (0, 1]",
    "num_users": "clients in the federation N (paper: 100)",
    "frac": "stage-2 participation: max(floor(frac*N), 1) clients per round (paper: 0.1)",
    "init_frac": "stage-1 participation (FLASH sensitivity stage)",
    "init_epoch": "local epochs in stage 1",
    "local_epoch": "local epochs per round E",
    "local_bs": "local batch size B",
    "lr_start": "initial learning rate",
    "lr_end": "final learning rate",
    "lr_schedule": "run: decay reaches lr_end at the last round; authors: their 1000-round horizon",
    "fl_rounds": "federated rounds T (paper: 600)",
    "prune_rate": "initial prune rate p0 of client sparse learning",
    "subsample_method": "JMWST's NEXT_MASK budgets: avg (clients' mean layer counts) or aggregate (model support)",
    "update_mode": "server aggregation: 0 FedAvg, 1 FMA (per-coordinate mean over the clients holding it)",
    "jmwst_update_interval": "JMWST: rounds between server-mask updates r_int (clients keep the mask fixed between)",
    "growth": "client sparse learning regrows at random (authors) or by largest |gradient| (RigL-like)",
    "hetero_client": "hetero-FLASH (spdst, jmwst): clients have density budgets, one server mask per level",
    "hetero_levels": "hetero-FLASH budget levels as fractions of --density (must include 1)",
    "hetero_proportions": "hetero-FLASH share of clients at each level",
    "hetero_assign": "client: a budget per client, fixed for the run; slot: the authors' i-th-participant assignment",
    "feddst_readjust_ratio": "FedDST: fraction of active weights readjusted (cosine-decayed to 0 at half the rounds)",
    "feddst_readjust_every": "FedDST: rounds between mask readjustments R_adj",
    "feddst_momentum": "FedDST: client SGD momentum",
    "feddst_weight_decay": "FedDST: client weight decay",
    "seed": "seed of partition, init, masks, sampling and shuffling",
    "path": "folder with the dataset's files (IDX for fashion_mnist, CIFAR python pickles)",
    "data_dir": "TFDS data dir holding prepared datasets",
    "mask_pattern": "regex over '/'-joined parameter paths selecting the maskable tensors",
    "conv_impl": "convolution formulation: auto (slices on CPU, xla elsewhere), xla, patches, slices",
    "mnistnet_softmax": "MNISTNet ends in the authors' softmax before the cross-entropy (their bounded loss; "
                        "default: logits)",
    "eval_every": "evaluate the global model every this many rounds (and at the last)",
    "workdir": "folder for config.json, metrics.jsonl and checkpoints; rerunning on it resumes the run",
    "checkpoint_every": "with --workdir: save the state every this many rounds (and after stage 1 and the last)",
    "clients_per_chunk": "clients trained per jitted call (0: the whole cohort); bounds memory for large cohorts",
    "distributed": "call jax.distributed.initialize() first (multi-host; the cluster is auto-detected)",
    "quiet": "no progress bar and no compile log",
}


class OneLineParser(argparse.ArgumentParser):
    """Errors as one line and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE",
                        help="a preset (TOML, e.g. experiments/presets/*.toml); flags given here override it")
    for field in dataclasses.fields(Config):
        flag = f"--{field.name}"
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=HELP[field.name])
            continue
        kind = {"int": int, "float": float}.get(field.type, str)
        parser.add_argument(flag, type=kind, default=field.default, metavar=kind.__name__.upper(),
                            help=f"{HELP[field.name]} (default: {field.default})")
    return parser


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
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for key, value in values.items():
        if key not in fields:
            parser.error(f"--config {path}: unknown setting {key!r}")
        kind = {"int": int, "float": (int, float), "bool": bool}.get(fields[key].type, str)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            parser.error(f"--config {path}: {key} = {value!r} has the wrong type")
    return values


def parse_config(argv=None) -> Config:
    """Flags (over a --config preset, over the defaults) -> validated Config; ConfigError if invalid."""
    parser = build_parser()
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--config")
    known, _ = preset.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_preset(known.config, parser))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    return Config(**args).validate()


def start_distributed() -> None:
    """jax.distributed.initialize with the cluster it detects (SLURM, Open MPI, Kubernetes, Cloud TPU);
    it must run before anything touches a device, so it comes before the round loop is imported."""
    import jax
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {err}") from None


def main(argv=None) -> int:
    """Exit status: 0 done, 2 refused (settings, data, workdir), 3 diverged, 128 + signal when stopped
    by SIGINT (130) or SIGTERM (143). Every failure is one line on stderr."""
    try:
        config = parse_config(argv)
        if config.distributed:
            start_distributed()
        from flash_jax.fl.loop import run  # after validation: bad flags fail before JAX starts
        from flash_jax.fl.stops import DIVERGED_EXIT, DivergenceError, Interrupted
        history = run(config)
    except ConfigError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"run.py: error: --dataset {config.dataset}: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return DIVERGED_EXIT
    except Interrupted as err:
        print(err, file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:  # before the run installed its handlers (imports, flag parsing)
        print("interrupted before the first round", file=sys.stderr)
        return 130
    last = history[-1]
    extra = f", pruned-to-d accuracy {last['accuracy_pruned']:.4f}" if "accuracy_pruned" in last else ""
    print(f"{config.experiment_type} on {config.dataset}: round {last['round']} accuracy {last['accuracy']:.4f} "
          f"loss {last['loss']:.4f} density {last['density']:.4f}{extra} "
          f"({last['round_s']:.3f} s/round of training, {last['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
