"""Members chosen by budget (quantens.budget.search_policy) on the trained digits ResNetE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import quantens
from quantens import run
from quantens.bits import policy_layers
from quantens.budget import search_policy
from quantens.errors import UsageError
from quantens.export import member_bytes

pytestmark = pytest.mark.trains  # builds and scores mixed members of a trained model

BITS = (32, 8, 4, 2, 1)


class NeverRead:
    """A dataset that must not be read: the test split."""

    def __iter__(self):
        raise AssertionError("the search read the test split")


@pytest.fixture(scope="module")
def trained(tfds_dir):
    import zoo

    model = zoo.create_model("digits_resnet_e", weights="digits_w8", bit_widths=BITS)
    ensemble = quantens.QuantEnsemble(model, BITS)
    datasets = run.load_datasets(run.DataSettings(dataset="digits", data_dir=tfds_dir,
                                                  augmentation="low"))
    return ensemble, dataclasses.replace(datasets, test=NeverRead())


def _val_accuracy(ensemble, bits, datasets) -> float:
    member = ensemble.member(bits)
    correct = total = 0
    for x, y in datasets.validation:
        correct += int(np.sum(np.argmax(member(x, training=False), -1) == y.numpy()))
        total += len(y)
    return correct / total


def test_the_search_fits_the_budget_reads_no_test_data_and_beats_the_uniform_member(trained):
    ensemble, datasets = trained
    sizes = {b: member_bytes(ensemble, b) for b in (8, 4, 2, 1)}
    budget = sizes[4]  # the 4-bit member's bytes
    result = search_policy(ensemble, datasets, max_bytes=budget, verbose=0)
    # the count (an LCE mix's estimate at its upper bound) fits
    assert member_bytes(ensemble, result.policy) <= result.bytes <= budget
    assert set(result.policy) == set(policy_layers(ensemble.model))
    assert result.accuracy >= _val_accuracy(ensemble, 4, datasets) - 1e-9
    names = [c["name"] for c in result.candidates]
    # every uniform member that fits is a candidate, and nothing larger is
    assert {"uniform 4-bit", "uniform 2-bit", "uniform 1-bit"} <= set(names)
    assert "uniform 8-bit" not in names or sizes[8] <= budget
    assert all(c["bytes"] <= budget for c in result.candidates)


def test_a_budget_between_two_members_gets_a_mix_that_fits(trained):
    ensemble, datasets = trained
    low, high = (member_bytes(ensemble, b) for b in (1, 2))
    budget = (low + high) // 2
    result = search_policy(ensemble, datasets, max_bytes=budget, verbose=0)
    assert result.bytes <= budget
    mixes = [c for c in result.candidates if c["name"].startswith("greedy")]
    assert mixes, [c["name"] for c in result.candidates]
    for mix in mixes:  # each spends the budget beyond the 1-bit member, and fits
        assert low < mix["bytes"] <= budget
        assert len(set(mix["policy"].values())) > 1
        assert member_bytes(ensemble, mix["policy"]) <= mix["bytes"]
    assert result.accuracy == max(c["accuracy"] for c in result.candidates)
    best = [c for c in result.candidates if c["accuracy"] == result.accuracy]
    assert result.policy == min(best, key=lambda c: c["loss"])["policy"]


def test_a_budget_below_the_smallest_file_is_one_error_naming_it(trained):
    ensemble, datasets = trained
    smallest = member_bytes(ensemble, 1)
    with pytest.raises(UsageError, match=f"the smallest uniform file .* has {smallest:,} bytes"):
        search_policy(ensemble, datasets, max_bytes=smallest - 1, verbose=0)
    with pytest.raises(UsageError, match=r"bit_widths \[3\] are not members"):
        search_policy(ensemble, datasets, max_bytes=10**9, bit_widths=(8, 3), verbose=0)


# ------------------------------------------------------------------ command lines


@pytest.mark.parametrize("argv, message", [
    (["--budget-kb", "10"], "--budget-kb exports a member beside the uniform ones: add --export"),
    (["--export", "--budget-kb", "0"], "'0' is not a positive number of kilobytes"),
    (["--export", "--budget-kb", "nan"], "'nan' is not a positive number of kilobytes"),
])
def test_train_py_checks_budget_flags_before_anything(argv, message, tmp_path, capsys):
    from quantens import cli

    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([*argv, "--result-path", str(tmp_path / "r")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_budget_on_a_run_that_validates_on_test_is_refused_before_training(tmp_path, capsys):
    from quantens.cli import train as train_cli

    # mnist has no validation split: without --val-split the run validates on test
    code = train_cli.main(["--dataset", "mnist", "--export", "--budget-kb", "10",
                           "--result-path", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "validates on its test split" in err[0] and "--val-split 0.1" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_quantens_export_writes_budget_members_beside_the_uniform_ones(tmp_path, tfds_dir,
                                                                       capsys):
    import json

    import zoo
    from quantens.cli import export as export_cli
    from quantens.report import write_report
    from quantens.results import save_run

    model = zoo.create_model("digits_resnet_e", weights="digits_w8", bit_widths=BITS)
    run_dir = tmp_path / "run"
    save_run(str(run_dir), model, {
        "model": "digits_resnet_e", "width": 8, "bit_widths": list(BITS),
        "input_shape": [8, 8, 1], "num_classes": 10, "dataset": "digits",
        "data_dir": tfds_dir})
    assert export_cli.main([str(run_dir), "--budget-kb", "24", "--eval-examples", "128"]) == 0
    out = capsys.readouterr().out
    assert "budget_24kb: member_budget_24kb.tflite" in out
    export = run_dir / "export"
    report = json.loads((export / "export.json").read_text())
    entry = report["members"]["budget_24kb"]
    size = (export / "member_budget_24kb.tflite").stat().st_size
    assert entry["bytes"] == size <= 24_000
    assert entry["search"]["max_bytes"] == 24_000 and entry["latency_ms"] > 0
    assert entry["fidelity"]["examples"] == 128
    assert {c["name"] for c in entry["search"]["candidates"]} >= {"uniform 1-bit"}
    frontier = {f["name"]: f for f in report["frontier"]}
    assert set(frontier) == {"32", "8", "4", "2", "1", "budget_24kb"}
    # every dominated member says why
    assert all(f["on_frontier"] or f["reason"].startswith(f"member {f['name']}: ")
               for f in frontier.values())
    metrics = {"bit_widths": list(BITS), "val_accuracy": {str(b): 0.9 for b in BITS}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    text = open(write_report(str(run_dir)), encoding="utf-8").read()
    assert "| budget_24kb | " in text


@pytest.mark.slow
def test_train_py_exports_a_budget_member_after_training(tmp_path, tfds_dir, capsys):
    import json

    from quantens.cli import train as train_cli

    result = tmp_path / "r"
    assert train_cli.main([
        "--epochs", "1", "--test-run", "--width", "4", "--bit-widths", "8", "2", "1",
        "--data-dir", tfds_dir, "--export", "--budget-kb", "1000", "--no-tensorboard",
        "--result-path", str(result)]) == 0
    assert "budget_1000kb: member_budget_1000kb.tflite" in capsys.readouterr().out
    report = json.loads((result / "export" / "export.json").read_text())
    entry = report["members"]["budget_1000kb"]
    assert entry["bytes"] == (result / "export" / "member_budget_1000kb.tflite").stat().st_size
    assert entry["search"]["max_bytes"] == 1_000_000
    assert "budget_1000kb" in {f["name"] for f in report["frontier"]}
    assert "| budget_1000kb | " in (result / "report.md").read_text()
