"""Packaging: what `pip install .` puts into a fresh virtualenv, and the commands it installs.

The slow test builds a wheel from a copy of the repository (no `build/` left
in the checkout), installs it with constraints.txt into a new virtualenv
(dependencies come from the pip cache after the first run) and runs the four
console scripts from a directory outside the repository.
"""

import ast
import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from quantens import cli

SCRIPTS = {
    "quantens-train": "quantens.cli.train:main",
    "quantens-export": "quantens.cli.export:main",
    "quantens-report": "quantens.cli.report:main",
    "quantens-evaluate": "zoo.evaluate:main",
}


def _setup_keywords() -> dict:
    """The keyword arguments of setup() in setup.py (literals only)."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {}
    for keyword in call.keywords:
        try:
            keywords[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:  # open(...).read(), find_packages(...)
            keywords[keyword.arg] = ast.unparse(keyword.value)
    return keywords


def test_setup_declares_the_four_commands_and_no_top_level_module():
    setup = _setup_keywords()
    scripts = dict(line.replace(" ", "").split("=") for line in
                   setup["entry_points"]["console_scripts"])
    assert scripts == SCRIPTS and set(scripts) == set(cli.CONSOLE_SCRIPTS)
    for target in scripts.values():  # each entry point exists
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert "py_modules" not in setup and "scripts" not in setup
    assert setup["package_data"]["zoo"] == ["weights/*.h5", "weights/*.json"]
    assert setup["license"] == "MIT" and os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert setup["python_requires"] == ">=3.10"
    assert "Programming Language :: Python :: 3.11" in setup["classifiers"]


def test_install_requires_are_ranges_and_constraints_pin_them():
    setup = _setup_keywords()
    with open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8") as f:
        pins = dict(line.strip().split("==") for line in f if "==" in line)
    pinned = {name.lower().replace("_", "-") for name in pins}
    for requirement in setup["install_requires"]:
        assert "==" not in requirement, f"{requirement}: exact pins belong in constraints.txt"
        name = requirement.split(">")[0].split("<")[0].split(";")[0].strip()
        assert name.lower().replace("_", "-") in pinned, f"{name} is not pinned in constraints.txt"
    for name, version in (("tensorboard", "2.21.0"), ("tensorboard-data-server", "0.7.2"),
                          ("Werkzeug", "3.1.9"), ("Markdown", "3.11.3")):
        assert pins[name] == version


def _copy_of_the_repository(destination) -> str:
    """The sources as a checkout has them: no virtualenv, build outputs or results."""
    source = os.path.join(str(destination), "src")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
        ".ruff_cache", "results", "runs", "tensorflow_datasets", "*.log"))
    return source


def _run(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of the repository, built as `pip wheel --no-deps .` builds it."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"),
                  _copy_of_the_repository(tmp)], timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (path,) = (tmp / "dist").glob("quantens-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_the_packages_weights_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_string(archive.read(info).decode())
        top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert top_level == {"quantens", "zoo"}, top_level  # no train.py beside them
    assert "zoo/weights/pretrained.json" in names
    assert any(n.startswith("zoo/weights/") and n.endswith(".weights.h5") for n in names)
    assert any(n.endswith("/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert "MIT" in (metadata.get("License-Expression") or metadata.get("License") or "")
    assert metadata["Requires-Python"] == ">=3.10"
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in metadata.get_all(
        "Classifier")
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("tensorboard") for r in requires)
    assert not [r for r in requires if "==" in r.split(";")[0]], requires  # not the markers
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_its_commands_run_outside_the_repo(
        wheel, tmp_path):
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert created.returncode == 0, created.stderr[-3000:]
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    installed = _run([python, "-m", "pip", "install", "--disable-pip-version-check",
                      "-c", os.path.join(ROOT, "constraints.txt"), str(wheel)], timeout=3600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    outside = tmp_path / "elsewhere"  # not the repository: nothing of it on sys.path
    outside.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="2",
               QUANTENS_HOME=str(tmp_path / "quantens_home"), KERAS_HOME=str(tmp_path / "keras"),
               TFDS_DATA_DIR=str(tmp_path / "tensorflow_datasets"))

    def command(*args, timeout=900):
        return _run([str(bin_dir / args[0]), *args[1:]], timeout=timeout, cwd=outside, env=env)

    def check(result, code=0):
        assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result

    # the installed packages, not the checkout
    where = check(_run([python, "-c", "import quantens, zoo; print(quantens.__file__, zoo.__file__)"],
                       timeout=300, cwd=outside, env=env))
    assert ROOT not in where.stdout and str(venv) in where.stdout
    no_train = _run([python, "-c", "import train"], timeout=300, cwd=outside, env=env)
    assert no_train.returncode != 0 and "ModuleNotFoundError" in no_train.stderr

    help_ = check(command("quantens-train", "--help"))
    assert help_.stdout.startswith("usage: quantens-train ")
    assert "(default: 30)" in help_.stdout and "quantens-export RESULT_DIR" in help_.stdout
    bad = check(command("quantens-train", "--epochs", "0"), code=2)
    assert bad.stderr.startswith("quantens-train: error: --epochs"), bad.stderr

    check(command("quantens-train", "--epochs", "1", "--test-run", "--width", "4",
                  "--result-path", "R"))
    assert (outside / "R" / "ensemble.weights.h5").is_file()
    check(command("quantens-export", "R", "--eval-examples", "8"))
    assert (outside / "R" / "export" / "export.json").is_file()
    check(command("quantens-report", "R"))
    assert (outside / "R" / "report.md").is_file()
    evaluated = check(command("quantens-evaluate", "digits_resnet_e", "digits"))
    assert "matches the registry" in evaluated.stdout

    missing = check(command("quantens-export", "/nonexistent"), code=2)
    assert missing.stderr.startswith("quantens-export: error: "), missing.stderr
    missing = check(command("quantens-report", "/nonexistent"), code=2)
    assert missing.stderr.startswith("quantens-report: error: "), missing.stderr
    for script in ("quantens-export", "quantens-report", "quantens-evaluate"):
        usage = check(command(script, "--help"))
        assert f"usage: {script} " in usage.stdout, usage.stdout
