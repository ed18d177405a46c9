"""Files and folders written atomically: readers see the old version or the new one, never half.

Everything is written under a temporary name beside its destination (same filesystem), flushed to
disk, then renamed into place; a crash or Ctrl-C midway leaves the old file or folder as it was.
A folder cannot replace a folder in a single rename, so the old one is moved aside first; an
exception between the two renames puts it back, and a process killed outright (SIGKILL, power loss)
exactly there leaves it in `.NAME.old-*/NAME` beside the destination (and the new one, complete
but unpublished, in `.NAME.tmp-*`). Nothing is lost: loading reads the old folder from there
(`readable_directory`), and the next write of the folder moves it back, then replaces it as usual.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """Where downloads and built kernels are kept: `$GPTOSS_CACHE`, else `~/.cache/gptoss`."""
    return Path(os.environ.get("GPTOSS_CACHE") or Path.home() / ".cache" / "gptoss")


def write_file_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) to fill a temporary file beside `path` (same suffix, for writers that go by
    it), then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the bytes on disk before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def readable_directory(directory: str | Path) -> Path:
    """`directory`, or, when a replacement of it was killed between its two renames, the old folder
    that it left aside (see the module doc). Changes nothing on disk: a writer may be mid-way."""
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir():
        return directory
    name = glob.escape(directory.name)
    aside = list(directory.parent.glob(f".{name}.old-*/{name}"))
    return max(aside, key=lambda path: path.parent.stat().st_mtime) if aside else directory  # the latest


def _finish_interrupted_replacement(directory: Path) -> None:
    """Move back the old folder a killed replacement left aside, and delete that replacement's
    unpublished new folder: the state before it, for the write that follows. Nothing to do (and
    nothing deleted) unless there was such a replacement."""
    old = readable_directory(directory)
    if old == directory:
        return
    os.rename(old, directory)
    name = glob.escape(directory.name)
    for leftover in [*directory.parent.glob(f".{name}.old-*"), *directory.parent.glob(f".{name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def write_directory_atomically(directory: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp_dir) to fill a temporary directory, then move it to `directory`."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _finish_interrupted_replacement(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if directory.exists():
            # a folder cannot replace a folder in one rename: move the old one aside first, and put
            # it back if anything fails before the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, old / directory.name)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old / directory.name, directory)
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
