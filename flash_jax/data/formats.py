"""The file formats datasets come in: IDX (MNIST's), CIFAR's python pickles, TFDS array_record copies;
label checks and the per-channel standardisation every image array gets."""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train_x, train_y, test_x, test_y (raw)
_TFDS_CHUNK = 10_000
# IDX file stems (train images, train labels, test images, test labels); each may also end in .gz.
_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_STEMS = {
    "mnist": _MNIST_STEMS,
    "fashion_mnist": _MNIST_STEMS,
    "emnist": tuple(f"emnist-byclass-{s}" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                     "test-images-idx3-ubyte", "test-labels-idx1-ubyte")),
}


class DataError(Exception):
    """A dataset is not available offline; the message (one line) says what is missing and how to get it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# ---------------------------------------------------------------------------------------------- formats
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(file: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (LeCun's MNIST format, optionally gzipped): magic 00 00 <dtype> <ndim>, then
    ndim big-endian uint32 dims, then the big-endian data."""
    file = str(file)
    try:
        with (gzip.open(file, "rb") if file.endswith(".gz") else open(file, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{file}: unreadable ({type(err).__name__}: {err}); the file is damaged or cut short") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{file}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != dtype.itemsize * int(np.prod(dims)):
        raise DataError(f"{file}: IDX header says {dims} but the file holds {len(raw) - offset} data bytes")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """A label outside [0, num_classes) would index past the logits and look like divergence later."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(f"{source}: label {int(bad[0])} is outside 0..{num_classes - 1} ({bad.size} such labels); "
                        "the file is damaged or belongs to another dataset")


def find_idx(folder: str, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read_cifar_pickles(files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batches = []
    for file in files:
        with open(file, "rb") as f:
            batches.append(pickle.load(f, encoding="bytes"))
    data = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # rows are CHW planes


def load_tfds(name: str, tfds_name: str, data_dir: str | None, missing: str, hints: list[str]) -> Arrays:
    """Read an array_record copy prepared earlier; turn every way it can be absent into one DataError."""
    shown_dir = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    hints = hints + [
        f"or prepare it once with `tfds build {tfds_name} --file_format=array_record` in an environment with "
        "TensorFlow and pass --data_dir DIR"
    ]
    builder = None
    from absl import logging as absl_logging  # TFDS warns through absl about folders it lacks

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # what is missing goes into the one DataError line
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(tfds_name, data_dir=data_dir)
        train, test = builder.as_data_source(split=["train", "test"])
    except Exception as error:  # TFDS says "not prepared" with KeyError, NotImplementedError, ...
        if builder is not None and not builder.is_prepared():
            cause = "not prepared"
        else:  # e.g. prepared in the default tfrecord format, which has no random access
            cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{name}: {missing}, and no TFDS array_record copy of {tfds_name} in {shown_dir} ({cause}); "
            + "; ".join(hints)
        ) from error
    finally:
        absl_logging.set_verbosity(verbosity)
    return (*_read_source(train), *_read_source(test))


def _read_source(source) -> tuple[np.ndarray, np.ndarray]:
    """Bulk-read a TFDS data source: batched __getitems__ is ~2x faster than one example at a time."""
    n = len(source)
    images = labels = None
    for start in range(0, n, _TFDS_CHUNK):
        keys = range(start, min(start + _TFDS_CHUNK, n))
        try:
            batch = source.__getitems__(keys)
        except TypeError:  # tfds.testing.mock_data (4.9.10) mocks __getitems__ without binding self
            batch = [source[i] for i in keys]
        if images is None:
            first = np.asarray(batch[0]["image"])
            images = np.empty((n, *first.shape), first.dtype)
            labels = np.empty(n, np.int64)
        images[keys.start : keys.stop] = np.stack([e["image"] for e in batch])
        labels[keys.start : keys.stop] = [e["label"] for e in batch]
    if images is None:
        raise DataError(f"TFDS data source {source} is empty")
    return images, labels


# ---------------------------------------------------------------------------------------------- normalise
def standardise(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (x - mean) / std with train statistics; float64 sums in chunks keep memory flat."""
    s1 = np.zeros(train_x.shape[-1])
    s2 = np.zeros(train_x.shape[-1])
    for start in range(0, len(train_x), 8192):
        chunk = train_x[start : start + 8192].astype(np.float64)
        s1 += chunk.sum(axis=(0, 1, 2))
        s2 += np.square(chunk).sum(axis=(0, 1, 2))
    count = train_x.size // train_x.shape[-1]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)
    out = []
    for x in (train_x, test_x):
        x = x.astype(np.float32, order="C")  # a fresh C-contiguous copy: inputs are never modified
        x -= mean.astype(np.float32)
        x /= std.astype(np.float32)
        out.append(x)
    return out[0], out[1]
