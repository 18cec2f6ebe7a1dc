"""Multi-process runs on this machine: two processes x two host devices on localhost, talking
through JAX's distributed runtime with gloo collectives, against one process with one device;
SIGKILL of both and a restart; SIGKILL of one."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, os.path.join(ROOT, "run.py"), "--experiment_type", "nst", "--num_users", "20", "--frac",
       "0.25", "--lr_start", "0.1", "--density", "0.3", "--local_epoch", "3", "--eval_every", "2", "--checkpoint_every", "2", "--quiet"]
TIMING = ("round_s", "wall_s", "compiled_cohort_shapes", "padding_efficiency")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           JAX_PLATFORMS="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two(workdir, rounds: int, port: int | None = None) -> list[subprocess.Popen]:
    port = port or free_port()
    return [subprocess.Popen(RUN + ["--fl_rounds", str(rounds), "--workdir", str(workdir), "--distributed",
                                    "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                                    "--process_id", str(i), "--host_devices", "2"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def finish(procs, timeout=600) -> list[tuple[int, str, str]]:
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *output) for p, output in zip(procs, outputs)]


def metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir) -> dict:
    """The newest checkpoint's parameters as numpy, whatever devices wrote them."""
    steps = os.path.join(workdir, "checkpoints")
    path = os.path.join(steps, str(max(int(s) for s in os.listdir(steps) if s.isdigit())), "state")
    checkpointer = ocp.StandardCheckpointer()
    target = jax.tree.map(lambda a: np.empty(a.shape, a.dtype), checkpointer.metadata(path).item_metadata.tree)
    return traverse_util.flatten_dict(checkpointer.restore(path, target)["model"]["params"], sep="/")


def assert_close_metrics(a: list[dict], b: list[dict], rel: float):
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        for key in ra:
            if key in TIMING:
                continue
            if isinstance(ra[key], float):
                assert rb[key] == pytest.approx(ra[key], rel=rel, abs=1e-7), (ra["round"], key)
            elif isinstance(ra[key], dict):
                assert rb[key] == pytest.approx(ra[key], rel=rel, abs=1e-7), (ra["round"], key)
            else:
                assert rb[key] == ra[key], (ra["round"], key)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two")
    results = finish(start_two(workdir, rounds=6))
    for status, out, err in results:
        assert status == 0, err[-3000:]
    return workdir, results


@pytest.mark.slow
def test_two_processes_equal_one(two_process_run, tmp_path):
    workdir, results = two_process_run
    one = subprocess.run(RUN + ["--fl_rounds", "6", "--workdir", str(tmp_path), "--host_devices", "1"], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    single, double = metrics(tmp_path), metrics(workdir)
    assert len(double) == 3 and double[-1]["accuracy"] > 0.4  # it learns
    assert_close_metrics(single, double, rel=1e-4)
    a, b = final_params(tmp_path), final_params(workdir)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)
    # process 0 alone speaks: the summary line once, nothing from process 1
    (_, out0, err0), (_, out1, err1) = results
    assert "nst on digits: round 6" in out0 and out1 == ""
    assert "Gloo" not in err0 + err1 and "Traceback" not in err0 + err1


@pytest.mark.slow
def test_both_killed_and_restarted_end_as_uninterrupted(two_process_run, tmp_path):
    reference, _ = two_process_run
    procs = start_two(tmp_path, rounds=6)
    deadline = time.time() + 300
    while not os.path.isdir(tmp_path / "checkpoints" / "2") and time.time() < deadline:
        time.sleep(0.2)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    finish(procs)
    results = finish(start_two(tmp_path, rounds=6))
    for status, out, err in results:
        assert status == 0, err[-3000:]
    assert "resuming" in results[0][2]
    assert_close_metrics(metrics(reference), metrics(tmp_path), rel=0)
    a, b = final_params(reference), final_params(tmp_path)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_ends_the_other_within_a_minute(tmp_path, victim):
    procs = start_two(tmp_path, rounds=1000)
    deadline = time.time() + 300
    while not os.path.exists(tmp_path / "metrics.jsonl") or os.path.getsize(tmp_path / "metrics.jsonl") == 0:
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.time()
    survivor = procs[1 - victim]
    _, err = survivor.communicate(timeout=90)
    assert time.time() - killed < 60
    assert survivor.returncode == 4
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"run.py: error: process {1 - victim} lost the other processes"), err
    finish(procs)


@pytest.mark.slow
def test_processes_started_with_other_settings_all_refuse_in_one_line_before_writing(tmp_path):
    port = free_port()
    procs = [subprocess.Popen(RUN + ["--fl_rounds", "2", "--workdir", str(tmp_path / "w"), "--distributed",
                                     "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                                     "--process_id", str(i), "--host_devices", "1", *extra], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, extra in enumerate([[], ["--seed", "2"]])]
    for status, out, err in finish(procs, timeout=300):
        assert status == 2 and err.strip().splitlines() == [
            "run.py: error: --seed differs between the processes of the run: 1 on process 0, 2 on process 1; "
            "start every process with the same settings"], err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_that_cannot_join_gives_up_after_the_timeout_in_one_line(process_id):
    port = free_port()
    started = time.time()
    result = subprocess.run(RUN + ["--fl_rounds", "2", "--distributed", "--coordinator_address", f"127.0.0.1:{port}",
                                   "--num_processes", "2", "--process_id", str(process_id), "--coordinator_timeout",
                                   "3"], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"run.py: error: process {process_id} could not join the run at 127.0.0.1:{port} within 3 s (DEADLINE_EXCEEDED:"
        " Deadline Exceeded); start every process with the same --coordinator_address and --num_processes, or raise "
        "--coordinator_timeout"], result.stderr
    assert time.time() - started < 60


def test_a_user_worker_setting_leaves_the_output_where_it_is(monkeypatch):
    """FLASH_JAX_WORKER=1 names no pipes: Python's stdout and stderr stay as they are."""
    from flash_jax import launch
    monkeypatch.setenv(launch.WORKER_ENV, "1")
    before = sys.stdout, sys.stderr
    launch.attach_worker_output()
    assert (sys.stdout, sys.stderr) == before and launch.is_worker()


@pytest.mark.slow
def test_a_user_worker_setting_runs_in_this_process():
    """FLASH_JAX_WORKER=1: the work runs in the process itself (no supervising parent, the runtime's
    own log), here one process of a one-process run."""
    from flash_jax import launch
    result = subprocess.run(RUN + ["--fl_rounds", "2", "--distributed", "--coordinator_address",
                                   f"127.0.0.1:{free_port()}", "--num_processes", "1", "--process_id", "0"],
                            env=dict(ENV, FLASH_JAX_WORKER="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nst on digits: round 2 accuracy") and launch.JOINED in result.stderr


def test_a_malformed_coordinator_address_is_refused_at_once():
    result = subprocess.run(RUN + ["--distributed", "--coordinator_address", "not an address", "--num_processes",
                                   "2", "--process_id", "0"], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "run.py: error: --coordinator_address='not an address' is invalid: must be HOST:PORT, e.g. 10.0.0.1:1234, "
        "with a port from 1 to 65535"]


def test_process_flags_need_distributed_and_are_checked():
    from flash_jax import Config, ConfigError
    from flash_jax.settings import validate
    with pytest.raises(ConfigError, match="--num_processes needs --distributed"):
        validate(Config(num_processes=2))
    with pytest.raises(ConfigError, match=r"--process_id=2 is invalid: must be in \[0, 2\)"):
        validate(Config(distributed=True, num_processes=2, process_id=2))
    with pytest.raises(ConfigError, match="--host_devices=-1 is invalid"):
        validate(Config(host_devices=-1))
    validate(Config(distributed=True, coordinator_address="127.0.0.1:1", num_processes=2, process_id=1))


def test_host_devices_one_per_core_unless_told(monkeypatch):
    from flash_jax import Config, processes
    monkeypatch.setattr(processes, "cpu_cores", lambda: 6)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert processes.host_devices(Config(), auto=True) == 6
    assert processes.host_devices(Config(), auto=False) is None  # from Python: JAX's own setting
    assert processes.host_devices(Config(host_devices=3), auto=False) == 3
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert processes.host_devices(Config(), auto=True) is None  # the user's XLA_FLAGS win


def test_host_devices_refused_once_jax_runs_with_another_count():
    import jax
    from flash_jax import Config, ConfigError, processes
    jax.devices()  # the backend is up (one device in the suite)
    with pytest.raises(ConfigError, match="--host_devices 3: JAX already runs with 1 CPU devices"):
        processes.start(Config(host_devices=3), auto_devices=False)
    processes.start(Config(host_devices=1), auto_devices=True)  # the same count: nothing to do


FAKE_WORKER = """
import os, sys
from flash_jax import launch
launch.attach_worker_output()
print(launch.JOINED, file=sys.stderr, flush=True)
print("round 1 of 9", flush=True)
os.write(1, b"[Gloo] Rank 1 is connected to 3")  # gloo and gRPC write to descriptors 1 and 2, in pieces
os.write(1, b" peer ranks. Expected number of connected peer ranks is : 3\\n")
os.write(2, b"Additional GRPC error information from remote target coordination_service:\\n")
os.write(2, b"  :UNKNOWN:Error received from peer {grpc_status:14}\\n")
try:
    raise RuntimeError("collective lost its peer")
except RuntimeError:
    import traceback
    traceback.print_exc()
sys.stderr.flush()
os.write(2, b"F0101 00:00:00.000 1 client.cc:1] absl::Status: UNAVAILABLE: Failed to send RPC to coordination service\\n")
os.abort()
"""


def test_the_runtime_noise_of_a_lost_peer_becomes_one_line(capfd):
    """Whatever the runtime's C++ code writes, in whatever pieces, the run's output keeps only its
    own lines and the one-line report of the lost peer."""
    from flash_jax import launch
    status = launch.supervise([sys.executable, "-c", FAKE_WORKER], "1", "127.0.0.1:1", 60)
    out, err = capfd.readouterr()
    assert status == launch.PEER_LOST_EXIT
    assert out == "round 1 of 9\n"
    assert err.splitlines() == ["run.py: error: process 1 lost the other processes of the run (UNAVAILABLE: Failed to "
                                "send RPC to coordination service); run the same commands to continue from the last "
                                "checkpoint"]


def test_a_failing_worker_keeps_its_traceback_and_status(capfd):
    from flash_jax import launch
    worker = ("from flash_jax import launch; launch.attach_worker_output(); import os; os.write(2, b'W0 gloo\\n'); "
              "raise SystemExit('bad thing')")
    assert launch.supervise([sys.executable, "-c", worker], "0", "127.0.0.1:1", 60) == 1
    out, err = capfd.readouterr()
    assert out == "" and err == "bad thing\n"
