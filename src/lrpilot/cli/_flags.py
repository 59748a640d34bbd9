"""Error messages in the words of the command line: a library function's argument names
(``batch_size=0``) become the flags that set them (``--batch-size=0``)."""

from __future__ import annotations

import re
from collections.abc import Mapping


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
