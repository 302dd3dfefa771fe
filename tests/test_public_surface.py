"""The public surface of `quantens` and `zoo`: what a module offers, it says; what it keeps, it keeps.

- every public module (no part of its name starts with `_`) has an `__all__`
  naming things it has, and every public function and class it defines;
- no module imports another module's private name (`from a import _x`,
  `a._x`, `getattr(a, "_x")`), read with `ast` over quantens/, zoo/ and
  train.py; a package's own private submodules (`pkg/_helpers.py`) are open
  to the modules of that package;
- every public class of the library is reachable as `quantens.X` (the
  exceptions are named below, each with its reason);
- the layer kinds' public names derive from their classes: every switchable
  kernel class `quantens.layers` defines is in its `__all__`, is
  `quantens.<Name>` and has a registry row, and the registry holds no other of
  quantens' classes; `import quantens` still loads no TensorFlow.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("quantens", "zoo")
SCRIPTS = ("train.py",)

CLASS_EXCEPTIONS = {
    "quantens.cli": (None, "the command-line layer's argparse plumbing, not the library's API"),
    "quantens.argparsing": (None, "command-line plumbing (`OneLineParser`) that `quantens.cli` "
                            "and `python -m zoo.evaluate` share; it is in the library only "
                            "because the zoo may not import the command line"),
    "quantens.export": (None, "the exporter's graph steps, emitters and runners are reached "
                        "through the `quantens.export` package and its modules "
                        "(`quantens.export.export_ensemble`, `quantens.export.steps.ConvStep`): "
                        "the top level stays the API of building and training ensembles"),
    "quantens.larq_hooks": (None, "larq's private layer internals behind public names (the "
                            "`KernelWrapping` mixin of `quantens.layers`): plumbing, not the "
                            "library's API; a new layer kind reaches it through "
                            "`quantens.SwitchableKernelLayer`"),
}
"""Module prefix -> (the namespace its public classes must be reachable from instead of
`quantens`, None: no check; why)."""


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """{module name: file} of every module of the project's packages and scripts
    (found with pkgutil on the file system, nothing imported)."""
    found = {}

    def walk(package: str, directory: pathlib.Path) -> None:
        found[package] = directory / "__init__.py"
        for info in pkgutil.iter_modules([str(directory)]):
            name = f"{package}.{info.name}"
            if info.ispkg:
                walk(name, directory / info.name)
            else:
                found[name] = directory / f"{info.name}.py"

    for package in PACKAGES:
        if (root / package / "__init__.py").is_file():
            walk(package, root / package)
    for script in SCRIPTS:
        if (root / script).is_file():
            found[script[:-3]] = root / script
    return found


def public_modules(root: pathlib.Path = ROOT) -> list[str]:
    return sorted(name for name in module_files(root)
                  if name.split(".")[0] in PACKAGES
                  and not any(part.startswith("_") for part in name.split(".")))


# ------------------------------------------------------------------- __all__


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_lists_its_public_api_in_all(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    listed = list(module.__all__)
    assert len(listed) == len(set(listed)), f"{name}.__all__ repeats a name"
    missing = [n for n in listed if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    unlisted = sorted(
        n for n, value in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == name and n not in listed
    )
    assert not unlisted, (f"{name} defines public {unlisted} but its __all__ leaves them out "
                          "(list them, or give them a leading underscore)")


# ------------------------------------------------------- private names, by ast


def _module_name(path: pathlib.Path, files: dict[str, pathlib.Path]) -> str:
    return next(name for name, file in files.items() if file == path)


def _is_package(name: str, files: dict[str, pathlib.Path]) -> bool:
    return files[name].name == "__init__.py" and name.split(".")[0] in PACKAGES


def _may_use(importer: str, target: str, attribute: str, files) -> bool:
    """Whether module `importer` may use `target.attribute` (a private name)."""
    if target == importer:
        return True  # a module's own private names
    if f"{target}.{attribute}" in files and _is_package(target, files):
        # a package's private submodule: open to the modules inside that package
        return importer == target or importer.startswith(target + ".")
    return False


def _absolute(node: ast.ImportFrom, importer: str, files) -> str | None:
    """The module a `from ... import` statement reads, resolving relative imports."""
    if node.level == 0:
        return node.module
    package = importer if _is_package(importer, files) else importer.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _resolve(node: ast.AST, modules: dict[str, str], files) -> str | None:
    """The project module an expression names (`zoo`, `quantens.export.graph`), else None;
    `modules`: the names a file binds to project modules."""
    if isinstance(node, ast.Name):
        return modules.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, modules, files)
        if base is not None and f"{base}.{node.attr}" in files:
            return f"{base}.{node.attr}"
    return None


def private_uses(root: pathlib.Path = ROOT) -> list[str]:
    """`file:line uses module._name` for each private name one module takes from another."""
    files = module_files(root)
    found = []
    for path in sorted(set(files.values())):
        importer = _module_name(path, files)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules: dict[str, str] = {}  # local name -> project module it is bound to
        uses: list[tuple[int, str, str]] = []  # (line, module, name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in files:
                        continue
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
                    parent, _, last = alias.name.rpartition(".")
                    if parent and _is_private(last):
                        uses.append((node.lineno, parent, last))
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, importer, files)
                if source not in files:
                    continue
                for alias in node.names:
                    if _is_private(alias.name):
                        uses.append((node.lineno, source, alias.name))
                    if f"{source}.{alias.name}" in files:
                        modules[alias.asname or alias.name] = f"{source}.{alias.name}"

        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                target = _resolve(node.value, modules, files)
                if target is not None:
                    uses.append((node.lineno, target, node.attr))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and _is_private(node.args[1].value)):
                target = _resolve(node.args[0], modules, files)
                if target is not None:
                    uses.append((node.lineno, target, node.args[1].value))
        relative = path.relative_to(root).as_posix()
        found += [f"{relative}:{line} uses {module}.{name}"
                  for line, module, name in sorted(set(uses))
                  if not _may_use(importer, module, name, files)]
    return found


def test_no_module_uses_another_modules_private_names():
    found = private_uses()
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _plant(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for relative, source in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


@pytest.mark.parametrize("source, used", [
    ("from quantens.bits import _check\n", "quantens.bits._check"),
    ("def f():\n    from quantens.bits import _check\n", "quantens.bits._check"),
    ("from .bits import _check as check\n", "quantens.bits._check"),
    ("from quantens import bits\nbits._check(1)\n", "quantens.bits._check"),
    ("import quantens.bits as b\nb._check(1)\n", "quantens.bits._check"),
    ("import quantens.bits\nquantens.bits._check(1)\n", "quantens.bits._check"),
    ("import quantens\nquantens._LAZY\n", "quantens._LAZY"),
    ("import zoo\nzoo._MODELS.clear()\n", "zoo._MODELS"),
    ("import quantens.bits\ngetattr(quantens.bits, '_check')\n", "quantens.bits._check"),
    ("from quantens.pkg import _helpers\n", "quantens.pkg._helpers"),  # not its package
])
def test_the_private_name_check_catches_each_form(tmp_path, source, used):
    root = _plant(tmp_path, {"quantens/bits.py": "def _check(b):\n    return b\n",
                             "quantens/pkg/__init__.py": "", "quantens/pkg/_helpers.py": "",
                             "quantens/planted.py": source})
    found = private_uses(root)
    assert len(found) == 1 and found[0].startswith("quantens/planted.py:"), found
    assert found[0].endswith(f"uses {used}")


@pytest.mark.parametrize("path, source", [
    ("quantens/bits.py", "def _check(b):\n    return b\n_check(1)\n"),  # its own
    ("quantens/planted.py", "import quantens\nprint(quantens.__version__)\n"),  # a dunder
    ("quantens/planted.py", "from quantens.bits import check\n"),
    ("quantens/planted.py", "import numpy as np\nnp._NoValue\n"),  # not the project's
    ("quantens/planted.py", "class A:\n    _x = 1\n\nA._x\n"),  # not a module
    ("quantens/pkg/user.py", "from quantens.pkg import _helpers\n"),  # its package's
    ("quantens/pkg/user.py", "from . import _helpers\n"),
])
def test_the_private_name_check_allows_what_is_not_across_modules(tmp_path, path, source):
    root = _plant(tmp_path, {"quantens/bits.py": "def _check(b):\n    return b\n",
                             "quantens/pkg/__init__.py": "", "quantens/pkg/_helpers.py": "",
                             path: source})
    assert private_uses(root) == []


# ----------------------------------------------------------- the top level


def _exception(name: str):
    return next((value for prefix, value in CLASS_EXCEPTIONS.items()
                 if name == prefix or name.startswith(prefix + ".")), None)


def library_classes() -> list[tuple[str, str]]:
    """(module, class name) of each public class a public module of quantens defines."""
    found = []
    for name in public_modules():
        if not name.startswith("quantens"):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as error:  # reported by the __all__ test of that module
            found.append((name, f"<cannot import: {error}>"))
            continue
        found += [(name, n) for n, value in vars(module).items()
                  if not n.startswith("_") and inspect.isclass(value)
                  and value.__module__ == name]
    return sorted(found)


def test_every_public_class_of_the_library_is_reachable_from_quantens():
    import quantens

    unreachable = []
    for module, name in library_classes():
        if name.startswith("<"):
            unreachable.append(f"{module} {name}")
            continue
        cls = getattr(importlib.import_module(module), name)
        exception = _exception(module)
        namespace = "quantens" if exception is None else exception[0]
        if namespace is None:
            continue
        if getattr(importlib.import_module(namespace), name, None) is not cls:
            unreachable.append(f"{module}.{name} (not {namespace}.{name})")
    assert not unreachable, "public classes not reachable:\n" + "\n".join(unreachable)
    assert {"QuantDepthwiseConv2D", "QuantSeparableConv2D", "NarrowRangeWeights",
            "Distillation"} <= set(quantens.__all__)


def test_the_top_level_all_is_what_quantens_offers():
    import quantens

    assert sorted(quantens.__all__) == sorted(set(quantens.__all__))
    assert set(quantens.__all__) <= set(dir(quantens))
    for name in quantens.__all__:
        assert getattr(quantens, name) is not None


# ------------------------------------------------------------ the layer kinds

EXISTING_KINDS = ("QuantConv1D", "QuantConv2D", "QuantDense", "QuantDepthwiseConv2D",
                  "QuantSeparableConv2D")
"""Layer kinds users already import by name: they keep `quantens.<Name>`."""


def test_layer_kinds_are_public_where_their_names_derive_from():
    import quantens
    from quantens import layers, registry

    kinds = {name for name in layers.__all__
             if issubclass(getattr(layers, name), layers.SwitchableKernelLayer)
             and getattr(layers, name) is not layers.SwitchableKernelLayer}
    defined = {name for name, value in vars(layers).items()
               if inspect.isclass(value) and value.__module__ == layers.__name__
               and issubclass(value, layers.SwitchableKernelLayer)
               and value is not layers.SwitchableKernelLayer}
    assert kinds == defined, "quantens.layers.__all__ is not its switchable kernel classes"
    assert set(EXISTING_KINDS) <= kinds
    registered = {entry.switchable_class for entry in registry.registered_layers()
                  if entry.switchable_class.__module__.startswith("quantens.")}
    assert registered == {getattr(layers, name) for name in kinds}, \
        "a switchable class of quantens.layers without a registry row, or the reverse"
    for name in kinds:
        assert getattr(quantens, name) is getattr(layers, name), name
        assert name in quantens.__all__ and name in dir(quantens), name
    star: dict = {}
    exec("from quantens import *", star)
    assert star["QuantConv1D"] is layers.QuantConv1D and "SwitchableKernelLayer" in star


def test_import_quantens_loads_tensorflow_only_when_a_lazy_name_is_asked():
    code = (
        "import sys, quantens\n"
        "from quantens import defaults, errors, bits  # submodules: no TensorFlow\n"
        "assert not hasattr(quantens, '_private') and not hasattr(quantens, '__wrapped__')\n"
        "print('tensorflow' in sys.modules)\n"
        "from quantens import QuantConv2D\n"
        "print('tensorflow' in sys.modules, QuantConv2D.__module__)\n"
        "print(hasattr(quantens, 'NoSuchLayer'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["False", "True quantens.layers", "False"]
