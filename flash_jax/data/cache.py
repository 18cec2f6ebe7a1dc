"""The paper's datasets from their publishers' own addresses: fetched into a cache folder on request
(--download), each file checked against the digest pinned here, and converted once into a .npz of the
raw arrays, which later runs read in seconds instead of parsing archives.

The digests are those TFDS pins for the same files (MNIST, Fashion-MNIST, EMNIST), Keras's for the
CIFAR python archives, and the MD5 published with Tiny-ImageNet (it has no published SHA-256).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tarfile
import tempfile
import zipfile
import zlib
from typing import Callable
from pathlib import Path

import numpy as np

from flash_jax.data.download import Remote, fetch, locked
from flash_jax.data.formats import IDX_STEMS, Arrays, DataError

DIR_ENV = "FLASH_JAX_DATA"  # the cache folder when --data_dir is not given
_KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset's published files; for an archive, the members (path prefixes) the loader reads and
    the folder among them it reads from. Without members the files are read as fetched."""

    files: tuple[Remote, ...]
    members: tuple[str, ...] = ()
    folder: str = "."


def _idx_files(base: str, *pins: tuple[int, str]) -> tuple[Remote, ...]:
    """The four gzipped IDX files of an MNIST-like set, pinned (size, sha256) in IDX_STEMS order."""
    return tuple(Remote(f"{base}{stem}.gz", size, f"sha256:{digest}")
                 for stem, (size, digest) in zip(IDX_STEMS["mnist"], pins))


_TINY = "tiny-imagenet-200/"
SOURCES: dict[str, Source] = {
    "mnist": Source(_idx_files(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"))),
    "fashion_mnist": Source(_idx_files(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"))),
    "emnist": Source((Remote("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip", 561753746,
                             "sha256:fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"),),
                     tuple(f"gzip/{stem}.gz" for stem in IDX_STEMS["emnist"]), "gzip"),
    "cifar10": Source((Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170498071,
                              "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
                      ("cifar-10-batches-py/",)),
    "cifar100": Source((Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", 169001437,
                               "sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
                       ("cifar-100-python/",)),
    "tiny_imagenet": Source((Remote("https://cs231n.stanford.edu/tiny-imagenet-200.zip", 248100043,
                                    "md5:90528d7ca1a48142e341f4ef8d21d0de"),),
                            (f"{_TINY}wnids.txt", f"{_TINY}train/", f"{_TINY}val/")),
}


def cache_dir(data_dir: str | None = None) -> Path:
    """--data_dir, else $FLASH_JAX_DATA, else flash_jax in the user's cache folder ($XDG_CACHE_HOME
    or ~/.cache)."""
    chosen = data_dir or os.environ.get(DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "flash_jax"


def download_hint(name: str, data_dir: str | None) -> str:
    return f"pass --download to fetch it into {cache_dir(data_dir) / name}"


def cached_arrays(name: str, data_dir: str | None, download: bool, read: Callable[[str, str], Arrays],
                  quiet: bool = False) -> Arrays | None:
    """The raw arrays of `name` converted earlier into the cache; with `download`, fetched and
    converted first where missing. None when the cache lacks them and `download` is off, or when the
    dataset is not one that downloads (the other sources then get their turn)."""
    if name not in SOURCES:
        return None
    folder = cache_dir(data_dir) / name
    converted = folder / f"{name}.npz"
    if download and not converted.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with locked(folder):
                if not converted.exists():  # another process may have made it while this one waited
                    files = [fetch(remote, folder, quiet) for remote in SOURCES[name].files]
                    if not quiet:
                        print(f"{name}: converting the download into {converted} (once)", file=sys.stderr)
                    _convert(name, files, converted, read)
        except OSError as err:
            raise DataError(f"{folder}: cannot write there ({err.strerror or err}); pass --data_dir to a "
                            "writable folder") from None
    if not converted.exists():
        return None
    with np.load(converted) as arrays:
        return tuple(arrays[key] for key in _KEYS)


def _convert(name: str, files: list[Path], converted: Path, read: Callable[[str, str], Arrays]) -> None:
    """Read the fetched files with `read` (the loader that reads them from --path), once, into `converted`; the
    archive's members and the unfinished .npz live in a scratch folder that goes away in any case."""
    source = SOURCES[name]
    with tempfile.TemporaryDirectory(dir=converted.parent, prefix=".convert-") as scratch:
        folder = files[0].parent
        if source.members:
            _unpack(files[0], source.members, Path(scratch))
            folder = Path(scratch) / source.folder
        train_x, train_y, test_x, test_y = read(name, str(folder))
        unfinished = Path(scratch) / converted.name
        with open(unfinished, "wb") as f:
            np.savez(f, train_x=train_x, train_y=train_y.astype(np.int32), test_x=test_x,
                     test_y=test_y.astype(np.int32))
        os.replace(unfinished, converted)


def _unpack(archive: Path, members: tuple[str, ...], into: Path) -> None:
    """Only the members the loader reads; zipfile and tar's "data" filter keep every path inside `into`."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(into, [m for m in z.namelist() if m.startswith(members)])
        else:
            with tarfile.open(archive) as t:
                t.extractall(into, [m for m in t.getmembers() if m.name.startswith(members)], filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: not a readable archive ({err}); delete it and run with --download "
                        "again") from None
