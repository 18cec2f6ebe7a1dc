"""The processes and devices a run computes on: host devices per CPU core and JAX's multi-process
runtime (what the processes share once started is flash_jax/hosts.py).

Both must be set before JAX starts its backends, so `start` runs before the first computation.
Every process computes the same rounds; process 0 alone writes the workdir's files and shows
progress. A process that loses the others (one was killed, a node failed) is ended by JAX's
runtime within HEARTBEAT_S or so instead of hanging in a collective (flash_jax/launch.py turns that
into one line for run.py).
"""
from __future__ import annotations

import json
import os
import re
import sys

import jax

from flash_jax import hosts, launch
from flash_jax.config import Config, ConfigError

HEARTBEAT_S = 20  # a process not heard from for this long counts as dead (JAX's default: 100)
_HOST_DEVICES_FLAG = "xla_force_host_platform_device_count"


def cpu_cores() -> int:
    """The cores this process may run on (a SLURM job's or container's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def backends_started() -> bool:
    from jax._src import xla_bridge  # JAX has no public way to ask without starting them
    return xla_bridge.backends_are_initialized()


def host_devices(config: Config, auto: bool) -> int | None:
    """How many CPU devices to create: --host_devices, else one per core when `auto`; None leaves
    JAX's own setting (XLA_FLAGS naming a count wins over the automatic one)."""
    if config.host_devices:
        return config.host_devices
    if not auto or _HOST_DEVICES_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return cpu_cores()


def start(config: Config, auto_devices: bool) -> None:
    """Host devices (`auto_devices`: one per core unless told otherwise) and, with --distributed,
    JAX's multi-process runtime; a second call in the same process checks instead of redoing."""
    count = host_devices(config, auto_devices)
    if backends_started():
        if config.host_devices and config.host_devices != jax.local_device_count("cpu"):
            raise ConfigError(f"--host_devices {config.host_devices}: JAX already runs with "
                              f"{jax.local_device_count('cpu')} CPU devices in this process; set it before the "
                              "first JAX computation (or in XLA_FLAGS)")
    elif count:
        jax.config.update("jax_num_cpu_devices", count)
    if config.distributed and not jax.distributed.is_initialized():
        _start_distributed(config)


def _start_distributed(config: Config) -> None:
    """jax.distributed.initialize from the flags, or from the cluster JAX detects (SLURM, Open MPI,
    Kubernetes, Cloud TPU) where they are not given; CPU collectives through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    settings = {"coordinator_address": config.coordinator_address or None,
                "num_processes": config.num_processes or None,
                "process_id": None if config.process_id < 0 else config.process_id}
    try:
        jax.distributed.initialize(**settings, heartbeat_timeout_seconds=HEARTBEAT_S,
                                   initialization_timeout=config.coordinator_timeout)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {_first_line(err)}") from None
    if launch.is_worker():
        print(launch.JOINED, file=sys.stderr, flush=True)
    _check_same_settings(config)


# what may differ between the processes of one run: who they are, how they show progress, their devices
PER_PROCESS_SETTINGS = ("process_id", "quiet", "host_devices", "download")


def _check_same_settings(config: Config) -> None:
    """Every process compares its settings with process 0's before anything is written; all of them
    refuse the run, with the same line, when one differs (it would compute neither run, or hang)."""
    mine = {k: v for k, v in config.to_dict().items() if k not in PER_PROCESS_SETTINGS}
    everyone = [json.loads(text) for text in hosts.gather_text(json.dumps(mine, sort_keys=True))]
    for index, theirs in enumerate(everyone[1:], start=1):
        differing = [k for k in everyone[0] if everyone[0][k] != theirs.get(k)]
        if differing:
            key = differing[0]
            raise ConfigError(f"--{key} differs between the processes of the run: {everyone[0][key]!r} on process "
                              f"0, {theirs.get(key)!r} on process {index}; start every process with the same settings")


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return re.sub(r"\s+", " ", text[0]) if text else type(error).__name__
