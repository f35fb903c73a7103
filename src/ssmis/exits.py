"""How an ssmis command ends on an error: one line on stderr and an exit status, never a
traceback (the ``ssmis`` command and every sweep job end the same way).

Status 2 for a user error (:class:`~ssmis.errors.SSMISError`, a file system error, a user error
re-raised by a data-loader worker, a DDP collective that failed because another process died),
``128 + signal`` for a run stopped by SIGINT/SIGTERM (:class:`~ssmis.errors.RunInterrupted`),
130 for Ctrl-C outside a run.
"""

from __future__ import annotations

import os
import sys

from ssmis.errors import RunInterrupted, SSMISError


def exit_status(err: BaseException) -> int | None:
    """Print the one line that reports ``err`` and return the exit status.

    Returns None (nothing printed) for an unexpected error: the caller re-raises it.
    """
    if isinstance(err, RunInterrupted):
        if not (getattr(err, "all_processes", False) and rank_prefix()):  # DDP: rank 0 says it
            print(f"ssmis: {err}", file=sys.stderr)
        return err.exit_code
    if isinstance(err, SSMISError):
        _print_error(err)
        return 2
    if isinstance(err, KeyboardInterrupt):
        print("ssmis: interrupted", file=sys.stderr)
        return 130
    if isinstance(err, OSError):  # disk full, permission denied, read-only file system, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"ssmis: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    if not isinstance(err, Exception):
        return None
    # a data-loader worker wraps our errors in its own exception type
    original = _wrapped_user_error(err) or _distributed_failure(err)
    if original is None:
        return None
    print(f"ssmis: error: {rank_prefix()}{original}", file=sys.stderr)
    return 2


def rank_prefix() -> str:
    """'[rank R] ' in DDP processes other than rank 0 (torchrun sets RANK), else ''."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if rank not in ("", "0") else ""


def _print_error(err: SSMISError) -> None:
    """One line on stderr; an error every DDP process raised alike is printed by rank 0 only."""
    if getattr(err, "all_processes", False) and rank_prefix():
        return
    print(f"ssmis: error: {rank_prefix()}{err}", file=sys.stderr)


def _distributed_failure(err: Exception) -> str | None:
    if "ssmis.engine.distributed" not in sys.modules:
        return None
    return sys.modules["ssmis.engine.distributed"].failure_message(err)


def _wrapped_user_error(err: Exception) -> str | None:
    """The one-line message of an SSMISError re-raised by a DataLoader worker, if that's it."""
    text = str(err)
    marker = "SSMISError: "
    if marker not in text:
        return None
    return text.rsplit(marker, 1)[1].strip().splitlines()[0]
