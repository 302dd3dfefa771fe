import csv
import json
import os

import pytest
from conftest import run_script, tiny_model

import quantens


@pytest.fixture(scope="module")
def default_run(tfds_dir, tmp_path_factory):
    result_path = str(tmp_path_factory.mktemp("run") / "result")
    result = run_script(
        ["train.py", "--epochs", "2", "--test-run", "--width", "8", "--data-dir", tfds_dir,
         "--result-path", result_path]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result_path, result.stdout


def test_default_run_writes_the_result_directory(default_run):
    result_path, stdout = default_run
    for name in ("config.json", "history.csv", "metrics.json", "ensemble.weights.h5",
                 "best.weights.h5"):
        assert os.path.isfile(os.path.join(result_path, name)), name
    config = json.load(open(os.path.join(result_path, "config.json")))
    assert config["bit_widths"] == [32, 8, 4, 2, 1] and config["dataset"] == "digits"
    metrics = json.load(open(os.path.join(result_path, "metrics.json")))
    assert metrics["bit_widths"] == [32, 8, 4, 2, 1] and metrics["target_bits"] == 1
    rows = list(csv.DictReader(open(os.path.join(result_path, "history.csv"))))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for b in (32, 8, 4, 2, 1):
        # evaluated after the last epoch with the same weights: same numbers
        assert metrics["val_accuracy"][str(b)] == pytest.approx(
            float(rows[-1][f"val_accuracy_{b}"]), abs=1e-6
        )
        assert f"{b:>4}   {metrics['val_accuracy'][str(b)]:.4f}" in stdout
    # no temporary files left behind
    assert not [n for n in os.listdir(result_path) if ".tmp" in n]


def test_saved_weights_load_into_the_model(default_run):
    result_path, _ = default_run
    model = tiny_model()
    model.load_weights(os.path.join(result_path, "ensemble.weights.h5"))
    ensemble = quantens.QuantEnsemble(model)
    assert ensemble.target_bits == 1
