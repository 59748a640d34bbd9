"""Command-line values checked before any work: output paths (a bad ``--png`` fails at
once, in one line, and nothing, no directory, no half-written file, is created) and
integer flags (linear parsing, a short message naming the flag and its range).

>>> check_png("/nonexistent/x.png")
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: --png='/nonexistent/x.png': directory '/nonexistent' does not exist
"""

from __future__ import annotations

import os
from pathlib import Path

from lrpilot.errors import ConfigError, short_repr


def _path_repr(text: str) -> str:
    return repr(text) if len(text) <= 300 else short_repr(text)


def check_png(path: str | os.PathLike[str], flag: str = "--png") -> Path:
    """``path`` as a ``Path`` if a PNG can be written there: it ends in ``.png``, its
    directory exists and is writable, and it is not a directory itself."""
    text = os.fspath(path)
    target = Path(text)
    if not text or "\x00" in text:
        raise ConfigError(f"{flag}={_path_repr(text)} is not a file name")
    if target.suffix.lower() != ".png":
        raise ConfigError(f"{flag}={_path_repr(text)} must end in .png")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{flag}={_path_repr(text)}: directory {str(parent)!r} does not exist")
    if target.is_dir():
        raise ConfigError(f"{flag}={_path_repr(text)} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}={_path_repr(text)}: directory {str(parent)!r} is not writable")
    return target


def positive_int(flag: str, text: str | None) -> int | None:
    """``text`` as an integer of at least 1 (``None`` passes through), parsed linearly; errors
    name ``flag``.

    >>> positive_int("--total-steps", "3000")
    3000
    """
    from lrpilot._safe_yaml import parse_number

    if text is None:
        return None
    value = parse_number(text)
    if not isinstance(value, int):
        raise ConfigError(f"{flag}={short_repr(text)} is not an integer; allowed: [1, inf)")
    if value < 1:
        raise ConfigError(f"{flag}={value} is out of range; allowed: [1, inf)")
    return value


def int_flag(flag: str, *, low: int | None = None, high: int | None = None):  # type: ignore[no-untyped-def]
    """An ``argparse`` ``type=`` for an integer flag: linear parsing
    (:func:`lrpilot._safe_yaml.parse_number`), a short message naming the flag and the range.

    >>> int_flag("--seed", low=0, high=2**63 - 1)("2**70")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: --seed='2**70' is not an integer; allowed: [0, 9223372036854775807]
    """
    import argparse

    from lrpilot._safe_yaml import parse_number

    lo = "-inf" if low is None else str(low)
    hi = "inf" if high is None else str(high)

    def parse(text: str) -> int:
        value = parse_number(text)
        digits = text.strip().lstrip("+-")
        if value is None and digits.isdigit():  # more digits than any allowed value
            raise argparse.ArgumentTypeError(
                f"{flag}={short_repr(text)} is out of range; allowed: [{lo}, {hi}]"
            )
        if not isinstance(value, int):
            raise argparse.ArgumentTypeError(
                f"{flag}={short_repr(text)} is not an integer; allowed: [{lo}, {hi}]"
            )
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{flag}={short_repr(value)} is out of range; allowed: [{lo}, {hi}]"
            )
        return value

    parse.__name__ = "integer"
    return parse
