"""One frozen record of an experiment: its settings by flag name, a registered method's knobs among
them. What values are valid is flash_jax/settings.py's business, which checks a Config once per run."""
from __future__ import annotations

import dataclasses
import math
import numbers

from flash_jax.knobs import declared

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


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    """Flag names and meanings follow the authors' command line (docs/usage.md).

    Defaults are the authors' except for a bare `python run.py` to be a one-minute offline demo:
    scikit-learn's digits, 20 clients (paper: 100), 5 per round (frac 0.25; paper: 0.1), 60 rounds
    (paper: 600). The presets in experiments/ spell out the paper's settings.

    Besides its fields, a Config takes the knobs of every registered method by name
    (`Config(experiment_type="feddst", feddst_momentum=0.5)`) and reads them as attributes;
    `method_knobs` maps those that differ from their defaults to their values.
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
                        "server aggregation of pdst, spdst, jmwst, nst: 0 FedAvg, 1 FMA (per-coordinate mean over "
                        "the clients holding it); the other methods aggregate their own way")
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
    plugin: str | None = _flag(None, "run and outputs", "Python files (or modules), comma-separated, imported first: "
                                                        "they register methods or models (e.g. examples/custom_method.py); "
                                                        "give it again when continuing the run")
    max_train_loss: float = _flag(1000.0, "run and outputs",
                        "stop as diverged (exit 3) when a round's mean training loss exceeds this; working runs "
                        "stay below ~10 (cross-entropy starts at ln(classes))")
    method_knobs: dict = dataclasses.field(default_factory=dict)

    def __init__(self, **settings):
        known = declared()
        given = dict(settings.pop("method_knobs", {}))
        for field in dataclasses.fields(self):
            if field.metadata:  # a flag
                object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        for name, value in settings.items():
            if name not in known:
                raise ConfigError(f"Config got an unknown setting {name!r} (not a field, nor a registered "
                                  "method's knob)")
            given[name] = value
        for field in dataclasses.fields(self):
            if field.metadata:
                object.__setattr__(self, field.name, _typed(field.name, getattr(self, field.name), field.type))
        given = {name: _typed(name, value, type(known[name].default).__name__) if name in known else value
                 for name, value in given.items()}
        object.__setattr__(self, "method_knobs", dict(sorted(
            (name, value) for name, value in given.items() if name not in known or value != known[name].default)))

    def __getattr__(self, name: str):
        """A registered method's knob: its value here, else its default."""
        knob = declared().get(name) if not name.startswith("_") else None
        if knob is None:
            raise AttributeError(f"'Config' has no setting {name!r}")
        return self.__dict__.get("method_knobs", {}).get(name, knob.default)

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
        levels = float_list(self.hetero_levels, "--hetero_levels")
        shares = float_list(self.hetero_proportions, "--hetero_proportions")
        if len(levels) != len(shares):
            raise ConfigError(f"--hetero_levels has {len(levels)} entries but --hetero_proportions has {len(shares)}")
        pairs = sorted(zip(levels, shares), reverse=True)
        return tuple(h for h, _ in pairs), tuple(w for _, w in pairs)

    def to_dict(self) -> dict:
        """Every setting by flag name, registered knobs included (config.json, checkpoints)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_knobs"}
        return {**settings, **{name: getattr(self, name) for name in declared()}}


_KINDS = {"int": (int, "a whole number"), "float": (float, "a number"), "bool": (bool, "True or False"),
          "str": (str, "a string"), "str | None": (str, "a string or None")}


def _typed(name: str, value, kind: str):
    """`value` as the setting's type (an int where a float goes becomes a float); ConfigError naming
    the setting when it is of another type (a bool is no number, a float with a fraction no int)."""
    python_type, words = _KINDS[kind]
    if value is None and kind == "str | None":
        return value
    if isinstance(value, bool) != (python_type is bool):
        ok = False
    elif python_type is int:
        ok = isinstance(value, numbers.Integral)
    elif python_type is float:
        ok = isinstance(value, numbers.Real)
    else:
        ok = isinstance(value, python_type)
    if not ok:
        raise ConfigError(f"{name}={value!r} has the wrong type: must be {words}")
    return python_type(value)


def float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is invalid: must be comma-separated numbers") from None
