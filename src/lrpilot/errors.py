"""Exceptions shared by every lrpilot module.

``ConfigError`` is a ``ValueError``: bad user input (a config value, a CLI argument, a
file that cannot be parsed). The CLI turns it into a one-line message and exit code 2.
``TrainingAborted`` is raised when a run cannot go on (for example the divergence guard
ran out of rescues); the CLI turns it into a one-line message and exit code 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """Invalid user input: the message names the field, the value and what is allowed."""


class TrainingAborted(RuntimeError):
    """A run stopped on purpose with an explanation (not a bug)."""


def short_repr(value: object) -> str:
    """``repr`` shortened for messages (a 400-digit integer stays readable)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} characters)"


def check_range(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` or raise ``ConfigError`` naming ``name``, the value and the range.

    >>> check_range("gamma", 0.5, low=0, high=1, low_inclusive=False)
    0.5
    """
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        lb = "[" if (low is not None and low_inclusive) else "("
        hb = "]" if (high is not None and high_inclusive) else ")"
        raise ConfigError(
            f"{name}={short_repr(value)} is out of range; allowed: {lb}{lo}, {hi}{hb}"
        )
    return v


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int or raise ``ConfigError`` naming ``name`` and the range.

    >>> check_int("steps", 10, low=1)
    10
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ConfigError(f"{name}={short_repr(value)} is out of range; allowed: [{lo}, {hi}]")
    return value


#: The largest seed lrpilot accepts: ``torch.manual_seed`` and ``torch.Generator`` take
#: 64-bit seeds; offsets derived from a seed (a sweep's ``seed + 1000 k``) stay below 2**64.
SEED_MAX = 2**63 - 1


def check_seed(value: object, name: str = "seed", high: int = SEED_MAX) -> int:
    """``value`` as a seed in ``[0, high]``, or ``ConfigError`` naming ``name`` and the range.

    >>> check_seed(7)
    7
    >>> check_seed(2**64)
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: seed=18446744073709551616 is out of range; allowed: [0, 9223372036854775807]
    """
    return check_int(name, value, low=0, high=high)


def check_keys(section: str, raw: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    """Refuse a key of the config section ``section`` that is not in ``valid``.

    >>> check_keys("noise_scale", {"beta": 0.9}, ("beta", "every"))
    >>> check_keys("noise_scale", {"bta": 0.9}, ("beta", "every"))
    Traceback (most recent call last):
    ...
    lrpilot.errors.ConfigError: unknown config key 'noise_scale.bta'; valid: beta, every
    """
    for key in raw:
        if key not in valid:
            raise ConfigError(
                f"unknown config key '{section}.{key}'; valid: {', '.join(sorted(valid))}"
            )
