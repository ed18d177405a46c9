"""Corpora: text by name (`pystdlib`, `shakespeare`) or from files.

`load_corpus(name_or_path)` / `iter_corpus(...)` read a named corpus, a file, a folder (every
non-hidden file below it, recursively) or a glob of UTF-8 text. Several files are joined in sorted
order with a blank line (`FILE_SEPARATOR`) between them. Tiny Shakespeare is read from a local
copy (the shared data folder, the cache) or downloaded once, and checked by sha256 either way.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gptoss.data.tokenizers import shared_data_dir
from gptoss.util.checks import check_positive_int
from gptoss.util.files import cache_dir, write_file_atomically

CORPUS_NAMES = ("pystdlib", "shakespeare")
FILE_SEPARATOR = "\n\n"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_RELATIVE_PATH = "tinyshakespeare/input.txt"
DOWNLOAD_TIMEOUT_S = 30
READ_CHUNK_BYTES = 1 << 20
# Folders of the standard library that hold its tests or third-party code, not the library itself.
STDLIB_EXCLUDED_DIRS = {"tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the sha256 it must have."""



def load_corpus(name_or_path: str | Path, max_chars: int | None = None) -> str:
    """The text of a corpus (see the module doc), cut to its first `max_chars` characters if given.

    `pystdlib` is the Python standard library's own source (about 12 MB on Python 3.11): every
    `*.py` under `sysconfig.get_paths()["stdlib"]` except test folders and site-packages.
    """
    text = "".join(iter_corpus(name_or_path, max_chars))
    if not text:
        raise ValueError(f"corpus {str(name_or_path)!r} is empty: there is no text to train on")
    return text


def iter_corpus(name_or_path: str | Path, max_chars: int | None = None) -> Iterator[str]:
    """The text of `load_corpus(name_or_path, max_chars)` in pieces of at most about 1 MB."""
    check_positive_int("max_chars", max_chars, optional=True, counting="characters")  # None: all
    remaining = max_chars
    files = corpus_files(name_or_path)
    for index, path in enumerate(files):
        pieces = _iter_file_text(path)
        if index > 0:
            pieces = _chain_first(FILE_SEPARATOR, pieces)
        for piece in pieces:
            if remaining is not None:
                piece = piece[:remaining]
                remaining -= len(piece)
            if piece:
                yield piece
            if remaining == 0:
                return


def corpus_files(name_or_path: str | Path) -> list[Path]:
    """The files a corpus name, file, folder or glob stands for, in the order they are joined."""
    spec = str(name_or_path)
    if spec == "pystdlib":
        return pystdlib_files()
    if spec == "shakespeare":
        return [shakespeare_path()]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path))),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise ValueError(f"corpus folder {path} holds no files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise FileNotFoundError(f"no file matches the corpus pattern {spec!r}")
        return files
    raise FileNotFoundError(
        f"corpus {spec!r} is not a file, folder or glob that exists, nor a corpus name "
        f"({', '.join(CORPUS_NAMES)})"
    )


def pystdlib_files() -> list[Path]:
    """The standard library's `*.py` files without its tests, sorted by path relative to it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        folders = path.relative_to(root).parts[:-1]
        # "test*" catches test, tests and the test packages of ctypes, tkinter, unittest, ...
        if not any(f.startswith("test") or f in STDLIB_EXCLUDED_DIRS for f in folders):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def shakespeare_path(local_copy: str | Path | None = None) -> Path:
    """Tiny Shakespeare's `input.txt`, checked by sha256: `local_copy` if given, else the cached copy,
    else the shared data folder's copy, else downloaded into the cache."""
    if local_copy is not None:
        return _verified(Path(local_copy), SHAKESPEARE_SHA256)
    cached = cache_dir() / SHAKESPEARE_RELATIVE_PATH
    if cached.exists():
        return _verified(cached, SHAKESPEARE_SHA256)
    shared = shared_data_dir() / SHAKESPEARE_RELATIVE_PATH
    if shared.exists():
        return _verified(shared, SHAKESPEARE_SHA256)
    how_to_supply = (
        f"put a copy of input.txt at {cached}, or set GPTOSS_SHARED_DATA to a folder holding "
        f"{SHAKESPEARE_RELATIVE_PATH}, or pass the file's path as the corpus"
    )
    return download(SHAKESPEARE_URL, cached, SHAKESPEARE_SHA256, how_to_supply)


def download(url: str, destination: Path, sha256: str, how_to_supply: str) -> Path:
    """Fetch `url` into `destination` atomically, after checking its sha256; returns `destination`."""
    try:
        data = fetch_url(url)
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"could not download {url} ({error}). No network? {how_to_supply}.") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumError(
            f"the file downloaded from {url} has sha256 {actual}, expected {sha256}; it was not "
            f"saved. Try again later, or {how_to_supply}"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    return write_file_atomically(destination, lambda tmp: tmp.write_bytes(data))


def fetch_url(url: str) -> bytes:
    """The body of `url` (tests replace this function, so they never touch the network)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def _iter_file_text(path: Path) -> Iterator[str]:
    """The UTF-8 text of `path` in pieces; invalid bytes raise an error naming the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as file:
        while True:
            data = file.read(READ_CHUNK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of a character split across two reads
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path} is not UTF-8 text: invalid byte {error.object[error.start:error.start + 1]!r} "
                    f"at byte offset {offset - pending + error.start}; convert it to UTF-8 "
                    f"(e.g. iconv -f latin1 -t utf-8) or leave it out of the corpus"
                ) from None
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def _chain_first(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(READ_CHUNK_BYTES), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ChecksumError(
            f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: it is damaged or a "
            "different file; replace it with the right one (or delete a downloaded copy to fetch it again)"
        )
    return path
