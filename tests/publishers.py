"""Small files generated in each publisher's own layout, and a loopback HTTP server that serves them
(tests/test_download.py)."""
import gzip
import io
import pickle
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from flash_jax.data.sources import IDX_STEMS

RNG = np.random.default_rng(0)
TRAIN, TEST = 40, 12


# ---------------------------------------------------------------------------------------------- server
class Server(ThreadingHTTPServer):
    """In-memory files on 127.0.0.1 with Range support; `drops[name]` connections for a file end
    halfway through, a file in `stall` gets no answer until the server closes."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.requests, self.drops, self.stall = {}, [], {}, set()
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
        if self.server.drops.get(name):
            self.server.drops[name] -= 1
            body = body[:len(body) // 2]  # then the connection closes, short of Content-Length
        self.wfile.write(body)

    def log_message(self, *args):
        pass


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
    batches = [("train", TRAIN), ("test", TEST)]
    return _cifar("cifar-100-python.tar.gz", "cifar-100-python", batches, b"fine_labels", 100)


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
