"""One host device for the suite and the run.py processes it starts (run.py alone would make one
per core), so in-process and command-line runs compare bit for bit; the tests of several devices
and processes ask for theirs explicitly."""
import os

import pytest

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()


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
