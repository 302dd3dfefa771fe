"""train.py's typed run description (quantens.cli.description) and the library's run (quantens.run).

The steps of `quantens.cli.train` take a `RunDescription`, not the parsed
Namespace; the settings' defaults are the flags'; the KD warm-up is checked in
one place; and docs/converting.md's Python block reproduces `train.py --model
cnn.keras --epochs 1 --bit-widths 32 4 1`'s first epoch through the library alone.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from quantens import cli, run
from quantens.cli import description
from quantens.cli import train as train_cli
from quantens.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# the entry points that turn flags into a description (or copy flags for two stages)
NAMESPACE_FUNCTIONS = {"run", "two_stage", "_main", "main"}


def test_describe_puts_each_flag_in_its_concern(tmp_path):
    args = cli.parse_args([
        "--bit-widths", "32", "4", "1", "--target-bits", "4", "--epochs", "3", "--lr", "0.01",
        "--optimizer", "sgd", "--kd-mode", "progressive", "--kd-warmup-epochs", "1",
        "--kd-weights", "1:2", "--member-loss-weights", "4:0.5", "--batch-size", "16",
        "--augmentation", "low", "--test-run", "--seed", "3", "--calibration", "percentile",
        "--result-path", str(tmp_path / "r"), "--no-tensorboard", "--mode", "imperative",
    ])
    d = description.describe(args)
    assert d.ensemble == run.EnsembleSettings(
        bit_widths=(32, 4, 1), target_bits=4, member_loss_weights={4: 0.5},
        calibration="percentile")
    assert (d.schedule.epochs, d.schedule.lr, d.schedule.optimizer) == (3, 0.01, "sgd")
    assert d.schedule.run_eagerly and not d.schedule.jit_compile
    assert d.distillation.mode == "progressive" and d.distillation.warmup_epochs == 1
    assert d.distillation.student_weights == {1: 2.0}
    assert (d.data.batch_size, d.data.augmentation, d.data.take_batches, d.data.seed) == (
        16, "low", 1, 3)
    assert d.output.result_path == str(tmp_path / "r") and not d.output.tensorboard
    assert d.export.max_val_examples == 16 and d.runtime.seed == 3
    assert d.flags == vars(args)  # config.json records every flag
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.schedule.epochs = 4


def test_the_library_settings_default_to_the_flags_defaults(tmp_path):
    d = description.describe(cli.parse_args(["--result-path", str(tmp_path / "r")]))
    assert d.data == run.DataSettings()
    assert d.schedule == dataclasses.replace(run.ScheduleSettings(), lr_steps=d.schedule.lr_steps)
    assert dataclasses.replace(d.ensemble, target_bits=None) == run.EnsembleSettings()
    assert dataclasses.replace(d.distillation, mode="simple") == run.DistillationSettings()


def _namespace_readers(tree: ast.Module) -> dict[str, list[int]]:
    """{function: [lines]} of the functions that take or read a name `args`."""
    readers: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = [a.lineno for a in node.args.args + node.args.kwonlyargs if a.arg == "args"]
            lines += [n.lineno for n in ast.walk(node)
                      if isinstance(n, ast.Name) and n.id == "args"]
            if lines:
                readers[node.name] = lines
    return readers


def test_train_py_steps_take_the_run_description_not_the_namespace():
    tree = ast.parse(inspect.getsource(train_cli))
    readers = _namespace_readers(tree)
    assert set(readers) <= NAMESPACE_FUNCTIONS, {
        name: lines for name, lines in readers.items() if name not in NAMESPACE_FUNCTIONS}
    # and the check sees a step that still reads the Namespace
    planted = ast.parse("def _fit(d, args):\n    return args.epochs\n")
    assert set(_namespace_readers(planted)) == {"_fit"}
    steps = [name for name, f in inspect.getmembers(train_cli, inspect.isfunction)
             if f.__module__ == train_cli.__name__ and name.startswith("_")
             and "d" in inspect.signature(f).parameters]
    assert {"_run", "_build_model", "_build_data", "_build_ensemble", "_fit", "_export",
            "_report", "_callbacks", "_final_metrics", "_prepare_result_dir"} <= set(steps)


def test_the_kd_warmup_is_checked_in_one_place():
    settings = run.DistillationSettings(warmup_epochs=1.6)
    with pytest.raises(ConfigError, match="covers all 2 training steps"):
        run.kd_warmup_steps(settings, epochs=2, steps_per_epoch=1)
    assert run.kd_warmup_steps(settings, epochs=2, steps_per_epoch=10) == 16
    assert run.kd_warmup_steps(settings, epochs=2, steps_per_epoch=None) is None
    with pytest.raises(ConfigError, match="covers all 2 training epochs"):
        run.kd_warmup_steps(run.DistillationSettings(warmup_epochs=2), 2, None)
    # the command line has no check of its own: it calls this function
    for module in ("validation.py", "train.py"):
        source = (ROOT / "quantens" / "cli" / module).read_text(encoding="utf-8")
        assert "kd_warmup_steps(" in source and "warmup_epochs * " not in source


def _python_run_block() -> str:
    page = (ROOT / "docs" / "converting.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
    (block,) = [b for b in blocks if "run.load_datasets" in b]
    return block


@pytest.mark.slow
def test_the_docs_python_run_reproduces_train_py_first_epoch(tmp_path, monkeypatch, tfds_dir,
                                                             capsys):
    from tensorflow_datasets.core import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    monkeypatch.setattr(constants, "DATA_DIR", tfds_dir)  # read once, at import
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(_python_run_block(), "docs/converting.md", "exec"), namespace)
    python = {key: values[-1] for key, values in namespace["history"].history.items()}

    assert train_cli.main(["--model", "cnn.keras", "--epochs", "1", "--bit-widths", "32", "4",
                           "1", "--result-path", str(tmp_path / "r")]) == 0
    with open(tmp_path / "r" / "history.csv", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    compared = sorted(set(python) & set(row))
    assert {"loss", "accuracy_1", "val_accuracy_1", "val_loss"} <= set(compared), compared
    for key in compared:
        assert float(row[key]) == pytest.approx(python[key], abs=1e-5), key
    assert os.path.isfile(tmp_path / "r" / "config.json")
    capsys.readouterr()
