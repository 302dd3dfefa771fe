"""Imports of `quantens` and `zoo`: no cycle, module-level and function-level imports alike;
larq's private internals only through `quantens.larq_hooks`.

The export package is built in one direction: shared helpers, the steps, the
graph and its builder, then one emitter per format, then the file writers.
A function-level import back up that chain (graph -> int8, graph -> lce) is a
cycle that Python only tolerates because it is deferred; this test finds them
by parsing the sources with `ast`, so nothing is imported to check it.

larq's private names (its internal modules `larq.layers_base` and
`larq.quantized_variable`, the `_get_quantizer` and
`_add_variable_with_custom_getter` hooks) appear in `quantens/larq_hooks.py`
only, which says for each why no public path serves; found with `ast` too.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "quantens.export"
EXPORT_DIR = ROOT / "quantens" / "export"


def _module_name(path: pathlib.Path, directory: pathlib.Path = EXPORT_DIR,
                 package: str = PACKAGE) -> str:
    parts = [*package.split("."), *path.relative_to(directory).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path, modules: set[str], name: str) -> set[str]:
    """The modules of `modules` that `path` (module `name`) imports anywhere (any depth,
    any function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .graph import y
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from quantens.export import int8` imports the submodule int8;
            # `from quantens.export import export_ensemble`, the package itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        # (a submodule's parent package is already being imported when the
        # submodule runs: only naming the package itself is an edge to it)
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(directory: pathlib.Path = EXPORT_DIR, package: str = PACKAGE,
                 recursive: bool = False) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (its subpackages too if `recursive`)."""
    paths = sorted(directory.rglob("*.py") if recursive else directory.glob("*.py"))
    names = {p: _module_name(p, directory, package) for p in paths}
    modules = set(names.values())
    return {names[p]: _imported_modules(p, modules, names[p]) for p in paths}


def project_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """The import graph of `quantens` and `zoo` together (edges between them included)."""
    graphs = [import_graph(root / name, name, recursive=True) for name in ("quantens", "zoo")]
    modules = set().union(*graphs)
    paths = {**{p: _module_name(p, root / "quantens", "quantens")
                for p in (root / "quantens").rglob("*.py")},
             **{p: _module_name(p, root / "zoo", "zoo") for p in (root / "zoo").rglob("*.py")}}
    return {name: _imported_modules(p, modules, name) for p, name in sorted(paths.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    (tmp_path / "__init__.py").write_text("from quantens.export.a import f\n")
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (tmp_path / "b.py").write_text("def g():\n    from quantens.export.a import f\n")
    graph = import_graph(tmp_path)
    assert graph["quantens.export"] == {"quantens.export.a"}
    assert graph["quantens.export.a"] == {"quantens.export.b"}
    assert find_cycle(graph) is not None
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "b.py").write_text("X = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_no_import_cycle_inside_the_export_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_anywhere_in_quantens_or_zoo():
    graph = project_graph()
    assert {"quantens.ensemble", "quantens.distillation", "quantens.cli.train",
            "zoo.applications"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_project_cycle_finder_sees_a_planted_circle_between_packages(tmp_path):
    for package in ("quantens", "zoo"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "quantens" / "sub").mkdir()
    (tmp_path / "quantens" / "sub" / "__init__.py").write_text("")
    (tmp_path / "quantens" / "sub" / "a.py").write_text("def f():\n    from zoo.b import g\n")
    (tmp_path / "zoo" / "b.py").write_text("from quantens.sub.a import f\n")
    graph = project_graph(tmp_path)
    assert graph["quantens.sub.a"] == {"zoo.b"} and graph["zoo.b"] == {"quantens.sub.a"}
    assert find_cycle(graph) is not None
    (tmp_path / "zoo" / "b.py").write_text("X = 1\n")
    assert find_cycle(project_graph(tmp_path)) is None


# ------------------------------------------------------- larq's private names

LARQ_HOOKS = "quantens/larq_hooks.py"
LARQ_PRIVATE_MODULES = ("larq.layers_base", "larq.quantized_variable")
LARQ_PRIVATE_ATTRIBUTES = ("_get_quantizer", "_add_variable_with_custom_getter")



def larq_private_uses(root: pathlib.Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, private name) of each use of larq's private names under quantens/,
    `quantens/larq_hooks.py` left out: imports, attributes (`lq.layers_base.X`,
    `self._get_quantizer`), method definitions that override a private hook, and
    the internal modules' names as strings (a logger's name)."""
    modules = {name.rpartition(".")[2] for name in LARQ_PRIVATE_MODULES}
    found = []
    for path in sorted((root / "quantens").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative == LARQ_HOOKS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Attribute):
                if node.attr in LARQ_PRIVATE_ATTRIBUTES:
                    found.append((relative, node.lineno, node.attr))
                elif node.attr in modules:
                    found.append((relative, node.lineno, f"larq.{node.attr}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name in LARQ_PRIVATE_ATTRIBUTES:
                found.append((relative, node.lineno, node.name))
            elif isinstance(node, ast.Constant) and node.value in LARQ_PRIVATE_MODULES:
                found.append((relative, node.lineno, node.value))
            found += [(relative, node.lineno, module) for module in LARQ_PRIVATE_MODULES
                      if any(name == module or name.startswith(module + ".")
                             for name in names)]
    return found


def test_larqs_private_names_are_used_in_larq_hooks_only():
    found = sorted({f"{file}:{line} uses {name}" for file, line, name in larq_private_uses()})
    assert not found, ("larq's private names outside quantens/larq_hooks.py (give them a "
                       "public name there, with why):\n" + "\n".join(found))
    hooks = (ROOT / LARQ_HOOKS).read_text()
    assert all(name in hooks for name in (*LARQ_PRIVATE_MODULES, *LARQ_PRIVATE_ATTRIBUTES))


def test_the_larq_check_catches_each_form(tmp_path):
    sources = {
        "a.py": "from larq.layers_base import BaseLayer\n",
        "b.py": "import larq.quantized_variable\n",
        "c.py": "import larq as lq\nX = lq.layers_base.BaseLayer\n",
        "d.py": "def f(layer):\n    return layer._get_quantizer('kernel')\n",
        "e.py": "class L:\n    def _add_variable_with_custom_getter(self, name):\n"
                "        pass\n",
        "f.py": "import logging\nlogging.getLogger('larq.layers_base')\n",
    }
    (tmp_path / "quantens").mkdir()
    for name, source in sources.items():
        (tmp_path / "quantens" / name).write_text(source)
    (tmp_path / "quantens" / "larq_hooks.py").write_text(sources["a.py"] + sources["d.py"])
    (tmp_path / "quantens" / "fine.py").write_text(
        "import larq as lq\nfrom quantens import larq_hooks\n"
        "x = lq.layers.QuantDense(2)\nlarq_hooks.is_larq_layer(x)\n"
        "NOTE = 'larq.layers_base, in prose'\n")
    found = larq_private_uses(tmp_path)
    assert sorted({file for file, _, _ in found}) == [f"quantens/{n}" for n in sorted(sources)]
    assert ("quantens/d.py", 2, "_get_quantizer") in found
