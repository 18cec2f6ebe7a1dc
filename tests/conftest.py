"""One host device for the suite and the run.py processes it starts (run.py alone would make one
per core), so in-process and command-line runs compare bit for bit; the tests of several devices
and processes ask for theirs explicitly.

The suite compiles the same small federations again and again: in this process, and in every run.py,
sweep and example process it starts, each of which would compile from nothing. A persistent JAX
compilation cache in a folder of the session's own, passed to those processes through the
environment, makes each program compile once a session. The folder starts empty and goes at the
end, so a fresh clone runs the same suite as any other checkout."""
import os
import shutil
import tempfile

import jax
import pytest

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()

COMPILATION_CACHE = tempfile.mkdtemp(prefix="flash_jax_tests_jax_cache_")
CACHE_SETTINGS = {"jax_compilation_cache_dir": COMPILATION_CACHE,
                  "jax_persistent_cache_min_compile_time_secs": 0,  # every program, however quick to compile
                  "jax_persistent_cache_min_entry_size_bytes": -1}  # and however small
for name, value in CACHE_SETTINGS.items():
    os.environ[name.upper()] = str(value)  # the processes the tests start
    jax.config.update(name, value)  # this one, whether or not jax read the environment before


def pytest_unconfigure(config):
    shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as the runs load them."""
    from flash_jax.data.sources import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished 4-round PDST workdir of tests.runs.SMALL (copy it before changing it) and its config."""
    import run
    from flash_jax.fl import loop
    from tests.runs import SMALL

    workdir = str(tmp_path_factory.mktemp("finished") / "w")
    config = run.parse_config(SMALL + ["--workdir", workdir])
    loop.run(config)
    return config
