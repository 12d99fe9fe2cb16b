"""Files that are either complete or absent: write to a temporary name, flush, rename.

A killed process never leaves a half-written checkpoint, table or cache entry behind; the
temporary files it may leave (``.<name>.<random>.tmp``) are removed by :func:`remove_temp_files`.
Files get the mode the user's umask gives (not the 0600 of a bare temporary file), and a
full disk or a read-only folder is one line (:class:`MinnetsError`), not a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from minnets.errors import MinnetsError

__all__ = ["atomic_write", "write_json", "read_json", "remove_temp_files", "write_error", "cache_folder"]

def cache_folder(name: str = "") -> Path:
    """``$MINNETS_CACHE/<name>`` (default ``~/.cache/minnets/<name>``): the one folder above every cache."""
    base = os.environ.get("MINNETS_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "minnets") / name


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def write_error(path: Path, error: OSError) -> MinnetsError | None:
    """The one-line error for a write that failed for want of space or permission, else None."""
    if error.errno in _NO_SPACE:
        return MinnetsError(f"no space left on the device to write {path}; free some space and run the same "
                            "command again (finished work is kept)")
    if error.errno in _NOT_WRITABLE:
        return MinnetsError(f"cannot write {path} ({os.strerror(error.errno)}); make its folder writable or "
                            "choose another output folder")
    if error.errno == errno.ENOTDIR:
        return MinnetsError(f"cannot write {path}: a file stands where a folder is needed on its path")
    return None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise (write_error(path, error) or error) from None
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # after write: some writers (safetensors) recreate the file
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        friendly = write_error(path, error) if isinstance(error, OSError) else None
        if friendly is None and isinstance(error, Exception) and _disk_full(path.parent):
            # torch.save and safetensors report a full disk in their own words and types
            friendly = write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        if friendly is not None:
            raise friendly from None
        raise


def remove_temp_files(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` of ``folder/<name>`` left behind.

    Only call this while no other process writes those files (e.g. under the run's lock).
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MinnetsError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise MinnetsError(f"{path} is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MinnetsError(f"{path} is damaged ({error}); delete it or the run directory and train again") from None
