"""One frozen record of an experiment, with validation that names the offending flag."""
from __future__ import annotations

import dataclasses
import math
import re

LR_SCHEDULES = ("run", "authors")
GROWTH_METHODS = ("random", "gradient")
HETERO_ASSIGNMENTS = ("client", "slot")
# --help shows the flags in these groups, in this order (each field's metadata names its group); the
# registered methods' knobs come in groups of their own after "hetero"
GROUPS = ("data", "model", "method", "FLASH", "hetero", "run and outputs", "scale")


class ConfigError(ValueError):
    """A setting outside its valid range; the message names the flag and the range."""


def _flag(default, group: str, help: str):
    """A setting with its --help group and text: the command line is generated from these."""
    assert group in GROUPS, group
    return dataclasses.field(default=default, metadata={"group": group, "help": help})


def choices() -> dict[str, tuple]:
    """The valid values of the settings that name something, from the code and registries that
    define them (the validation and --help both read this)."""
    from flash_jax.data.sources import DATASETS
    from flash_jax.fl.methods import methods
    from flash_jax.models import CONV_IMPLS, model_names

    return {"experiment_type": tuple(methods()), "dataset": DATASETS, "model_type": model_names(),
            "lr_schedule": LR_SCHEDULES, "update_mode": (0, 1), "growth": GROWTH_METHODS,
            "hetero_assign": HETERO_ASSIGNMENTS, "conv_impl": ("auto",) + CONV_IMPLS}


def _registered_knobs() -> dict:
    from flash_jax.fl.methods import knobs
    return knobs()


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    """Flag names and meanings follow the authors' command line (ALGORITHMS.md §0).

    Defaults are the authors' except for a bare `python run.py` to be a one-minute offline demo:
    scikit-learn's digits, 20 clients (paper: 100), 5 per round (frac 0.25; paper: 0.1), 60 rounds
    (paper: 600). The presets in experiments/ spell out the paper's settings.

    Besides its fields, a Config takes the knobs of every registered method by name
    (`Config(experiment_type="feddst", feddst_momentum=0.5)`) and reads them as attributes;
    `method_knobs` holds those that differ from their defaults.
    """

    experiment_type: str = _flag("spdst", "method", "method (the list below)")
    dataset: str = _flag("digits", "data", "dataset (digits: offline default)")
    model_type: str = _flag("mnistnet", "model", "model")
    alpha: float = _flag(1.0, "data", "Dirichlet concentration of the label partition (1 non-IID, 1000 ~ IID)")
    iid: bool = _flag(False, "data", "partition uniformly at random instead of by Dirichlet")
    density: float = _flag(0.05, "method", "target density d of the maskable tensors, in (0, 1]")
    num_users: int = _flag(20, "data", "clients in the federation N (paper: 100)")
    frac: float = _flag(0.25, "method", "stage-2 participation: max(floor(frac*N), 1) clients per round (paper: 0.1)")
    init_frac: float = _flag(0.1, "FLASH", "stage-1 participation (FLASH sensitivity stage)")
    init_epoch: int = _flag(10, "FLASH", "local epochs in stage 1")
    local_epoch: int = _flag(1, "method", "local epochs per round E")
    local_bs: int = _flag(32, "method", "local batch size B")
    lr_start: float = _flag(0.1, "method", "initial learning rate")
    lr_end: float = _flag(0.001, "method", "final learning rate")
    clip_grad_norm: float = _flag(5.0, "method",
                        "clients scale each step's gradient of the trained weights to at most this global L2 norm; "
                        "keeps lr 0.1 finite with logits (0: plain SGD, as the authors)")
    lr_schedule: str = _flag("run", "method",
                        "run: decay reaches lr_end at the last round; authors: their 1000-round horizon")
    fl_rounds: int = _flag(60, "method", "federated rounds T (paper: 600)")
    prune_rate: float = _flag(0.25, "method", "initial prune rate p0 of client sparse learning")
    update_mode: int = _flag(0, "method",
                        "server aggregation: 0 FedAvg, 1 FMA (per-coordinate mean over the clients holding it)")
    growth: str = _flag("random", "method",
                        "client sparse learning regrows at random (authors) or by largest |gradient| (RigL-like)")
    hetero_client: bool = _flag(False, "hetero",
                        "hetero-FLASH (spdst, jmwst): clients have density budgets, one server mask per level")
    hetero_levels: str = _flag("0.5,0.75,1", "hetero",
                        "hetero-FLASH budget levels as fractions of --density (must include 1)")
    hetero_proportions: str = _flag("0.3,0.3,0.4", "hetero", "hetero-FLASH share of clients at each level")
    hetero_assign: str = _flag("client", "hetero",
                        "client: a budget per client, fixed for the run; slot: the authors' i-th-participant "
                        "assignment")
    seed: int = _flag(1, "run and outputs", "seed of partition, init, masks, sampling and shuffling")
    path: str | None = _flag(None, "data",
                        "folder with the dataset's files (IDX for fashion_mnist, CIFAR python pickles)")
    data_dir: str | None = _flag(None, "data", "folder that --download fills (when not given: $FLASH_JAX_DATA, "
                                 "else ~/.cache/flash_jax) and TFDS data dir holding prepared datasets")
    download: bool = _flag(False, "data", "fetch the dataset (any but digits) from its publisher into "
                                          "--data_dir once, checked against pinned checksums")
    mask_pattern: str | None = _flag(None, "model",
                        "regex over '/'-joined parameter paths selecting the maskable tensors")
    conv_impl: str = _flag("auto", "model", "convolution formulation (auto: slices on CPU, xla elsewhere)")
    mnistnet_softmax: bool = _flag(False, "model",
                        "MNISTNet ends in the authors' softmax before the cross-entropy (their bounded loss, "
                        "which trains far slower; default: logits)")
    eval_every: int = _flag(10, "run and outputs", "evaluate the global model every this many rounds (and at the last)")
    workdir: str | None = _flag(None, "run and outputs",
                        "folder for config.json, metrics.jsonl and checkpoints; rerunning on it resumes the run")
    checkpoint_every: int = _flag(10, "run and outputs",
                        "with --workdir: save the state every this many rounds (and after stage 1 and the last)")
    clients_per_chunk: int = _flag(0, "scale",
                        "clients trained per jitted call (0: the whole cohort); bounds memory for large cohorts")
    distributed: bool = _flag(False, "scale",
                        "run as one of several processes (JAX's multi-process runtime): the cohort is split over "
                        "every process's devices, process 0 writes the workdir; the cluster (SLURM, Open MPI, "
                        "Cloud TPU) is detected, or give the three flags below")
    coordinator_address: str = _flag("", "scale", "with --distributed: HOST:PORT of process 0 (default: detected)")
    num_processes: int = _flag(0, "scale", "with --distributed: how many processes (0: detected)")
    process_id: int = _flag(-1, "scale", "with --distributed: this process's index, 0 to num_processes-1 "
                                         "(-1: detected)")
    coordinator_timeout: int = _flag(60, "scale", "with --distributed: seconds to wait for every process to join "
                                                  "the run before giving up with one line")
    host_devices: int = _flag(0, "scale", "CPU devices per process the client axis is split over (0: one per "
                                          "core from the command line, unless XLA_FLAGS sets a count)")
    quiet: bool = _flag(False, "run and outputs", "no progress bar and no compile log")
    max_train_loss: float = _flag(1000.0, "run and outputs",
                        "stop as diverged (exit 3) when a round's mean training loss exceeds this; working runs "
                        "stay below ~10 (cross-entropy starts at ln(classes))")
    method_knobs: tuple = ()

    def __init__(self, **settings):
        known = _registered_knobs()
        given = dict(settings.pop("method_knobs", ()))
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        for name, value in settings.items():
            if name not in known:
                raise TypeError(f"Config got an unknown setting {name!r} (not a field, nor a registered "
                                "method's knob)")
            given[name] = value
        object.__setattr__(self, "method_knobs", tuple(sorted(
            (name, value) for name, value in given.items() if name not in known or value != known[name].default)))

    def __getattr__(self, name: str):
        """A registered method's knob: its value here, else its default."""
        knob = _registered_knobs().get(name) if not name.startswith("_") else None
        if knob is None:
            raise AttributeError(f"'Config' has no setting {name!r}")
        return dict(self.__dict__.get("method_knobs", ())).get(name, knob.default)

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
        checks = [(getattr(self, name) in valid, f"--{name}", f"one of {', '.join(map(str, valid))}")
                  for name, valid in choices().items()]
        checks += [
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
            (self.clip_grad_norm >= 0.0, "--clip_grad_norm", ">= 0 (0: no clipping)"),
            (self.fl_rounds >= 1, "--fl_rounds", ">= 1"),
            (self.max_train_loss > 0.0, "--max_train_loss", "> 0"),
            (0.0 <= self.prune_rate < 1.0, "--prune_rate", "in [0, 1)"),
            (self.eval_every >= 1, "--eval_every", ">= 1"),
            (self.checkpoint_every >= 1, "--checkpoint_every", ">= 1"),
            (self.clients_per_chunk >= 0, "--clients_per_chunk", ">= 0 (0: the whole cohort in one call)"),
            (self.host_devices >= 0, "--host_devices", ">= 0 (0: one per core)"),
            (self.num_processes >= 0, "--num_processes", ">= 0 (0: detected)"),
            (self.coordinator_timeout >= 1, "--coordinator_timeout", ">= 1 (seconds)"),
            (self.coordinator_address == "" or _is_host_port(self.coordinator_address), "--coordinator_address",
             "HOST:PORT, e.g. 10.0.0.1:1234, with a port from 1 to 65535"),
            (-1 <= self.process_id < (self.num_processes or 2**31), "--process_id",
             f"in [0, {self.num_processes}) (or -1: detected)" if self.num_processes else ">= 0 (or -1: detected)"),
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
        for knob in _registered_knobs().values():
            value = getattr(self, knob.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{knob.name}={value!r} is invalid: must be a finite number")
            checks.append((value in knob.choices if knob.choices else knob.valid is None or knob.valid(value),
                           f"--{knob.name}", f"one of {', '.join(map(str, knob.choices))}" if knob.choices
                           else knob.valid_text))
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
        given = [flag for flag, value, default in (("--coordinator_address", self.coordinator_address, ""),
                 ("--num_processes", self.num_processes, 0), ("--process_id", self.process_id, -1)) if value != default]
        if given and not self.distributed:
            raise ConfigError(f"{given[0]} needs --distributed (it says how the processes of one run find each other)")
        if self.download and self.path:
            raise ConfigError("--download fetches into --data_dir; it does not combine with --path (files "
                              "prepared by hand)")
        if self.mnistnet_softmax and self.model_type != "mnistnet":
            raise ConfigError(f"--mnistnet_softmax works with --model_type mnistnet, not {self.model_type}")
        return self

    def _validate_hetero(self) -> None:
        from flash_jax.fl.methods import methods
        hetero = [name for name, method in methods().items() if method.hetero]
        if self.experiment_type not in hetero:
            raise ConfigError(f"--hetero_client works with --experiment_type {' or '.join(hetero)}, "
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
        """Every setting by flag name, registered knobs included (config.json, checkpoints)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_knobs"}
        return {**settings, **{name: getattr(self, name) for name in _registered_knobs()}}


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(re.fullmatch(r"[\w.-]+|\[[0-9a-fA-F:.]+\]", host)) and port.isdigit() and 1 <= int(port) <= 65535


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is invalid: must be comma-separated numbers") from None
