"""Datasets as in-memory numpy arrays, from sources that work without internet or TensorFlow.

Sources, each usable without internet once its files are here:
- digits: scikit-learn's bundled 8x8 digits, blown up to 28x28x1 so MNIST-sized models apply.
- mnist / fashion_mnist / emnist: IDX files (raw or .gz) from `path`; fashion_mnist also from Debian's
  `dataset-fashion-mnist` package; otherwise TFDS.
- cifar10 / cifar100: the python-pickle folders from `path`; otherwise TFDS.
- tiny_imagenet: the tiny-imagenet-200 folder from `path` (JPEGs, 64x64x3, 200 classes; not in TFDS).
- the cache folder (--data_dir): the .npz that --download made there (data/cache.py), tried first
  when no `path` is given.
- TFDS: a copy already prepared in the array_record format, read through its random-access data source
  (no TensorFlow needed to read; preparing image datasets needs TensorFlow once).

`emnist` is FEMNIST-style: TFDS's "emnist/byclass" (62 classes: digits, upper- and lower-case letters),
transposed to the upright orientation (NIST stores the images transposed). It is the whole pool, not
LEAF's writer split: clients come from our own partition.

Every image array is float32 NHWC, standardised per channel with the train split's statistics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from flash_jax.data.cache import cached_arrays, download_hint
from flash_jax.data.formats import (  # noqa: F401  (read_idx and DataError: the package's data API)
    IDX_STEMS, Arrays, DataError, check_labels, find_idx, load_tfds, read_cifar_pickles, read_idx, standardise)

DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "emnist", "tiny_imagenet")

NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "emnist": 62,
               "tiny_imagenet": 200}
TFDS_NAMES = {
    "fashion_mnist": "fashion_mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "emnist": "emnist/byclass",
}
DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
_DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}

# NIST/TFDS store EMNIST transposed; flip it upright so augmentation and plots see real letters.
_TRANSPOSED = {"emnist"}

CIFAR_FOLDERS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}

_DIGITS_SEED = 0  # fixed so the digits train/test split never depends on the experiment seed



@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays make field-wise == / hash meaningless
class Dataset:
    name: str
    train_x: np.ndarray  # float32 NHWC, standardised
    train_y: np.ndarray  # int32
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_dataset(name: str, path: str | None = None, data_dir: str | None = None, download: bool = False,
                 quiet: bool = False) -> Dataset:
    """Load `name` into memory. `path`: a folder of IDX files / CIFAR pickles; `data_dir`: the cache
    folder `download` fills (data/cache.py) and TFDS's data dir; `quiet`: no download progress bar."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    cached = None if path else cached_arrays(name, data_dir, download, read_files, quiet)
    train_x, train_y, test_x, test_y = cached or _LOADERS[name](name, path, data_dir)
    if name in _TRANSPOSED:
        train_x, test_x = train_x.transpose(0, 2, 1, 3), test_x.transpose(0, 2, 1, 3)
    for labels, part in ((train_y, "training"), (test_y, "test")):
        check_labels(labels, NUM_CLASSES[name], f"{name}'s {part} set")
    train_x, test_x = standardise(train_x, test_x)
    return Dataset(name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), NUM_CLASSES[name])


def read_files(name: str, path: str) -> Arrays:
    """The raw arrays of `name` (images as published) from its publisher's files in `path`."""
    return _LOADERS[name](name, path, None)


# ---------------------------------------------------------------------------------------------- loaders
def _load_digits(name: str, path: str | None, data_dir: str | None) -> Arrays:
    """8x8 (0..16) -> 3x3 nearest upsampling -> 24x24 -> zero pad 2 -> 28x28x1; stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((1, 3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=_DIGITS_SEED
    )
    return train_x, train_y, test_x, test_y


def _load_idx_or_tfds(name: str, path: str | None, data_dir: str | None) -> Arrays:
    """IDX files from `path` (or the Debian package's folder when no path is given), else TFDS."""
    folder = path or DEBIAN_DIRS.get(name)
    if folder is not None:
        files = [find_idx(folder, stem) for stem in IDX_STEMS[name]]
        if all(files):
            train_x, train_y, test_x, test_y = (read_idx(f) for f in files)
            for images, labels, image_file, label_file in ((train_x, train_y, *files[:2]), (test_x, test_y, *files[2:])):
                if len(images) != len(labels):
                    raise DataError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} "
                                    "labels; the files belong to different sets")
                check_labels(labels, NUM_CLASSES[name], label_file)
            return train_x[..., None], train_y, test_x[..., None], test_y
        absent = [stem + "[.gz]" for stem, file in zip(IDX_STEMS[name], files) if file is None]
        missing = f"no {'IDX files' if len(absent) == len(files) else ', '.join(absent)} in {folder}"
    else:
        missing = "no --path given"
    hints = [f"pass --path DIR holding {', '.join(s + '[.gz]' for s in IDX_STEMS[name])}"]
    if path is None:
        hints.insert(0, download_hint(name, data_dir))
    if name in _DEBIAN_PACKAGES:
        pkg = _DEBIAN_PACKAGES[name]
        hints.insert(0, f"install Debian's package {pkg} (apt-get install -y {pkg})")
    return load_tfds(name, TFDS_NAMES[name], data_dir, missing, hints)


def _load_cifar(name: str, path: str | None, data_dir: str | None) -> Arrays:
    """CIFAR python pickles when `path` is given (the folder itself or its parent), else TFDS."""
    folder_name, train_files, test_files, label_key = CIFAR_FOLDERS[name]
    if path is None:
        hint = f"pass --path DIR holding {folder_name}/ (python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
        return load_tfds(name, TFDS_NAMES[name], data_dir, "no --path given", [download_hint(name, data_dir), hint])
    folder = Path(path)
    if not (folder / test_files[0]).exists():
        folder = folder / folder_name
    if not all((folder / f).exists() for f in train_files + test_files):
        raise DataError(
            f"{name}: no {folder_name} pickles ({', '.join(train_files + test_files)}) in {path} or "
            f"{Path(path) / folder_name}; download and unpack the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and pass --path to it"
        )
    train_x, train_y = read_cifar_pickles([folder / f for f in train_files], label_key)
    test_x, test_y = read_cifar_pickles([folder / f for f in test_files], label_key)
    return train_x, train_y, test_x, test_y


def _load_tiny_imagenet(name: str, path: str | None, data_dir: str | None) -> Arrays:
    """The tiny-imagenet-200 folder (the folder itself or its parent): wnids.txt, train/<wnid>/images/,
    val/images/ with val/val_annotations.txt; the labelled val split serves as the test set."""
    from PIL import Image

    folder = Path(path) if path else None
    if folder is not None and not (folder / "wnids.txt").exists():
        folder = folder / "tiny-imagenet-200"
    if folder is None or not (folder / "wnids.txt").exists() or not (folder / "val" / "val_annotations.txt").exists():
        fix = "download and unpack tiny-imagenet-200.zip and pass --path to it"
        raise DataError(f"{name}: no tiny-imagenet-200 folder (wnids.txt, train/, val/) in {path or 'no --path given'}; "
                        + (fix if path else f"{download_hint(name, data_dir)}, or {fix}"))
    wnids = folder.joinpath("wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}

    def read(files: list[Path]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(f).convert("RGB"), np.uint8) for f in files])

    train_files = [(f, label[w]) for w in wnids for f in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    annotations = [line.split("\t")[:2] for line in folder.joinpath("val", "val_annotations.txt").read_text().splitlines()]
    test_files = [(folder / "val" / "images" / f, label[w]) for f, w in annotations]
    return (read([f for f, _ in train_files]), np.array([y for _, y in train_files]),
            read([f for f, _ in test_files]), np.array([y for _, y in test_files]))


_LOADERS = {
    "digits": _load_digits,
    "fashion_mnist": _load_idx_or_tfds,
    "mnist": _load_idx_or_tfds,
    "emnist": _load_idx_or_tfds,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tiny_imagenet": _load_tiny_imagenet,
}
assert set(_LOADERS) == set(DATASETS)
