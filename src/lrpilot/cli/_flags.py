"""Error messages in the words of the command line: a library function's argument names
(``batch_size=0``) become the flags that set them (``--batch-size=0``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lrpilot.errors import ConfigError


def as_flags(message: str, names: Mapping[str, str]) -> str:
    """``message`` with each ``name`` (a whole word, followed by ``=`` or `` >=``) replaced
    by its flag.

    >>> as_flags("batch_size=0 is out of range; probe_batch_size stays", {"batch_size": "--batch-size"})
    '--batch-size=0 is out of range; probe_batch_size stays'
    """
    if not names:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?=\s?[=<>])")
    return pattern.sub(lambda m: names[m[1]], message)


def dashed(*names: str) -> dict[str, str]:
    """``{"probe_batch": "--probe-batch", ...}``."""
    return {name: "--" + name.replace("_", "-") for name in names}


def positive_int(flag: str, text: str | None) -> int | None:
    """``int(text)`` checked to be at least 1 (``None`` passes through), errors naming ``flag``."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is not an integer; allowed: [1, inf)") from None
    if value < 1:
        raise ConfigError(f"{flag}={value} is out of range; allowed: [1, inf)")
    return value


def check_png(path: str) -> Path:
    """The ``--png`` target, checked before any work: a .png file in an existing directory."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ConfigError(f"--png={path!r} must end in .png")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--png={path!r}: directory {str(parent)!r} does not exist")
    if target.is_dir():
        raise ConfigError(f"--png={path!r} is a directory")
    return target
