"""Portable C kernels built on first use: one mechanism for every C file of the project.

A kernel is built once per machine with the system's C compiler ($CC, else cc or gcc) into
$GPTOSS_CACHE/kernels/ (default ~/.cache/gptoss/kernels/), under a name hashing the source, the
compiler, its flags and the CPU: an edited source, or a home folder shared with another kind of
CPU (the builds use -march=native), gets its own build. Where it cannot be built or loaded (no
compiler, no OpenMP, an unwritable cache), `build_library` warns once, saying what the caller
falls back to, and returns None. GPTOSS_CPU_KERNEL=0 turns every kernel off, without a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

from gptoss.util.files import cache_dir, write_file_atomically

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def compiler() -> list[str] | None:
    """The C compiler command: $CC (split like a shell would), else cc or gcc; None if none."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def build_library(
    source: Path, flags: list[str], prepare: Callable[[ctypes.CDLL], None], fallback: str
) -> ctypes.CDLL | None:
    """The C file `source` built with `flags` (first, if this machine has no such build yet) and
    loaded; `prepare(lib)` declares its functions' signatures and checks its layout constants
    (raising if they disagree). None when kernels are turned off (GPTOSS_CPU_KERNEL=0) or it cannot
    be built here, after a warning naming the cause and `fallback`, what the caller does instead."""
    if os.environ.get("GPTOSS_CPU_KERNEL") == "0":
        return None
    try:
        command = compiler()
        if command is None:
            return _unavailable("no C compiler found; install gcc, or set CC", fallback)
        fingerprint = b"\0".join(s.encode() for s in [*command, *flags, _cpu_description()]) + source.read_bytes()
        path = cache_dir() / "kernels" / f"{source.stem}-{hashlib.sha256(fingerprint).hexdigest()[:16]}.so"
        try:
            return _load(source, path, command, flags, prepare)
        except OSError:  # a build that does not load (damaged, or made for another runtime): once more
            path.unlink(missing_ok=True)
            return _load(source, path, command, flags, prepare)
    except Exception as error:  # whatever the cause, the caller's PyTorch path still works: say why, use it
        return _unavailable(f"{type(error).__name__}: {error}", fallback)


def _load(source: Path, path: Path, command: list[str], flags: list[str], prepare) -> ctypes.CDLL:
    """Load the build at `path`, building it first (atomically: other processes may be loading it)
    when it is not there."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, lambda tmp: _compile(source, command, flags, tmp))
    lib = ctypes.CDLL(str(path))
    prepare(lib)
    return lib


def _compile(source: Path, command: list[str], flags: list[str], output: Path) -> None:
    result = subprocess.run([*command, *flags, str(source), "-o", str(output)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} could not build {source.name}: {result.stderr.strip()[-1000:]}")


def _cpu_description() -> str:
    """The CPU's model and instruction sets (from /proc/cpuinfo where there is one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _unavailable(reason: str, fallback: str) -> None:
    warnings.warn(
        f"gptoss: {fallback} ({reason}); set GPTOSS_CPU_KERNEL=0 to choose that without this warning",
        RuntimeWarning,
        stacklevel=4,
    )
    return None
