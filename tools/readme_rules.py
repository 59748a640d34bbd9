"""Regenerate the README's rules table from ``lrpilot.recommend._rules.RULES``.

    PYTHONPATH=src .venv/bin/python tools/readme_rules.py [--check]

Replaces the text between the ``rules-table`` markers of README.md with
:func:`lrpilot.recommend._rules.render_markdown`; ``--check`` only reports whether it is up
to date (exit 1 if not). ``tests/test_recommend_rules.py`` runs the same comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def main(argv: list[str] | None = None) -> int:
    from lrpilot.recommend._rules import with_rules_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = with_rules_table(text)
    if args.check:
        print("README rules table is " + ("up to date" if new == text else "stale"))
        return 0 if new == text else 1
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
