"""One host device for the suite and the run.py processes it starts (run.py alone would make one
per core), so in-process and command-line runs compare bit for bit; the tests of several devices
and processes ask for theirs explicitly."""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()
