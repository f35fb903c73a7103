"""Atomic output files: every file ssmis writes goes to a temporary file beside it, then is renamed.

A crash, a kill or a full disk therefore never leaves a half-written or 0-byte file under a real
name: a file that exists under its final name is complete, so a rerun may skip it. A write error
is one line (:class:`~ssmis.errors.SSMISError`) naming the file, and the temporary file is
removed. Temporary files are named ``.<name>.<random>.tmp<ending>`` (the ending kept so that
writers choosing a format by extension, ``nib.save``, PIL, matplotlib, still work); a killed
process may leave one behind, which :func:`clean_temporary` removes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssmis.errors import SSMISError

__all__ = ["atomic_write", "clean_temporary", "io_reason", "write_bytes", "write_json",
           "write_text"]

#: endings made of two suffixes that writers recognise as one format
_DOUBLE_ENDINGS = (".nii.gz", ".tar.gz")


def _ending(path: Path) -> str:
    name = path.name.lower()
    for ending in _DOUBLE_ENDINGS:
        if name.endswith(ending):
            return path.name[-len(ending):]
    return path.suffix


def io_reason(err: BaseException) -> str | None:
    """A short reason when ``err`` is an I/O failure (``OSError``, or the error type of a
    library wrapping one, as safetensors does), else None."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    if "IoError" in text or "os error" in text.lower():
        match = re.search(r'message: "([^"]+)"', text) or re.search(r"kind: (\w+)", text)
        return match.group(1) if match else text.splitlines()[0]
    return None


def _umask() -> int:
    """The process's umask: Linux reports it in ``/proc/self/status`` (read without changing
    it, so no other thread creates a file under a cleared umask); elsewhere set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _mode_for(path: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` would give: the existing file's, else
    0666 less the umask (``mkstemp`` makes its files 0600, owner only)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    The folder is created when missing. Returns ``path``.

    Raises:
        SSMISError: one line naming ``path`` when the folder cannot be created or the write or
            rename fails with an I/O error (permission, disk full, read-only file system); the
            temporary file is removed and ``path`` keeps its previous content (or stays absent).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{_ending(path)}",
                                    dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise SSMISError(f"{path}: cannot write ({err.strerror or err})") from None
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        reason = io_reason(err)
        if reason is not None:
            kept = "the previous file is kept" if path.exists() else "no partial file is left"
            raise SSMISError(f"{path}: cannot write ({reason}); {kept}") from None
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    """Atomically write ``data`` as JSON (and a final newline) to ``path``."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def clean_temporary(folder: Path) -> int:
    """Remove the temporary files a killed write left in ``folder``; returns how many."""
    removed = 0
    if Path(folder).is_dir():
        for path in Path(folder).glob(".*.tmp*"):
            if path.is_file() and re.search(r"\.tmp(\.[^.]+)*$", path.name):
                path.unlink(missing_ok=True)
                removed += 1
    return removed
