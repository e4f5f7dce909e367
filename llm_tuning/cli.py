"""User-facing errors: one clear sentence and exit code 2, never a traceback for a user mistake."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

USER_ERROR_EXIT_CODE = 2

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad path, bad record, wrong flag). The message says how."""


def exits_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's entry point: a `UserError` prints `error: <message>` and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper


def parse_bool(value: str | bool) -> bool:
    """Parse true/false flags the way users type them (fixes argparse's `type=bool` trap)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes", "y", "on"}:
        return True
    if lowered in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
