"""One safe YAML reader and one number parser for every file and value lrpilot reads.

Fit configs, schedule configs, ``--set`` values and search spaces all go through
:func:`load_file` / :func:`loads`. On top of ``yaml.SafeLoader`` (no Python objects, no
``eval``) it refuses, each with a one-line ``ConfigError`` naming the source and the line:

* anything but a regular file (``/dev/zero``, a FIFO, a directory), checked with ``stat``
  before opening, and files over :data:`MAX_FILE_BYTES`;
* duplicate mapping keys (the last one would silently win);
* alias bombs: more than :data:`MAX_ALIASES` aliases, or more than :data:`MAX_NODES` nodes
  once every alias is expanded (counted while composing, before anything is built:
  a node's expanded size is 1 + its children's, an alias counts its anchor's size);
  recursive aliases;
* nesting deeper than :data:`MAX_DEPTH` (no ``RecursionError``);
* a scalar longer than :data:`MAX_SCALAR_CHARS`, a number written with more than
  :data:`MAX_NUMBER_CHARS` characters (a 5000-digit integer), and tags SafeLoader rejects.

Numbers follow YAML 1.2 as well as 1.1: ``1e-3`` and ``1E3`` (no dot, no exponent sign),
which PyYAML's YAML 1.1 rules leave as strings, are floats. :func:`parse_number` is the
one linear parser (no backtracking regex) used for numbers given as text.

>>> loads("lr: 1e-3\\nbetas: [9e-1, 0.99]\\nsteps: 1_000\\n", "cfg.yaml")
{'lr': 0.001, 'betas': [0.9, 0.99], 'steps': 1000}
>>> loads("a: 1\\nb: 2\\na: 3\\n", "cfg.yaml")
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: cfg.yaml:3: duplicate key 'a' (first at line 1)
>>> parse_number("2.5e-3"), parse_number("-7"), parse_number("1e-3x")
(0.0025, -7, None)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, ScalarNode

from lrpilot.errors import ConfigError

__all__ = [
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_SCALAR_CHARS",
    "load_file",
    "load_mapping",
    "loads",
    "parse_number",
    "read_text_file",
]

#: Largest file read (a config is a few hundred bytes; PyYAML parses ~100 kB/s of tokens).
MAX_FILE_BYTES = 64 * 1024
#: Nesting depth of collections.
MAX_DEPTH = 32
#: Alias (``*name``) uses per document.
MAX_ALIASES = 100
#: Nodes once every alias is expanded.
MAX_NODES = 20_000
#: Characters in one scalar.
MAX_SCALAR_CHARS = 4096
#: Characters in a number (a float has 17 significant digits; an int64 19).
MAX_NUMBER_CHARS = 64

# Linear: the mandatory '.' and 'e' separate the digit runs, so no two quantifiers compete
# for the same characters (``\d+\.?\d*`` does, and backtracks quadratically on long digits).
_DECIMAL = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")
_INTEGER = re.compile(r"[-+]?[0-9][0-9_]*")
_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"


def parse_number(text: str) -> int | float | None:
    """``text`` as an int (plain digits, ``_`` separators allowed) or a float (decimal or
    scientific, with or without a dot or an exponent sign), else ``None``. Linear time;
    text longer than :data:`MAX_NUMBER_CHARS` is ``None``.

    >>> parse_number("1e-3"), parse_number("3"), parse_number(".5"), parse_number("1.5E+2")
    (0.001, 3, 0.5, 150.0)
    >>> parse_number("nan") is None, parse_number("9" * 5000) is None
    (True, True)
    """
    text = text.strip()
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    if _INTEGER.fullmatch(text):
        return int(text.replace("_", ""))
    if _DECIMAL.fullmatch(text):
        return float(text.replace("_", ""))
    return None


class _Loader(yaml.SafeLoader):
    """SafeLoader with the limits of the module docstring and duplicate-key detection."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self._depth = 0
        self._aliases = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}
        self._path: list[str] = []

    def _fail(self, mark: Any, message: str) -> ConfigError:
        where = self.source if mark is None else f"{self.source}:{mark.line + 1}"
        field = "".join(p if p.startswith("[") else f".{p}" for p in self._path if p)[1:]
        if len(field) > 80:
            field = f"{field[:40]}...{field[-30:]}"
        return ConfigError(f"{where}: {field + ': ' if field else ''}{message}")

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._fail(event.start_mark, f"more than {MAX_ALIASES} aliases")
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise self._fail(event.start_mark, f"recursive alias *{event.anchor}")
            self._count(size, event.start_mark)
            return node
        self._path.append(_label(index))
        if isinstance(event, ScalarEvent):
            if len(event.value) > MAX_SCALAR_CHARS:
                raise self._fail(
                    event.start_mark,
                    f"a value of {len(event.value)} characters; at most {MAX_SCALAR_CHARS}",
                )
        else:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise self._fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        before = self._expanded
        node = super().compose_node(parent, index)
        is_number = isinstance(node, ScalarNode) and node.tag in (_INT_TAG, _FLOAT_TAG)
        if is_number and len(node.value) > MAX_NUMBER_CHARS:
            raise self._fail(
                event.start_mark,
                f"a number of {len(node.value)} characters; at most {MAX_NUMBER_CHARS}",
            )
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        self._path.pop()
        if not isinstance(event, ScalarEvent):
            self._depth -= 1
        self._count(1, event.start_mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, size: int, mark: Any) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            raise self._fail(
                mark, f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)"
            )

    def _check_duplicates(self, node: MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise self._fail(
                        key_node.start_mark,
                        f"duplicate key {_short(key)} (first at line {seen[key]})",
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader refuses it when it builds the map
                continue


def _label(index: Any) -> str:
    """The path element of a node: its key (a mapping value) or ``[i]`` (a list item)."""
    if isinstance(index, ScalarNode):
        return _short(index.value) if len(index.value) > 60 else index.value
    if isinstance(index, int) and not isinstance(index, bool):
        return f"[{index}]"
    return ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


# YAML 1.2 floats without a dot or without an exponent sign (1e-3, 1E3, 2.5e3).
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def loads(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document from ``text`` with the limits of the module docstring;
    ``source`` names it in messages (a path, or ``--set key``). Empty text is ``None``."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; at most {MAX_FILE_BYTES}")
    loader = _Loader(text, source)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(
            part for part in (exc.context, exc.problem) if part and isinstance(part, str)
        )
        where = source if mark is None else f"{source}:{mark.line + 1}"
        raise ConfigError(" ".join(f"{where}: invalid YAML: {detail}".split())) from None
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(f"{source}: invalid YAML: {exc}".split())) from None
    except ValueError as exc:  # ConfigError from the limits, or int() over its digit limit
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(" ".join(f"{source}: {exc}".split())) from None
    finally:
        loader.dispose()


def read_text_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES, *, what: str = "file") -> str:
    """The UTF-8 text of ``path``, which must be a regular file of at most ``max_bytes``.

    ``stat`` comes first, so a FIFO, a device (``/dev/zero``) or a directory is refused
    without being opened; reading stops at ``max_bytes + 1`` bytes in case it grew.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"{what} {p} is {kind}; give a YAML file")
    if st.st_size > max_bytes:
        raise ConfigError(f"{what} {p} has {st.st_size} bytes; at most {max_bytes}")
    try:
        with open(p, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {p} has more than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text ({exc.reason})") from None


def load_file(path: str | Path, *, what: str = "config") -> Any:
    """Read and parse a YAML file (:func:`read_text_file` then :func:`loads`)."""
    text = read_text_file(path, what=what)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{path}:{line}: a NUL byte; not a text file")
    return loads(text, str(path))


def load_mapping(path: str | Path, *, what: str = "config") -> dict[str, Any]:
    """:func:`load_file` for a file that must hold a mapping; an empty file is ``{}``."""
    data = load_file(path, what=what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} keys, got {type(data).__name__}")
    return data
