"""lrpilot._safe_yaml: the one YAML reader and number parser (issues 16 and 21)."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lrpilot._safe_yaml import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    load_file,
    load_mapping,
    loads,
    parse_number,
)
from lrpilot.errors import ConfigError


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_plain_documents_equal_pyyaml_safe_load():
    text = "a: 1\nb: [0.5, x, null, true]\nc: {d: 'e', f: -3}\ng: 1_000\nh: .inf\n"
    assert loads(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 0.001),
        ("1E3", 1000.0),
        ("-2.5e+2", -250.0),
        (".5e1", 5.0),
        ("3.", 3.0),
        ("1.0e-3", 0.001),  # PyYAML's YAML 1.1 float needs an exponent sign
        ("12", 12),
        ("0x10", 16),  # YAML 1.1 ints are unchanged
        ("'1e-3'", "1e-3"),  # quoted stays a string
        ("1e-3x", "1e-3x"),
    ],
)
def test_numbers_yaml_1_2_style(text, expected):
    assert loads(f"v: {text}")["v"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 0.001),
        ("1E3", 1000.0),
        ("+7", 7),
        ("1_000", 1000),
        (".5", 0.5),
        ("5.", 5.0),
        ("-0.25e-2", -0.0025),
        ("", None),
        ("e3", None),
        ("1e", None),
        ("1.2.3", None),
        ("2**70", None),
        ("nan", None),
        ("inf", None),
        ("0x10", None),
    ],
)
def test_parse_number_against_python(text, expected):
    assert parse_number(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_number_round_trips_python_floats(x):
    assert parse_number(repr(x)) == x
    assert loads(f"v: {x!r}")["v"] == x


def test_duplicate_keys_name_the_key_and_both_lines():
    with pytest.raises(ConfigError) as exc:
        loads("task: a\noptimizer:\n  lr: 0.1\n  lr: 0.2\n", "cfg.yaml")
    assert one_line(exc) == "cfg.yaml:4: optimizer: duplicate key 'lr' (first at line 3)"
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: duplicate key 'x' \(first at line 1\)"):
        loads("{x: 1, x: 2}", "cfg.yaml")
    with pytest.raises(ConfigError, match=r"duplicate key 1"):
        loads("1: a\n01: b\n", "cfg.yaml")  # equal once YAML 1.1 resolves them


def test_merge_keys_are_not_duplicates():
    data = loads("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")
    assert data["d"] == {"x": 3, "y": 2}


def billion_laughs(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"
    for i in range(levels):
        prev, name = names[i], names[i + 1]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_refused_while_composing():
    with pytest.raises(ConfigError) as exc:
        loads(billion_laughs(8), "bomb.yaml")
    assert re.fullmatch(rf"bomb.yaml:\d+: \w: more than {MAX_NODES} values .*", one_line(exc))
    # a few aliases that expand to little stay allowed
    assert len(loads(billion_laughs(2))["c"]) == 9
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(ConfigError, match=f"more than {MAX_ALIASES} aliases"):
        loads(many)


def test_recursive_alias_refused():
    with pytest.raises(ConfigError, match=r"recursive alias \*a"):
        loads("a: &a [1, *a]\n")


@pytest.mark.parametrize("flow", [True, False])
def test_nesting_capped_without_recursion_error(flow):
    if flow:
        text = "a: " + "[" * 400 + "]" * 400
    else:
        text = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5))
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        loads(text)
    assert loads("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) is not None


def test_long_values_and_numbers_refused_naming_the_field():
    with pytest.raises(ConfigError) as exc:
        loads("seed: " + "9" * 5000, "c.yaml")
    assert one_line(exc) == "c.yaml:1: seed: a value of 5000 characters; at most 4096"
    with pytest.raises(ConfigError, match=r"c.yaml:2: optimizer.betas\[1\]: a number of 70"):
        loads("optimizer:\n  betas: [0.9, " + "9" * 70 + "]\n", "c.yaml")


def test_syntax_errors_and_tags_are_one_line_with_the_line():
    with pytest.raises(ConfigError) as exc:
        loads("a: [1, 2\nb: 3\n", "s.yaml")
    assert one_line(exc).startswith("s.yaml:2: invalid YAML: ")
    with pytest.raises(ConfigError) as exc:
        loads("a: 1\nb: !!python/object/apply:os.system ['true']\n", "t.yaml")
    assert one_line(exc).startswith("t.yaml:2: invalid YAML: could not determine a constructor")


def test_only_regular_files_of_bounded_size(tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_file("/dev/zero")
    with pytest.raises(ConfigError, match="is a directory"):
        load_file(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block: refused from stat alone
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_file(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "9" * (2 * 2**20))
    with pytest.raises(ConfigError, match=f"at most {MAX_FILE_BYTES}"):
        load_file(big)
    with pytest.raises(ConfigError, match="No such file"):
        load_file(tmp_path / "missing.yaml")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"a: 1\nb: \x00\n")
    with pytest.raises(ConfigError, match=r"nul.yaml:2: a NUL byte"):
        load_file(nul)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: 1\nb: \xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml:2: not UTF-8"):
        load_file(latin)


def test_load_mapping(tmp_path):
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert load_mapping(empty) == {}
    seq = tmp_path / "s.yaml"
    seq.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        load_mapping(seq)
