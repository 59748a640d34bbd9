"""Epochs at chance level: a classifier whose loss sits at that of a uniform prediction.

A freshly initialised classifier over ``K`` classes predicts close to uniformly, so its
first cross-entropy loss is close to ``ln K``; ``K = round(exp(first loss))`` when that
first loss lies within :data:`CHANCE_LOSS_TOL` of ``ln K`` (``K >= 2``), otherwise the run
is not treated as a classifier and nothing is at chance (above about 10 classes the
neighbours of ``K`` lie within the tolerance too; the loss test is the same for them and the
accuracy bound moves by about ``1 / K``). An epoch is *at chance* when its
validation loss (the training epoch mean when no validation loss is logged) lies within
``CHANCE_LOSS_TOL`` of ``ln K`` and its logged ``val_accuracy`` is at most
``CHANCE_ACC_FACTOR / K`` (a uniform guess scores ``1 / K``). Without a logged accuracy
nothing is at chance: a loss near ``ln K`` alone is also what a regression or a slowly
learning classifier can show. A run that diverged and
"recovered" to a constant prediction sits exactly there (dead units, or logits that no
longer depend on the input); so does a run whose learning rate is far too low.

Pure functions of :class:`~lrpilot.diagnosis.curves.Curves`; epochs are the 0-based indices
of the records (the text says them counted from 1).

>>> import math
>>> from lrpilot.history import History
>>> recs = [{"type": "step", "step": 1, "epoch": 0, "train_loss": math.log(10) + 0.03}]
>>> recs += [{"type": "epoch", "epoch": e, "step": e + 1, "val_loss": v, "val_accuracy": a}
...          for e, (v, a) in enumerate([(1.2, 0.6), (2.31, 0.1), (2.30, 0.11)])]
>>> chance_epochs(Curves.from_history(History.from_records(recs)))
(10, [1, 2])
"""

from __future__ import annotations

import math

import numpy as np

from lrpilot.diagnosis.curves import Curves

__all__ = ["CHANCE_ACC_FACTOR", "CHANCE_LOSS_TOL", "chance_classes", "chance_epochs", "describe"]

#: Largest distance (nats) from ``ln K`` of the first loss, and of an epoch at chance.
CHANCE_LOSS_TOL = 0.1
#: Largest accuracy of an epoch at chance, as a multiple of the uniform guess ``1 / K``.
CHANCE_ACC_FACTOR = 1.5


def chance_classes(first_loss: float) -> int | None:
    """``K`` with ``|first_loss - ln K| <= CHANCE_LOSS_TOL`` and ``K >= 2``, else ``None``.

    >>> chance_classes(2.34), chance_classes(0.70), chance_classes(1.6), chance_classes(0.2)
    (10, 2, 5, None)
    """
    if not math.isfinite(first_loss) or first_loss <= 0 or first_loss > 50:
        return None
    k = round(math.exp(first_loss))
    if k < 2 or abs(first_loss - math.log(k)) > CHANCE_LOSS_TOL:
        return None
    return k


def _first_loss(c: Curves) -> float:
    finite = c.step_loss[np.isfinite(c.step_loss)]
    if finite.size:
        return float(finite[0])
    train = c.epoch_train[np.isfinite(c.epoch_train)]
    return float(train[0]) if train.size else math.nan


def chance_epochs(c: Curves) -> tuple[int | None, list[int]]:
    """``(K, epochs at chance)`` (module doc); ``(None, [])`` when the run does not start
    at a uniform prediction."""
    k = chance_classes(_first_loss(c))
    if k is None:
        return None, []
    loss = np.where(np.isfinite(c.epoch_val), c.epoch_val, c.epoch_train)
    if c.epoch_acc.size != loss.size:
        return None, []
    acc = c.epoch_acc
    at = (np.abs(loss - math.log(k)) <= CHANCE_LOSS_TOL) & (acc <= CHANCE_ACC_FACTOR / k)
    return k, [int(e) for e in c.epoch_x[at]]


def describe(k: int, epochs: list[int], total: int) -> str:
    """``"7 of 10 epochs at chance level (loss ≈ ln 10): epochs 4-10"`` (1-based in text).

    >>> describe(10, [3, 4, 5, 7], 10)
    '4 of 10 epochs at chance level (loss ≈ ln 10, a uniform guess over 10 classes): epochs 4-6, 8'
    """
    ranges: list[str] = []
    for e in sorted(epochs):
        n = e + 1
        if ranges and ranges[-1].split("-")[-1] == str(n - 1):
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{n}"
        else:
            ranges.append(str(n))
    return (
        f"{len(epochs)} of {total} epochs at chance level (loss ≈ ln {k}, a uniform guess "
        f"over {k} classes): epochs {', '.join(ranges)}"
    )
