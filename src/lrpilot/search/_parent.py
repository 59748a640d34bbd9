"""A trial child dies with its parent (Linux ``PR_SET_PDEATHSIG``): used between fork
and exec by :mod:`lrpilot.search._runner` and :mod:`lrpilot.search._study`, and by the fork
server's children (:mod:`lrpilot.search._child`)."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to send this process SIGTERM when its parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
