"""One frozen record of an experiment, with validation that names the offending flag."""
from __future__ import annotations

import dataclasses
import math
import re

EXPERIMENT_TYPES = ("dense", "nst", "pdst", "spdst", "jmwst", "feddst")
HETERO_TYPES = ("spdst", "jmwst")
LR_SCHEDULES = ("run", "authors")
GROWTH_METHODS = ("random", "gradient")
HETERO_ASSIGNMENTS = ("client", "slot")


class ConfigError(ValueError):
    """A setting outside its valid range; the message names the flag and the range."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Flag names and meanings follow the authors' command line (ALGORITHMS.md §0).

    Defaults are the authors' except for a bare `python run.py` to be a one-minute offline demo:
    scikit-learn's digits, 20 clients (paper: 100), 5 per round (frac 0.25; paper: 0.1), 60 rounds
    (paper: 600). The presets in experiments/ spell out the paper's settings.
    """

    experiment_type: str = "spdst"
    dataset: str = "digits"
    model_type: str = "mnistnet"
    alpha: float = 1.0
    iid: bool = False
    density: float = 0.05
    num_users: int = 20
    frac: float = 0.25
    init_frac: float = 0.1
    init_epoch: int = 10
    local_epoch: int = 1
    local_bs: int = 32
    lr_start: float = 0.1
    lr_end: float = 0.001
    lr_schedule: str = "run"
    fl_rounds: int = 60
    prune_rate: float = 0.25
    subsample_method: str = "avg"
    update_mode: int = 0
    jmwst_update_interval: int = 1
    growth: str = "random"
    hetero_client: bool = False
    hetero_levels: str = "0.5,0.75,1"
    hetero_proportions: str = "0.3,0.3,0.4"
    hetero_assign: str = "client"
    feddst_readjust_ratio: float = 0.05
    feddst_readjust_every: int = 10
    feddst_momentum: float = 0.9
    feddst_weight_decay: float = 1e-3
    seed: int = 1
    path: str | None = None
    data_dir: str | None = None
    mask_pattern: str | None = None
    conv_impl: str = "auto"
    mnistnet_softmax: bool = False
    eval_every: int = 10
    workdir: str | None = None
    checkpoint_every: int = 10
    clients_per_chunk: int = 0
    distributed: bool = False
    quiet: bool = False

    @property
    def clients_per_round(self) -> int:
        return max(math.floor(self.frac * self.num_users), 1)

    @property
    def stage1_clients(self) -> int:
        return max(math.floor(self.init_frac * self.num_users), 1)

    @property
    def density_levels(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """hetero-FLASH's budget levels h (fractions of d) and their shares, sorted by level, highest
        (h = 1, the server's own mask) first; one level of share 1 without --hetero_client."""
        if not self.hetero_client:
            return (1.0,), (1.0,)
        levels = _float_list(self.hetero_levels, "--hetero_levels")
        shares = _float_list(self.hetero_proportions, "--hetero_proportions")
        if len(levels) != len(shares):
            raise ConfigError(f"--hetero_levels has {len(levels)} entries but --hetero_proportions has {len(shares)}")
        pairs = sorted(zip(levels, shares), reverse=True)
        return tuple(h for h, _ in pairs), tuple(w for _, w in pairs)

    def validate(self) -> "Config":
        """Check every range that does not need the data; raises ConfigError on the first problem."""
        from flash_jax.data.sources import DATASETS
        from flash_jax.models import CONV_IMPLS, MODEL_TYPES

        checks = [
            (self.experiment_type in EXPERIMENT_TYPES, "--experiment_type", f"one of {', '.join(EXPERIMENT_TYPES)}"),
            (self.dataset in DATASETS, "--dataset", f"one of {', '.join(DATASETS)}"),
            (self.model_type in MODEL_TYPES, "--model_type", f"one of {', '.join(MODEL_TYPES)}"),
            (0.0 < self.density <= 1.0, "--density", "in (0, 1]"),
            (self.alpha > 0.0, "--alpha", "> 0"),
            (self.num_users >= 1, "--num_users", ">= 1"),
            (0.0 < self.frac <= 1.0, "--frac", "in (0, 1] (it selects max(floor(frac*num_users), 1) clients)"),
            (0.0 < self.init_frac <= 1.0, "--init_frac", "in (0, 1]"),
            (self.init_epoch >= 1, "--init_epoch", ">= 1"),
            (self.local_epoch >= 1, "--local_epoch", ">= 1"),
            (self.local_bs >= 1, "--local_bs", ">= 1"),
            (self.lr_start > 0.0, "--lr_start", "> 0"),
            (self.lr_end > 0.0, "--lr_end", "> 0"),
            (self.lr_schedule in LR_SCHEDULES, "--lr_schedule", f"one of {', '.join(LR_SCHEDULES)}"),
            (self.fl_rounds >= 1, "--fl_rounds", ">= 1"),
            (0.0 <= self.prune_rate < 1.0, "--prune_rate", "in [0, 1)"),
            (self.subsample_method in ("avg", "aggregate"), "--subsample_method", "one of avg, aggregate"),
            (self.update_mode in (0, 1), "--update_mode", "0 (FedAvg) or 1 (FMA, masked average)"),
            (self.jmwst_update_interval >= 1, "--jmwst_update_interval", ">= 1"),
            (self.growth in GROWTH_METHODS, "--growth", f"one of {', '.join(GROWTH_METHODS)}"),
            (self.hetero_assign in HETERO_ASSIGNMENTS, "--hetero_assign", f"one of {', '.join(HETERO_ASSIGNMENTS)}"),
            (0.0 <= self.feddst_readjust_ratio < 1.0, "--feddst_readjust_ratio", "in [0, 1)"),
            (self.feddst_readjust_every >= 1, "--feddst_readjust_every", ">= 1"),
            (0.0 <= self.feddst_momentum < 1.0, "--feddst_momentum", "in [0, 1)"),
            (self.feddst_weight_decay >= 0.0, "--feddst_weight_decay", ">= 0"),
            (self.eval_every >= 1, "--eval_every", ">= 1"),
            (self.checkpoint_every >= 1, "--checkpoint_every", ">= 1"),
            (self.clients_per_chunk >= 0, "--clients_per_chunk", ">= 0 (0: the whole cohort in one call)"),
            (self.conv_impl in ("auto",) + CONV_IMPLS, "--conv_impl", f"one of auto, {', '.join(CONV_IMPLS)}"),
        ]
        for field in dataclasses.fields(self):  # NaN passes no range check; inf would pass some
            value = getattr(self, field.name)
            if field.type == "float" and not math.isfinite(value):
                raise ConfigError(f"--{field.name}={value!r} is invalid: must be a finite number")
        checks += [
            (0 <= self.seed < 2**32, "--seed", "in [0, 2**32) (a 32-bit seed, as JAX's PRNGKey takes)"),
            (self.workdir is None or self.workdir.strip() != "", "--workdir", "a folder name (omit the flag for "
             "a run that writes nothing)"),
        ]
        for ok, flag, valid in checks:
            if not ok:
                raise ConfigError(f"{flag}={getattr(self, flag[2:])!r} is invalid: must be {valid}")
        if self.mask_pattern is not None:
            try:
                re.compile(self.mask_pattern)
            except re.error as err:
                raise ConfigError(f"--mask_pattern={self.mask_pattern!r} is invalid: not a regular expression "
                                  f"({err})") from None
        if self.hetero_client:
            self._validate_hetero()
        if self.mnistnet_softmax and self.model_type != "mnistnet":
            raise ConfigError(f"--mnistnet_softmax works with --model_type mnistnet, not {self.model_type}")
        return self

    def _validate_hetero(self) -> None:
        if self.experiment_type not in HETERO_TYPES:
            raise ConfigError(f"--hetero_client works with --experiment_type {' or '.join(HETERO_TYPES)}, "
                              f"not {self.experiment_type}")
        for flag, text, ok, valid in (
                ("--hetero_levels", self.hetero_levels, lambda h: 0.0 < h <= 1.0, "in (0, 1]"),
                ("--hetero_proportions", self.hetero_proportions, lambda w: 0.0 <= w <= 1.0, "in [0, 1]")):
            for value in _float_list(text, flag):
                if not ok(value):  # NaN fails every comparison, so it lands here too
                    raise ConfigError(f"{flag}={text!r} is invalid: {value} is not a number {valid}")
        levels, shares = self.density_levels
        if levels[0] != 1.0 or len(set(levels)) != len(levels):
            raise ConfigError(f"--hetero_levels={self.hetero_levels!r} is invalid: must be distinct fractions of "
                              "--density in (0, 1], including 1 (the server's own mask)")
        if abs(sum(shares) - 1.0) > 1e-6:
            raise ConfigError(f"--hetero_proportions={self.hetero_proportions!r} is invalid: must be >= 0 "
                              "and sum to 1")

    def validate_against_data(self, num_train_examples: int) -> None:
        if self.num_users > num_train_examples:
            raise ConfigError(f"--num_users={self.num_users} is invalid: must be <= {num_train_examples}, "
                              f"the number of training examples of {self.dataset}")

    def validate_against_model(self, input_shape: tuple[int, ...], min_input: int) -> None:
        """The data's images must survive the model's downsampling."""
        if min(input_shape[:2]) < min_input:
            raise ConfigError(f"--model_type {self.model_type} needs images of at least {min_input}x{min_input}, "
                              f"but --dataset {self.dataset} has {input_shape[0]}x{input_shape[1]}; pick another "
                              "model or dataset")

    def validate_against_tensors(self, sizes: dict[str, int], sparse: bool) -> None:
        """A sparse method needs every maskable tensor (`sizes`: path -> entries) to keep a weight at
        the lowest density it trains at."""
        lowest = self.density * min(self.density_levels[0])
        smallest = min(sizes, key=sizes.get)
        if sparse and round(lowest * sizes[smallest]) < 1:
            raise ConfigError(f"--density={self.density!r} is invalid here: {smallest} ({sizes[smallest]} weights) "
                              f"would keep no weight; must be at least "
                              f"{1 / (sizes[smallest] * min(self.density_levels[0])):.3g}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is invalid: must be comma-separated numbers") from None
