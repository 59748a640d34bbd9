"""The extension point of the training loop: a :class:`Callback` sees every optimizer step's
:class:`StepOutcome` and every epoch's record, and answers with a :class:`Control` (or
``None``, which means "carry on").

The loop (:func:`lrpilot.fit`) calls, in order: ``on_fit_start(engine)`` once;
``on_step_end(engine, outcome)`` after every optimizer step; ``on_epoch_end(engine,
record)`` after every epoch's validation; ``on_fit_end(engine, summary)`` once.
Callbacks run in the order given, lrpilot's own first (logging, plateau, best/early
stopping, the divergence guard), then the user's, then checkpointing (so a checkpoint holds
every callback's ``state_dict()``). What the engine does with the answers:

* ``stop``: the run ends after this step (the epoch is then closed with a validation)
  or this epoch; status ``early_stopped``, ``reason`` in ``summary.json``;
* ``lr_scale``: ``ScheduleAdapter.set_lr_scale(lr_scale)``: every later LR is
  ``lr_scale * schedule(step)`` (recorded as an ``lr_scale`` event);
* ``rescue``: the callback has put the engine back to an earlier state (the guard does);
  recorded only.

Only callbacks that override a method are called for it (:class:`CallbackList`), so the
hot path pays nothing for hooks nobody uses.

>>> class StopAt(Callback):
...     def __init__(self, step): self.step = step
...     def on_step_end(self, engine, outcome):
...         return Control(stop=True, reason="enough") if outcome.step >= self.step else None
>>> calls = CallbackList([StopAt(3)])
>>> [calls.step_end(None, StepOutcome(s, 0, 1.0, None, 0.1, 8, False)) for s in (2, 3)]
[None, Control(stop=True, rescue=False, lr_scale=None, reason='enough')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lrpilot.train._engine import Engine


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One optimizer step, as produced by :meth:`Engine.train_step` (no I/O in the step).

    ``step`` is the 1-based global optimizer step just completed (or discarded), ``epoch``
    the 0-based epoch in progress, ``loss`` the mean training loss of the step's samples
    (may be nan/inf), ``grad_norm`` measured only on logged steps or when clipping, ``lr``
    the LR of param group 0 used, ``samples`` the step's samples, ``skipped`` whether the
    update was not applied (fp16 overflow or the guard's verdict) and ``verdict`` the
    guard's verdict on the step (``"ok"``, ``"suspect"``, ``"diverged"``; ``"ok"``
    without a guard).
    """

    step: int
    epoch: int
    loss: float
    grad_norm: float | None
    lr: float
    samples: int
    skipped: bool
    verdict: str = "ok"


@dataclass(frozen=True, slots=True)
class Control:
    """What a callback asks of the engine; ``None`` is the same as ``Control()``."""

    stop: bool = False
    rescue: bool = False
    lr_scale: float | None = None
    reason: str = ""


class Callback:
    """Base class: every method is optional (these are no-ops returning ``None``)."""

    def on_fit_start(self, engine: Engine) -> None:
        return None

    def on_step_end(self, engine: Engine, outcome: StepOutcome) -> Control | None:
        return None

    def on_epoch_end(self, engine: Engine, record: dict) -> Control | None:
        return None

    def on_fit_end(self, engine: Engine, summary: dict) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def _overrides(callback: Callback, name: str) -> bool:
    return getattr(type(callback), name, None) is not getattr(Callback, name)


def _merged(
    hooks: Sequence[Callable[..., Control | None]], engine: Any, arg: Any
) -> Control | None:
    """Call each hook; merge the controls they return (``None`` when none did)."""
    answer = None
    for hook in hooks:
        control = hook(engine, arg)
        if control is not None:
            answer = control if answer is None else merge(answer, control)
    return answer


class CallbackList:
    """Callbacks in order, with the per-hook lists of those that override the hook."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be lrpilot.train.Callback objects, got {cb!r}")
        self._step = [cb.on_step_end for cb in self.callbacks if _overrides(cb, "on_step_end")]
        self._epoch = [cb.on_epoch_end for cb in self.callbacks if _overrides(cb, "on_epoch_end")]

    def fit_start(self, engine: Any) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(engine)

    def step_end(self, engine: Any, outcome: StepOutcome) -> Control | None:
        """The merged answer of every ``on_step_end`` (``None``: nobody asked anything)."""
        return _merged(self._step, engine, outcome)

    def epoch_end(self, engine: Any, record: dict) -> Control | None:
        """The merged answer of every ``on_epoch_end``."""
        return _merged(self._epoch, engine, record)

    def fit_end(self, engine: Any, summary: dict) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(engine, summary)


def merge(a: Control, b: Control) -> Control:
    """Two answers in one: stop or rescue if either asks; the later LR scale wins; the
    reasons joined.

    >>> merge(Control(stop=True, reason="a"), Control(lr_scale=0.5, reason="b"))
    Control(stop=True, rescue=False, lr_scale=0.5, reason='a; b')
    """
    reason = "; ".join(r for r in (a.reason, b.reason) if r)
    return Control(
        stop=a.stop or b.stop,
        rescue=a.rescue or b.rescue,
        lr_scale=b.lr_scale if b.lr_scale is not None else a.lr_scale,
        reason=reason,
    )
