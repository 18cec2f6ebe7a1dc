"""One published file fetched over HTTP: continued with a Range request where a connection dropped,
checked against the digest pinned for it, and renamed into place only then, so a file under its own
name in the cache is always whole and verified."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from flash_jax.data.formats import DataError

MIRROR_ENV = "FLASH_JAX_DATA_MIRROR"  # a base address that replaces each file's own folder on the web
TIMEOUT_S = 30.0  # a server silent for this long counts as stalled
RETRIES = 3  # dropped connections in a row without new data before giving up
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Remote:
    """A published file: its address, its size in bytes and its digest, "sha256:<hex>" (or
    "md5:<hex>" where that is the only digest its publisher gives)."""

    url: str
    size: int
    digest: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@contextlib.contextmanager
def locked(folder: Path):
    """Holds an exclusive lock on `folder`, so processes that share a cache (several runs, --distributed)
    fetch each file once: the others wait and find it there."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fetch(remote: Remote, folder: Path, quiet: bool = False) -> Path:
    """`folder/<name>`, downloaded first unless there. A failure (offline, a stalled server, a wrong
    digest) removes what arrived and raises DataError; a process stopped midway (Ctrl-C, killed) leaves
    `<name>.part`, which the next call continues."""
    target = folder / remote.name
    if target.exists():
        return target
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        remote = dataclasses.replace(remote, url=f"{mirror.rstrip('/')}/{remote.name}")
    part = target.with_name(target.name + ".part")
    bar = tqdm(total=remote.size, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name, disable=quiet,
               dynamic_ncols=True)
    try:
        _download(remote, part, bar)
        _verify(remote, part)
    except DataError:
        bar.leave = False  # the error's one line takes the bar's place
        part.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(part, target)
    return target


def _download(remote: Remote, part: Path, bar: tqdm) -> None:
    """Fill `part` up to the remote's size, asking for the rest again after each dropped connection,
    for as long as each try brings new bytes (or at most RETRIES times in a row without)."""
    most, fruitless = -1, 0
    while (have := part.stat().st_size if part.exists() else 0) < remote.size:
        fruitless = 0 if have > most else fruitless + 1
        most = max(most, have)
        if fruitless > RETRIES:
            raise DataError(f"{remote.url}: the connection dropped {fruitless} times in a row without new data, "
                            f"{have} of {remote.size} bytes arrived; try again later")
        try:
            _transfer(remote.url, part, have, bar)
        except (http.client.IncompleteRead, ConnectionError):
            continue  # dropped midway: the next pass asks for the bytes after those that arrived
        except urllib.error.HTTPError as err:
            raise DataError(f"{remote.url}: the server answered {err.code} {err.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ssl.SSLError, TimeoutError) as err:
            raise DataError(_unreachable(remote.url, getattr(err, "reason", err))) from None


def _transfer(url: str, part: Path, have: int, bar: tqdm) -> None:
    """Append the bytes after the first `have` (or everything, when the server ignores Range)."""
    request = urllib.request.Request(url, headers={"User-Agent": "flash_jax"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.status != 206:
            have = 0
        bar.reset(total=bar.total)
        bar.update(have)
        with open(part, "r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _unreachable(url: str, reason) -> str:
    if isinstance(reason, TimeoutError):
        return (f"{url}: the server sent nothing for {TIMEOUT_S:g} s (stalled); try again later, or set "
                f"{MIRROR_ENV} to a mirror")
    return f"{url}: cannot fetch it ({reason}); check the network, or set {MIRROR_ENV} to a mirror"


def _verify(remote: Remote, part: Path) -> None:
    algorithm, expected = remote.digest.split(":")
    with open(part, "rb") as f:
        actual = hashlib.file_digest(f, algorithm).hexdigest()
    size = part.stat().st_size
    if size != remote.size or actual != expected:
        raise DataError(f"{remote.url}: the download does not match its pinned checksum ({size} bytes, "
                        f"{algorithm} {actual}; expected {remote.size} bytes, {expected}); removed it, "
                        "run again to fetch it afresh")
