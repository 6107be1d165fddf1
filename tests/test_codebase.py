"""The library's structure, read from its source with ``ast`` (nothing is imported or run):

* the import graph of ``jaxgan/`` has no cycle, counting every import, at module level or inside a function (a
  function-level import hides a cycle from the interpreter, not from the reader);
* no module of ``jaxgan/`` imports or reads a private name (``_x``) of another;
* no function of ``jaxgan/`` is longer than ``MAX_FUNCTION_LINES``, except the explicit allowance below;
* no library docstring quotes a measured figure (those belong in docs/performance.md).
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "jaxgan"
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES, by "path:qualified name", each a debt with an owner (none now).
LONG_FUNCTION_ALLOWANCE: set[str] = set()
# measured figures: a speed-up ("1.19x", "1.6-3x", "3x faster"), a rate ("120 steps/s", "4-5 GFLOP/s"), a duration
# ("42 ms", "1.5 s/step"); a factor that is a convention ("2x upsampling", "2x - 1", "4x4") is not one
_NUMBER = r"\d+(?:\.\d+)?"
MEASURED_FIGURE = re.compile(
    rf"(?<![\w.])(?:\d+\.\d+x|{_NUMBER}-{_NUMBER}x|\d+x(?=\s+(?:faster|slower|speed)))(?![\w.])"
    rf"|(?<![\w.]){_NUMBER}\s?(?:steps/s|img/s|images/s|samples/s|GFLOP/s|ms|us|µs|s/step)(?![\w/])")


def module_files(root: pathlib.Path = REPO, package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """{dotted module name: source file} for every module of ``package``; a package's ``__init__.py`` is
    the package's own name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(module: str, modules: dict[str, pathlib.Path]) -> bool:
    return modules[module].name == "__init__.py"


def _known(name: str, modules) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package (``jaxgan.models.resnet.X`` ->
    ``jaxgan.models.resnet``), or None outside the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _from_base(node: ast.ImportFrom, module: str, modules) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if _is_package(module, modules) else module.split(".")[:-1]
    anchor = anchor[:len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_names(tree: ast.AST, module: str, modules) -> list[tuple[ast.AST, str, str | None, str, str | None]]:
    """Every import of a package module in ``tree``, at any depth: (node, target module, name read from it or
    None, local name bound, the module that name is bound to or None). ``from jaxgan import x`` and
    ``from jaxgan.models import layers`` target the submodule when there is one; ``from jaxgan.models import
    build_models`` targets the package; ``import jaxgan.a.b`` targets ``jaxgan.a.b`` and binds ``jaxgan``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target and alias.asname:
                    found.append((node, target, None, alias.asname, target))
                elif target:
                    top = alias.name.split(".")[0]
                    found.append((node, target, None, top, top if top in modules else None))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, modules)
            if base not in modules:
                continue
            for alias in node.names:
                sub, bound = f"{base}.{alias.name}", alias.asname or alias.name
                if sub in modules:
                    found.append((node, sub, None, bound, sub))
                else:
                    found.append((node, base, alias.name, bound, None))
    return found


def import_graph(root: pathlib.Path = REPO, package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its source} (self-imports left out)."""
    modules = module_files(root, package)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {target for _, target, *_ in imported_names(tree, module, modules) if target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic (iterative depth-first search)."""
    state = {}  # absent: unvisited, 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(expr: ast.AST, aliases: dict[str, str], modules) -> str | None:
    """The package module that expression ``expr`` names (``layers``, ``jaxgan.models.layers``), or None."""
    if isinstance(expr, ast.Name):
        return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, aliases, modules)
        if base and f"{base}.{expr.attr}" in modules:
            return f"{base}.{expr.attr}"
    return None


def private_uses(root: pathlib.Path = REPO, package: str = PACKAGE) -> list[str]:
    """``path:line: module._name`` for each private name of one package module that another imports
    (``from jaxgan.x import _y``, ``import jaxgan._x``) or reads (``x._y``, ``getattr(x, "_y")``)."""
    modules = module_files(root, package)
    uses = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {}
        where = path.relative_to(root)
        for node, target, name, bound, bound_to in imported_names(tree, module, modules):
            if bound_to:
                aliases[bound] = bound_to
            if name is not None and _is_private(name) and target != module:
                uses.append(f"{where}:{node.lineno}: {target}.{name}")
            parent, _, leaf = target.rpartition(".")
            if _is_private(leaf) and module != parent and not module.startswith(parent + "."):
                uses.append(f"{where}:{node.lineno}: {target}")  # a private submodule is private to its package
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner, attr = _resolve(node.value, aliases, modules), node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                owner, attr = _resolve(node.args[0], aliases, modules), node.args[1].value
            else:
                continue
            if owner and owner != module and _is_private(attr) and f"{owner}.{attr}" not in modules:
                uses.append(f"{where}:{node.lineno}: {owner}.{attr}")
    return uses


def function_lengths(root: pathlib.Path = REPO, package: str = PACKAGE) -> list[tuple[int, str]]:
    """(lines from ``def`` to the function's last line, "path:qualified name") for every function and method,
    nested ones included, longest first."""
    lengths = []

    def visit(node: ast.AST, prefix: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lengths.append((child.end_lineno - child.lineno + 1, f"{where}:{name}"))
                visit(child, f"{name}.", where)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", where)
            else:
                visit(child, prefix, where)

    for path in module_files(root, package).values():
        visit(ast.parse(path.read_text(), filename=str(path)), "", str(path.relative_to(root)))
    return sorted(lengths, key=lambda item: (-item[0], item[1]))


def docstring_figures(root: pathlib.Path = REPO, package: str = PACKAGE) -> list[str]:
    """``path:line: figure`` for each measured figure quoted in a module, class or function docstring (a figure
    may run over a line break)."""
    found = []
    for path in module_files(root, package).values():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[0] if node.body else None
            if not (isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant)
                    and isinstance(body.value.value, str)):
                continue
            text = body.value.value
            flat = re.sub(r"\s", " ", text)  # same offsets as ``text``
            for m in MEASURED_FIGURE.finditer(flat):
                line = body.value.lineno + text.count("\n", 0, m.start())
                found.append(f"{path.relative_to(root)}:{line}: {m.group()}")
    return found


# --- the checks' own parsers, on a small package written for the purpose ---


def _write_package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_import_graph_counts_every_import(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "from pkg import a as _a\n",
        "a.py": "import os\n\ndef f():\n    from pkg.sub import c\n    from pkg import b\n",
        "b.py": "from . import sub\nfrom .sub.c import X\n",
        "sub/__init__.py": "from pkg.sub import helper\n",
        "sub/c.py": "def g():\n    import pkg.a\n",
        "sub/helper.py": "from . import c\nfrom pkg.sub.c import Y\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.c", "pkg.b"}, "pkg.b": {"pkg.sub", "pkg.sub.c"},
                     "pkg.sub": {"pkg.sub.helper"}, "pkg.sub.c": {"pkg.a"}, "pkg.sub.helper": {"pkg.sub.c"}}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and all(b in graph[a] for a, b in zip(cycle, cycle[1:])), cycle
    assert "pkg.sub.c" in cycle and "pkg.a" in cycle
    graph["pkg.sub.c"].remove("pkg.a")  # the lazy import was the only way back
    assert find_cycle(graph) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_private_use_parser(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "_HIDDEN = 1\nPUBLIC = 2\n\ndef _helper():\n    return _HIDDEN\n",
        "b.py": ("import pkg.a\nfrom pkg import a as alias\nfrom pkg.a import PUBLIC, _helper\n\n"
                 "def f():\n    return pkg.a._HIDDEN + alias._HIDDEN + getattr(alias, '_HIDDEN') + alias.__name__\n"),
        "c.py": "from pkg import _private\n",
        "_private.py": "",
        "sub/__init__.py": "from pkg.sub import _impl\nfrom . import _impl as again\n",
        "sub/_impl.py": "",
        "sub/user.py": "from pkg.sub._impl import *\n",
        "d.py": "from pkg.sub import _impl\nfrom pkg.sub._impl import thing\n",
    })
    assert sorted(private_uses(root, "pkg")) == sorted([
        "pkg/b.py:3: pkg.a._helper", "pkg/b.py:6: pkg.a._HIDDEN", "pkg/b.py:6: pkg.a._HIDDEN",
        "pkg/b.py:6: pkg.a._HIDDEN", "pkg/d.py:1: pkg.sub._impl",
        "pkg/d.py:2: pkg.sub._impl"])


def test_function_lengths_parser(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": ("class K:\n    def m(self):\n        def inner():\n            pass\n        return 1\n\n\n"
                 "def f(): pass\n"),
    })
    assert function_lengths(root, "pkg") == [(4, "pkg/a.py:K.m"), (2, "pkg/a.py:K.m.inner"), (1, "pkg/a.py:f")]


def test_measured_figure_pattern():
    text = ("1.19x faster, 1.6-3x, 3x slower, 120 steps/s, 4-5 GFLOP/s, 42 ms, 0.8 s/step, 3.5 img/s; but 2x "
            "upsampling, 2x - 1, 4x4 kernels, 64x64x3, a 2 x 2 grid, the steps/s column, 10 msgs, v1.2x")
    assert [m.group() for m in MEASURED_FIGURE.finditer(text)] == [
        "1.19x", "1.6-3x", "3x", "120 steps/s", "5 GFLOP/s", "42 ms", "0.8 s/step", "3.5 img/s"]


# --- the checks on jaxgan/ ---


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_crosses_modules():
    uses = private_uses()
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def test_no_long_functions():
    lengths = function_lengths()
    print("longest functions:\n" + "\n".join(f"{n:4d}  {name}" for n, name in lengths[:10]))
    long = [f"{n:4d}  {name}" for n, name in lengths if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTION_ALLOWANCE]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_long_function_allowance_is_current():
    """An allowance outlives its function only by mistake: each entry still names a long function."""
    lengths = dict((name, n) for n, name in function_lengths())
    stale = [name for name in LONG_FUNCTION_ALLOWANCE if lengths.get(name, 0) <= MAX_FUNCTION_LINES]
    if stale:
        pytest.fail("LONG_FUNCTION_ALLOWANCE names functions that are gone or short now: " + ", ".join(stale))


def test_docstrings_quote_no_measured_figures():
    figures = docstring_figures()
    assert not figures, "measured figures in docstrings (move them to docs/performance.md):\n" + "\n".join(figures)
