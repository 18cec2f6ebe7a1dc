"""--download against a loopback HTTP server that serves small generated files in each publisher's own
layout: fetched, verified, converted once, trained on; a dropped connection continued, a corrupted
file refused and removed, a stalled or absent server reported in one line. Nothing leaves this machine."""
import concurrent.futures
import dataclasses
import glob
import hashlib
import os
import re
import socket
import tomllib

import numpy as np
import pytest

from flash_jax import cli
from flash_jax.config import Config, ConfigError
from flash_jax.data import cache, download
from flash_jax.data.download import Remote
from flash_jax.data.sources import DataError, load_dataset, read_files
from flash_jax.settings import validate
from tests.publishers import GENERATED, TRAIN, Server


@pytest.fixture
def server():
    httpd = Server()
    yield httpd
    httpd.close()


@pytest.fixture
def publish(server, monkeypatch, tmp_path):
    """publish(name): serve generated files of `name` and pin their digests; returns the raw arrays
    the conversion must hold. The cache folder is tmp_path/cache (through FLASH_JAX_DATA)."""
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)

    def publish(name, base=None):
        files, arrays = GENERATED[name]()
        server.files.update(files)
        real = cache.SOURCES[name]
        pinned = tuple(Remote(f"{base or server.url}/{r.name}", len(files[r.name]),
                              f"sha256:{hashlib.sha256(files[r.name]).hexdigest()}") for r in real.files)
        monkeypatch.setitem(cache.SOURCES, name, dataclasses.replace(real, files=pinned))
        return arrays
    return publish


def _cli(capsys, *args):
    """run.py in this process (the pinned table is patched here); (exit status, stderr lines)."""
    status = cli.main(["--num_users", "4", "--frac", "0.5", "--fl_rounds", "2", "--quiet", *args])
    return status, capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------------------------------------- tests
def test_the_pinned_table_covers_the_papers_datasets():
    assert set(cache.SOURCES) == set(GENERATED)
    for source in cache.SOURCES.values():
        for remote in source.files:
            algorithm, digest = remote.digest.split(":")
            assert re.fullmatch({"sha256": "[0-9a-f]{64}", "md5": "[0-9a-f]{32}"}[algorithm], digest)
            assert remote.size > 1000 and remote.url.startswith(("https://", "http://"))


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_each_source_is_fetched_verified_and_converted_once(name, publish, server, tmp_path):
    expected = publish(name)
    arrays = cache.cached_arrays(name, None, True, read_files, quiet=True)
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)
    folder = tmp_path / "cache" / name
    fetched = [remote.name for remote in cache.SOURCES[name].files]
    assert sorted(p.name for p in folder.iterdir()) == sorted(fetched + [f"{name}.npz"])  # no scratch, no .part
    server.files.clear()  # later runs read the conversion and fetch nothing
    asked = len(server.requests)
    assert load_dataset(name).train_x.shape[0] == TRAIN and len(server.requests) == asked


@pytest.mark.slow  # about a minute each: the first round compiles FLASH's stage 1 and the rounds
@pytest.mark.parametrize("name", sorted(GENERATED))
def test_download_then_two_rounds_of_training(name, publish):
    import flash_jax

    publish(name)
    config = Config(dataset=name, model_type="mnistnet", download=True, num_users=4, frac=0.5, fl_rounds=2,
                    init_frac=0.5, init_epoch=1, local_bs=8, eval_every=1, quiet=True)
    history = flash_jax.run(config)
    assert [h["round"] for h in history][-1] == 2 and np.isfinite(history[-1]["loss"])


def test_the_command_line_fetches_and_trains(publish, capsys):
    publish("mnist")
    status, err = _cli(capsys, "--dataset", "mnist", "--download", "--experiment_type", "dense", "--local_bs", "8")
    assert status == 0, err


def test_a_dropped_connection_is_continued_where_it_stopped(publish, server):
    publish("cifar10")
    name = "cifar-10-python.tar.gz"
    size = len(server.files[name])
    server.drops[name] = 1
    cache.cached_arrays("cifar10", None, True, read_files, quiet=True)
    assert [asked for n, asked in server.requests if n == name] == [None, f"bytes={size // 2}-"]


def test_a_connection_that_keeps_dropping_is_given_up_in_one_line(publish, server, tmp_path, capsys):
    publish("mnist")
    name = "t10k-labels-idx1-ubyte.gz"
    server.drops[name] = 10**6  # every answer ends halfway: new data until one byte is left, then none
    status, err = _cli(capsys, "--dataset", "mnist", "--download")
    assert status == 2 and len(err) == 1 and f"dropped {download.RETRIES + 1} times in a row" in err[0], err
    assert not list((tmp_path / "cache" / "mnist").glob(f"{name}*"))


def test_a_part_left_by_a_stopped_process_is_continued(publish, server, tmp_path):
    publish("mnist")
    name = "train-images-idx3-ubyte.gz"
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    (folder / f"{name}.part").write_bytes(server.files[name][:100])
    cache.cached_arrays("mnist", None, True, read_files, quiet=True)
    assert [asked for n, asked in server.requests if n == name] == ["bytes=100-"]
    assert not list(folder.glob("*.part"))


def test_a_corrupted_file_is_refused_and_removed(publish, server, tmp_path, capsys):
    publish("mnist")
    name = "train-labels-idx1-ubyte.gz"
    data = server.files[name]
    server.files[name] = data[:-1] + bytes([data[-1] ^ 1])
    status, err = _cli(capsys, "--dataset", "mnist", "--download")
    assert status == 2 and len(err) == 1 and "checksum" in err[0] and name in err[0]
    folder = tmp_path / "cache" / "mnist"
    assert not (folder / name).exists() and not list(folder.glob("*.part")) and not list(folder.glob("*.npz"))


def test_a_stalled_server_times_out_in_one_line(publish, server, tmp_path, capsys, monkeypatch):
    publish("cifar100")
    monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
    server.stall.add("cifar-100-python.tar.gz")
    status, err = _cli(capsys, "--dataset", "cifar100", "--download")
    assert status == 2 and len(err) == 1 and "stalled" in err[0], err
    assert [p.name for p in (tmp_path / "cache" / "cifar100").iterdir()] == []


def test_offline_is_one_line_and_a_mirror_serves_instead(publish, server, capsys, monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    publish("fashion_mnist", base=closed)
    status, err = _cli(capsys, "--dataset", "fashion_mnist", "--download")
    assert status == 2 and len(err) == 1 and "cannot fetch" in err[0] and download.MIRROR_ENV in err[0]
    monkeypatch.setenv(download.MIRROR_ENV, server.url + "/")
    assert cache.cached_arrays("fashion_mnist", None, True, read_files, quiet=True) is not None


def test_processes_sharing_a_cache_fetch_each_file_once(publish, server):
    expected = publish("cifar10")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # .result() raises what a caller raised
        results = [future.result() for future in [pool.submit(cache.cached_arrays, "cifar10", None, True, read_files,
                                                              True) for _ in range(3)]]
    assert len(server.requests) == 1
    for arrays in results:  # every caller, the one that fetched and the two that waited, has the data
        for got, want in zip(arrays, expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_without_the_data_the_error_names_download_and_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"pass --download to fetch it into {tmp_path / 'tiny_imagenet'}")):
        load_dataset("tiny_imagenet")
    status, err = _cli(capsys, "--dataset", "cifar10")
    assert status == 2 and len(err) == 1 and "--download" in err[0]


def test_download_does_not_combine_with_path():
    with pytest.raises(ConfigError, match="--download"):
        validate(Config(dataset="mnist", download=True, path="/somewhere"))


def test_the_cache_folder_comes_from_the_flag_the_environment_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "flash_jax"
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_every_preset_of_a_downloadable_dataset_says_the_command_that_fetches_it():
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "..", "experiments", "presets", "*.toml")):
        with open(path, "rb") as f:
            if tomllib.load(f)["dataset"] not in cache.SOURCES:
                continue
        command = f"python run.py --config experiments/presets/{os.path.basename(path)} --download"
        assert command in open(path).read(), path
