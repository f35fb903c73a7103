"""One process at a time in a run folder: an advisory ``flock`` on ``RUN/.lock``.

Two ``ssmis train`` of one name, the same ``--run-dir`` twice, or two ``--resume`` of one run
would interleave their writes; the second one is refused with one line instead. The lock is held
by an open file, so the system releases it when the process dies (no stale lock after a kill).
Within one process the lock is re-entrant (``train`` evaluates its own run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ssmis.errors import SSMISError

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}
_handles: dict[Path, IO[str]] = {}


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block.

    Raises:
        SSMISError: another process holds it (the message names its pid), or the folder cannot
            be written.
    """
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    handle = _acquire(run_dir)
    _held[key], _handles[key] = 1, handle
    try:
        yield
    finally:
        del _held[key]
        _handles.pop(key).close()


def _acquire(run_dir: Path) -> IO[str]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, as before
        return open(os.devnull, "w")  # noqa: SIM115 - closed by run_lock
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held open while the lock is held
    except OSError as err:
        raise SSMISError(f"{run_dir}: cannot use the run folder ({err.strerror or err})") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise SSMISError(f"{run_dir}: run folder in use by {owner}; wait for it to finish or "
                         "choose another --run-dir / name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"ssmis pid {os.getpid()}\n")
    handle.flush()
    return handle
