"""What every entrypoint shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

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
    FileNotFoundError,
)


def run_cli(entry: Callable[[], T]) -> T:
    try:
        return entry()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
