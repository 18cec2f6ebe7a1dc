"""A workdir that fails under the run: a full disk, checkpoints that are all unreadable, a file where
the checkpoints folder should be, another run using it. Each ends in one line, and the same command
then continues."""
import os
import subprocess
import sys

import pytest

from tests.runs import REPO, SMALL, metric_lines, refused, start, wait_for

COMMAND = [sys.executable, "run.py", "--experiment_type", "pdst", "--num_users", "6", "--frac", "0.5", "--eval_every",
         "1", "--quiet", "--host_devices", "1"]


def run_cli(*args):
    """run.py as a process of its own: (exit status, stderr lines)."""
    result = subprocess.run([*COMMAND, *args], cwd=REPO, capture_output=True, text=True)
    return result.returncode, result.stderr.strip().splitlines()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only: skipped elsewhere), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_continues_bit_exact(tmp_path, small_disk):
    flags = ["--fl_rounds", "6", "--checkpoint_every", "1"]
    assert run_cli(*flags, "--workdir", str(tmp_path / "whole"))[0] == 0
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 2**20 - 400 * 2**10))  # about 400 KiB left: two checkpoints fit, not six
    status, err = run_cli(*flags, "--workdir", str(small_disk / "w"))
    assert status == 5 and len(err) == 1, err
    assert err[0].startswith("run.py: error: the disk is full: writing the checkpoint of round ")
    assert "the last good checkpoint is of round" in err[0] and "free space and run the same command" in err[0]
    filler.unlink()
    status, err = run_cli(*flags, "--workdir", str(small_disk / "w"))
    assert status == 0, err
    resumed, whole = metric_lines(str(small_disk / "w")), metric_lines(str(tmp_path / "whole"))
    assert resumed == whole


@pytest.mark.slow
def test_when_no_checkpoint_is_readable_the_run_starts_over(tmp_path):
    workdir = tmp_path / "w"
    flags = ["--fl_rounds", "3", "--workdir", str(workdir)]  # checkpoints of rounds 0 and 3
    assert run_cli(*flags)[0] == 0
    expected = metric_lines(str(workdir))
    for root, _, files in os.walk(workdir / "checkpoints"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    status, err = run_cli(*flags)
    assert status == 0, err
    assert any("no checkpoint in" in line and "is readable: moved them to" in line for line in err), err
    assert metric_lines(str(workdir)) == expected
    assert len(list(tmp_path.glob("w/checkpoints.unreadable-*"))) == 1
    status, err = run_cli(*flags)  # and the workdir is not stuck: the next run resumes the new checkpoints
    assert status == 0 and any("from its checkpoint of round 3" in line for line in err), err


def test_a_file_where_the_checkpoints_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "checkpoints").write_text("not a folder")
    status, err = run_cli("--fl_rounds", "2", "--workdir", str(tmp_path / "w"))
    assert status == 2 and len(err) == 1 and "checkpoints is a file, not the checkpoints folder" in err[0], err


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "w").write_text("a file")
    status, err = run_cli("--fl_rounds", "1", "--workdir", str(tmp_path / "w"))
    assert status == 2 and err == [f"run.py: error: --workdir {tmp_path / 'w'} is a file, not a folder; name another "
                                   "workdir"], err


def test_a_second_run_on_a_workdir_in_use_is_refused(finished, tmp_path, capsys):
    workdir = tmp_path / "w"
    first = start(workdir)
    wait_for(lambda: os.path.isdir(workdir / "checkpoints"), first)
    message = refused(SMALL + ["--workdir", str(workdir)], capsys, "is in use by pid")
    assert str(first.pid) in message
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert metric_lines(workdir) == metric_lines(finished.workdir)
