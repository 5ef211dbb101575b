"""How the harness writes files under `out_dir`: atomically, and with one permission policy.

Atomic: a file is written to a private temporary name beside it and renamed into place, so a
reader (another sweep, a killed and restarted job, MLflow's backfill) sees all of it or none;
two writers of the same file never share a temporary name.

One permission policy: every file gets the mode the process's umask gives a new file (0644
under umask 022, 0664 under a lab's 002), whichever library wrote it. safetensors writes
0600 and mkstemp 0600: without this a group sharing an out_dir could read the metrics but
not the weights.

And one key for the per-process caches of a file's contents (`file_version`): a file that
changed is read again."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def file_version(path: Path) -> tuple:
    """Which version of a file this is (its resolved path, size and mtime): a per-process cache
    keyed by it reads a file again once it has changed."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the current umask."""
    return 0o666 & ~_read_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the current umask."""
    return 0o777 & ~_read_umask()


def publish(tmp: Path, path: Path) -> None:
    """Give `tmp` the policy's mode and rename it to `path` (atomic on one file system)."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def write_via(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` atomically with `write(temporary_path)` (for writers that take a path:
    safetensors, torch.save)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())

    write_via(path, write)
