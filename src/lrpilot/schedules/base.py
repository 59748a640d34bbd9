"""The ``Schedule`` interface and the argument checks every factory shares.

A schedule is a pure function of the optimizer step: ``schedule(step) -> float`` gives the
absolute learning rate (or momentum) for the update with 0-based index ``step``. It holds
no counter; the caller (usually :func:`lrpilot.schedules.attach`) owns the step. Every
schedule is an instance of a module-level class, so it pickles, and validates its
arguments in ``__init__`` (raising :class:`lrpilot.errors.ConfigError`, a ``ValueError``,
naming the parameter, the value and the allowed range).

>>> from lrpilot.schedules import cosine
>>> s = cosine(0.1, steps=10)
>>> s(0), s(10), s(50)
(0.1, 0.0, 0.0)
>>> s.length, s.boundaries(20)
(10, [0, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

from lrpilot.errors import ConfigError, check_int, check_range

__all__ = [
    "MAX_BOUNDARIES",
    "MAX_STEPS",
    "Schedule",
    "check_bool",
    "check_choice",
    "check_int",
    "check_lr",
    "check_range",
    "check_step_list",
    "check_steps",
]

#: Largest accepted length/step count (2**53: every step is exact as a float).
MAX_STEPS = 2**53

#: Periodic schedules list at most this many boundaries (the first ones).
MAX_BOUNDARIES = 1000


class Schedule:
    """Base class of every schedule: a pure, picklable ``step -> value`` function.

    Subclasses implement ``__call__`` and set ``length`` (the step from which the schedule
    stays constant, or ``None`` if it never settles); they may override ``boundaries`` to
    list the steps where a phase starts (used for tables and tests) and ``warmup_steps``
    (how many leading steps are a warmup; ``Plateau`` never reduces during them).
    """

    length: int | None = None
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def _own_boundaries(self, until: int) -> list[int]:
        return []

    def boundaries(self, until: int) -> list[int]:
        """Sorted steps in ``[0, until]`` where a phase starts: 0, each boundary, the end.

        Periodic schedules list only their first ``MAX_BOUNDARIES`` boundaries.
        """
        points = {0, *self._own_boundaries(until)}
        if self.length is not None:
            points.add(self.length)
        return sorted(p for p in points if 0 <= p <= until)

    def _params(self) -> dict[str, object]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._params() == other._params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


def check_lr(name: str, value: object) -> float:
    """A learning rate or other non-negative finite value."""
    return check_range(name, value, low=0.0)


def check_steps(name: str, value: object, low: int = 1) -> int:
    """A length in optimizer steps (an integer ``>= low``)."""
    return check_int(name, value, low=low, high=MAX_STEPS)


def check_step_list(name: str, value: object, *, low: int = 1) -> tuple[int, ...]:
    """A non-empty, strictly increasing list of integer steps, each ``>= low``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of integer steps, got {value!r}")
    if len(value) == 0:
        raise ConfigError(f"{name} must not be empty")
    out = tuple(check_int(f"{name}[{i}]", v, low=low, high=MAX_STEPS) for i, v in enumerate(value))
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ConfigError(
                f"{name} must be strictly increasing, got {list(out)!r} "
                f"({name}[{i}]={out[i]} <= {name}[{i - 1}]={out[i - 1]})"
            )
    return out


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; allowed: {', '.join(choices)}")
    return value


def check_bool(name: str, value: object) -> bool:
    """A real boolean (YAML ``true``/``false``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_step(step: object) -> int:
    """The step argument of a schedule call: an integer >= 0."""
    if isinstance(step, bool) or not isinstance(step, int):
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        else:
            raise ConfigError(f"step must be an integer >= 0, got {step!r}")
    if step < 0:
        raise ConfigError(f"step={step} is out of range; allowed: [0, inf]")
    return step


def negative_step(step: int) -> ConfigError:
    return ConfigError(f"step={step!r} is out of range; allowed: [0, inf)")


def check_gamma(name: str, value: object) -> float:
    return check_range(name, value, low=0.0, high=1.0, low_inclusive=False)  # type: ignore[arg-type]
