"""``lrpilot tune``: hyper-parameter search around ordinary ``lrpilot fit`` runs.

Each trial is a ``lrpilot fit`` run directory under the study directory, trained in a child
process (:mod:`lrpilot.search._runner`); the parent reads the child's epoch records from
``metrics.jsonl``, reports them to the search backend and stops a pruned child (SIGTERM,
then wait). Backends: Optuna (:mod:`lrpilot.search._study`; storage ladder SQLite file ->
journal file for ``--workers K`` -> any SQLAlchemy URL such as PostgreSQL for many
machines; heartbeats and retries so a killed worker's trial is failed and resumed from its
last checkpoint) and Ray Tune with ASHA (:mod:`lrpilot.search._ray_backend`). The space is
YAML over dotted config keys (:mod:`lrpilot.search._space`); the report (table, ``best.yaml``,
importances, history PNG) is :mod:`lrpilot.search._report`.

Optuna and Ray are optional (``pip install lrpilot[search]``) and imported lazily, so
``import lrpilot`` works without them.

>>> from lrpilot.search import require
>>> require("json").__name__
'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lrpilot.errors import ConfigError

INSTALL_HINT = "pip install lrpilot[search]"


def require(module: str) -> ModuleType:
    """Import an optional dependency of the search or raise a one-line ``ConfigError``
    naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"lrpilot tune needs {module.split('.')[0]} ({exc}); install it with: {INSTALL_HINT}"
        ) from None


__all__ = ["INSTALL_HINT", "require"]
