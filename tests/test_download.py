"""--download against a loopback HTTP server that serves small generated files in each publisher's own
layout: fetched, verified, converted once, trained on; a dropped connection continued, a corrupted
file refused and removed, a stalled or absent server reported in one line. Nothing leaves this machine."""
import dataclasses
import gzip
import hashlib
import io
import pickle
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from flash_jax import cli
from flash_jax.config import Config, ConfigError
from flash_jax.data import cache, download
from flash_jax.data.download import Remote
from flash_jax.data.sources import IDX_STEMS, DataError, load_dataset

RNG = np.random.default_rng(0)
TRAIN, TEST = 40, 12


# ---------------------------------------------------------------------------------------------- server
class Server(ThreadingHTTPServer):
    """In-memory files on 127.0.0.1 with Range support; a file named in `drop_once` loses its first
    connection halfway, one in `stall` gets no answer until the server closes."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.requests, self.drop_once, self.stall = {}, [], set(), set()
        self.released = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.released.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        name, asked = self.path.lstrip("/"), self.headers.get("Range")
        self.server.requests.append((name, asked))
        if name in self.server.stall:
            self.server.released.wait(60)
            return
        if name not in self.server.files:
            self.send_error(404)
            return
        data = self.server.files[name]
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.server.drop_once:
            self.server.drop_once.discard(name)
            body = body[:len(body) // 2]  # then the connection closes, short of Content-Length
        self.wfile.write(body)

    def log_message(self, *args):
        pass


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


# ---------------------------------------------------------------------------------------------- generated files
def _labels(num_classes):
    return RNG.integers(0, num_classes, TRAIN), RNG.integers(0, num_classes, TEST)


def _idx_gz(array):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _idx_set(stems, num_classes):
    train_y, test_y = _labels(num_classes)
    arrays = (RNG.integers(0, 256, (TRAIN, 28, 28), np.uint8), train_y, RNG.integers(0, 256, (TEST, 28, 28), np.uint8),
              test_y)
    files = {f"{stem}.gz": _idx_gz(a) for stem, a in zip(stems, arrays)}
    return files, (arrays[0][..., None], train_y, arrays[2][..., None], test_y)


def _mnist():
    return _idx_set(IDX_STEMS["mnist"], 10)


def _emnist():
    """gzip.zip: every EMNIST split's gzipped IDX files under gzip/ (here byclass and a decoy digits file)."""
    files, arrays = _idx_set(IDX_STEMS["emnist"], 62)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in {**files, "emnist-digits-train-images-idx3-ubyte.gz": _idx_gz(np.zeros((1, 2, 2)))}.items():
            z.writestr(f"gzip/{name}", data)
    return {"gzip.zip": buffer.getvalue()}, arrays


def _tar_gz(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cifar(archive, folder, batches, label_key, num_classes):
    """The python version: pickled dicts of CHW rows (b"data") and labels, in one folder of a .tar.gz."""
    train_y, test_y = _labels(num_classes)
    rows = RNG.integers(0, 256, (TRAIN + TEST, 3 * 32 * 32), np.uint8)
    members, start = {f"{folder}/meta": pickle.dumps({b"label_names": []})}, 0
    for name, count in batches:
        labels = np.concatenate([train_y, test_y])[start:start + count]
        members[f"{folder}/{name}"] = pickle.dumps({b"data": rows[start:start + count], label_key: labels.tolist(),
                                                   b"coarse_labels": [0] * count})
        start += count
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return {archive: _tar_gz(members)}, (images[:TRAIN], train_y, images[TRAIN:], test_y)


def _cifar10():
    batches = [(f"data_batch_{i}", TRAIN // 5) for i in range(1, 6)] + [("test_batch", TEST)]
    return _cifar("cifar-10-python.tar.gz", "cifar-10-batches-py", batches, b"labels", 10)


def _cifar100():
    return _cifar("cifar-100-python.tar.gz", "cifar-100-python", [("train", TRAIN), ("test", TEST)], b"fine_labels", 100)


def _jpeg(mode):
    buffer = io.BytesIO()
    shape = (64, 64, 3) if mode == "RGB" else (64, 64)
    Image.fromarray(RNG.integers(0, 256, shape, np.uint8), mode).save(buffer, "JPEG")
    return buffer.getvalue(), np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _tiny_imagenet():
    """tiny-imagenet-200.zip: wnids.txt, train/<wnid>/images/*.JPEG, val/images with val_annotations.txt
    and an unlabelled test/ (some images greyscale, as in the real set)."""
    wnids = ["n01443537", "n01629819", "n01641577", "n01644900"]
    root, members, train_x, train_y, test_x, annotations = "tiny-imagenet-200", {}, [], [], [], []
    for label, wnid in enumerate(wnids):
        members[f"{root}/train/{wnid}/{wnid}_boxes.txt"] = b""
        for i in range(TRAIN // len(wnids)):
            data, image = _jpeg("L" if i == 0 else "RGB")
            members[f"{root}/train/{wnid}/images/{wnid}_{i}.JPEG"] = data
            train_x.append(image)
            train_y.append(label)
    test_y = RNG.integers(0, len(wnids), TEST)
    for i, label in enumerate(test_y):
        data, image = _jpeg("RGB")
        members[f"{root}/val/images/val_{i}.JPEG"] = data
        test_x.append(image)
        annotations.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    members[f"{root}/val/val_annotations.txt"] = "\n".join(annotations).encode()
    members[f"{root}/wnids.txt"] = "\n".join(wnids).encode()
    members[f"{root}/test/images/test_0.JPEG"] = _jpeg("RGB")[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return {"tiny-imagenet-200.zip": buffer.getvalue()}, (np.stack(train_x), np.array(train_y), np.stack(test_x),
                                                          test_y)


GENERATED = {"mnist": _mnist, "fashion_mnist": _mnist, "emnist": _emnist, "cifar10": _cifar10,
             "cifar100": _cifar100, "tiny_imagenet": _tiny_imagenet}


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
    arrays = cache.cached_arrays(name, None, download=True, quiet=True)
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
    server.drop_once.add(name)
    cache.cached_arrays("cifar10", None, download=True, quiet=True)
    assert [asked for n, asked in server.requests if n == name] == [None, f"bytes={size // 2}-"]


def test_a_part_left_by_a_stopped_process_is_continued(publish, server, tmp_path):
    publish("mnist")
    name = "train-images-idx3-ubyte.gz"
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    (folder / f"{name}.part").write_bytes(server.files[name][:100])
    cache.cached_arrays("mnist", None, download=True, quiet=True)
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
    assert status == 2 and len(err) == 1 and "cannot connect" in err[0] and download.MIRROR_ENV in err[0]
    monkeypatch.setenv(download.MIRROR_ENV, server.url + "/")
    assert cache.cached_arrays("fashion_mnist", None, download=True, quiet=True) is not None


def test_processes_sharing_a_cache_fetch_each_file_once(publish, server):
    publish("cifar10")
    threads = [threading.Thread(target=cache.cached_arrays, args=("cifar10", None, True, True)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.requests) == 1


def test_without_the_data_the_error_names_download_and_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"pass --download to fetch it into {tmp_path / 'tiny_imagenet'}")):
        load_dataset("tiny_imagenet")
    status, err = _cli(capsys, "--dataset", "cifar10")
    assert status == 2 and len(err) == 1 and "--download" in err[0]


def test_download_does_not_combine_with_path():
    with pytest.raises(ConfigError, match="--download"):
        Config(dataset="mnist", download=True, path="/somewhere").validate()


def test_the_cache_folder_comes_from_the_flag_the_environment_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "flash_jax"
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
