"""The public surface: ``import lrpilot`` is light and lazy, every public name resolves, no
optional dependency is imported by the core packages, and ``python -m lrpilot --version``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lrpilot

OPTIONAL = ("optuna", "ray", "lightning", "pytorch_lightning", "transformers")
PUBLIC = ("finder", "batch", "diagnosis", "schedules", "tasks", "optim")


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout.strip()


def test_import_lrpilot_loads_no_dependency():
    out = _run(
        "import sys, lrpilot; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{('torch', 'numpy', 'lrpilot', *OPTIONAL)!r}))"
    )
    assert out == "['lrpilot', 'lrpilot.errors']"


def test_core_packages_import_no_optional_dependency():
    imports = "; ".join(f"import lrpilot.{name}" for name in PUBLIC)
    out = _run(f"import sys; {imports}; print(sorted({{m.split('.')[0] for m in sys.modules}}))")
    assert not set(eval(out)) & set(OPTIONAL), out


def test_every_public_name_resolves():
    for name in lrpilot.__all__:
        assert getattr(lrpilot, name) is not None, name
    assert lrpilot.fit is importlib.import_module("lrpilot.autopilot").fit
    assert lrpilot.find_for_task is importlib.import_module("lrpilot.finder").find_for_task
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lrpilot.nope
    for package in PUBLIC:
        module = importlib.import_module(f"lrpilot.{package}")
        assert len(set(module.__all__)) == len(module.__all__), package
        for name in module.__all__:
            assert hasattr(module, name), f"lrpilot.{package}.{name}"


def test_version_matches_the_project_and_the_cli(capsys):
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M)[1]
    assert lrpilot.__version__ == version
    proc = subprocess.run(
        [sys.executable, "-m", "lrpilot", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"lrpilot {version}"
    from lrpilot.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lrpilot {version}"
