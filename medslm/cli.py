"""What every entrypoint shares: user errors become one line on stderr and exit code 2.

Besides medslm's own error types, every ``OSError`` (disk full, read-only folder, a file where a
folder is expected, permission denied) and every unreadable safetensors file becomes one line that
names the path: ``error: runs/x/adapter: no space left on device``. Code that can meet an error
which does not carry its path (a failed ``write()``, a truncated JSON file) adds it itself, through
:mod:`medslm.files`.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import TypeVar

from medslm.config import ConfigError
from medslm.data import DataError
from medslm.mixing import MixError
from medslm.prompts import OverlongError

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix (bad path, incompatible resume, out of memory): one clear line."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    MixError,
    OverlongError,
    UserError,
)

DISK_FULL = "no space left on device"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library (pyarrow, safetensors) only says so in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OSError (``PATH -> PATH2`` for a rename); disk full reads as such."""
    if is_disk_full(exc):
        reason = DISK_FULL
    elif exc.errno is not None and exc.strerror:
        reason = exc.strerror[:1].lower() + exc.strerror[1:]
    else:
        reason = exc.strerror or str(exc)  # our own OSError("message") already says what failed
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's often runs to a report), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _safetensors_error() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError

        return (SafetensorError,)
    except ImportError:  # an older safetensors: its errors then reach the traceback
        return ()


def run_cli(entry: Callable[[], T]) -> T:
    try:
        return entry()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
    except _safetensors_error() as exc:
        reason = DISK_FULL if is_disk_full(exc) else f"not a readable safetensors file ({exc})"
        print(f"error: {reason}", file=sys.stderr)
    raise SystemExit(2)
