"""Arrows point down: lrpilot's import graph has no cycle, between modules or between
packages, including the imports done inside functions (a lazy import hides a cycle from
the interpreter, not from this graph); and the size limits of modules and functions.

The graph is read from the source with ``ast``: ``import`` and ``from ... import``
statements anywhere in a module (module level, in functions, in ``try`` blocks),
``importlib.import_module("lrpilot...")`` with a constant name, and the top-level
package's lazy-name table. Imports under ``if TYPE_CHECKING:`` are left out: they never
run, and an annotation naming a class from a module above is not a dependency.
"""

from __future__ import annotations

import ast
import functools
import io
import tokenize
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

#: (importing module, imported package) -> why the arrow is allowed to point up
ALLOWED_UP: dict[tuple[str, str], str] = {
    ("lrpilot.search._child", "lrpilot.cli"): (
        "the body of a trial's child process: it runs the `lrpilot fit` command line, the "
        "fork server's stand-in for `python -m lrpilot.cli fit` (search.runner.fit_argv)"
    ),
}

#: modules over MAX_MODULE_LINES lines -> why
LONG_MODULES: dict[str, str] = {}
#: "module:function" over MAX_FUNCTION_LINES code lines -> why
LONG_FUNCTIONS: dict[str, str] = {}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, package)
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(name: str, path: Path, package: bool, known: set[str], root: str) -> Iterator[str]:
    """The modules of ``root`` that module ``name`` imports (see the module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = name if package else name.rpartition(".")[0]
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == root)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            arg = node.args[0] if node.args else None
            named = isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == root
            if func == "import_module" and named and isinstance(arg, ast.Constant):
                yield str(arg.value)
        elif isinstance(node, ast.Dict) and name == root:  # the lazy-name table
            for value in node.values:
                if isinstance(value, ast.Constant) and str(value.value).startswith(root + "."):
                    yield str(value.value)


def import_graph(src: Path, root: str = "lrpilot") -> dict[str, set[str]]:
    """Module -> the modules it imports (each one known; an unknown one raises)."""
    mods = modules(src)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in mods.items():
        if name.split(".")[0] != root:
            continue
        targets = set(imports(name, path, package, set(mods), root)) - {name}
        unknown = targets - set(mods)
        assert not unknown, f"{name} imports unknown modules {sorted(unknown)}"
        graph[name] = targets
    return graph


def unit(module: str) -> str:
    """The package a module belongs to: ``lrpilot.train._engine`` -> ``lrpilot.train``; a
    top-level module (``lrpilot.optim``) and the top level (``lrpilot``) are their own."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def package_graph(
    graph: dict[str, set[str]], allowed: dict[tuple[str, str], str]
) -> dict[str, set[str]]:
    """Package -> the packages it imports, without the allowed arrows."""
    out: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if unit(module) != unit(target) and (module, unit(target)) not in allowed:
                out[unit(module)].add(unit(target))
    return dict(out)


@functools.cache
def lrpilot_graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_no_import_cycle_between_modules():
    assert cycles(lrpilot_graph()) == []


def test_no_import_cycle_between_packages():
    graph = lrpilot_graph()
    found = cycles(package_graph(graph, ALLOWED_UP))
    detail = {
        f"{m} -> {t}"
        for comp in found
        for m, targets in graph.items()
        for t in targets
        if unit(m) in comp and unit(t) in comp and unit(m) != unit(t)
    }
    assert found == [], sorted(detail)


def test_every_allowed_arrow_exists():
    graph = lrpilot_graph()
    for module, package in ALLOWED_UP:
        assert any(unit(t) == package for t in graph.get(module, ())), (module, package)


def test_the_checker_finds_a_cycle_hidden_by_a_lazy_import(tmp_path):
    pkg = tmp_path / "demo"
    for sub in ("", "low", "high"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "high" / "api.py").write_text("from demo.low import core\n")
    (pkg / "low" / "core.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from demo.high.api import X\n"
        "def f():\n    return 1\n"
    )
    graph = import_graph(tmp_path, root="demo")
    assert graph["demo.high.api"] == {"demo.low.core"}
    assert cycles(package_graph(graph, {})) == []  # a type-only import is no arrow
    (pkg / "low" / "core.py").write_text("def f():\n    from ..high import api\n")
    graph = import_graph(tmp_path, root="demo")
    assert graph["demo.low.core"] == {"demo.high.api"}
    assert cycles(package_graph(graph, {})) == [["demo.high", "demo.low"]]
    assert cycles(graph) == [["demo.high.api", "demo.low.core"]]
    assert cycles(package_graph(graph, {("demo.low.core", "demo.high"): "why"})) == []
    (pkg / "low" / "core.py").write_text(
        "import importlib\ndef f():\n    return importlib.import_module('demo.high.api')\n"
    )
    assert cycles(import_graph(tmp_path, root="demo")) == [["demo.high.api", "demo.low.core"]]


def code_lines(source: str) -> set[int]:
    """Lines holding a token other than a comment (blank and comment-only lines drop out)."""
    lines: set[int] = set()
    ignored = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (*ignored, tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def function_lengths(path: Path) -> Iterator[tuple[str, int]]:
    """``(name, code lines)`` of every function and method, decorators and signature
    included, the docstring left out."""
    source = path.read_text(encoding="utf-8")
    lines = code_lines(source)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc: set[int] = set()
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            doc = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        span = range(start, (node.end_lineno or node.lineno) + 1)
        yield node.name, sum(1 for n in span if n in lines and n not in doc)


def test_code_lines_count_code_only(tmp_path):
    source = (
        "@decorator\n"
        "def f(x):\n"
        '    """Doc.\n\n    More."""\n'
        "    # a comment\n"
        "\n"
        "    def g():\n"
        "        return (x +\n"
        "                1)\n"
        "    return g\n"
    )
    assert code_lines(source) == {1, 2, 3, 4, 5, 8, 9, 10, 11}
    path = tmp_path / "m.py"
    path.write_text(source)
    # f: decorator, def, g's three lines, return; g: def and the two lines of its return
    assert dict(function_lengths(path)) == {"f": 6, "g": 3}


def test_module_and_function_sizes():
    long_modules = {}
    long_functions = {}
    for name, (path, _) in modules(SRC).items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES and name not in LONG_MODULES:
            long_modules[name] = n
        for function, length in function_lengths(path):
            key = f"{name}:{function}"
            if length > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                long_functions[key] = length
    assert long_modules == {}, f"modules over {MAX_MODULE_LINES} lines"
    assert long_functions == {}, f"functions over {MAX_FUNCTION_LINES} code lines"


def test_every_exception_is_still_needed():
    mods = modules(SRC)
    for name in LONG_MODULES:
        path = mods[name][0]
        assert len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES, name
    for key in LONG_FUNCTIONS:
        name, function = key.split(":")
        lengths = dict(function_lengths(mods[name][0]))
        assert lengths[function] > MAX_FUNCTION_LINES, key
