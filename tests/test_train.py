import csv
import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_script, run_seed_example, tiny_model

import quantens

pytestmark = pytest.mark.slow  # end-to-end runs; `make test-fast` leaves them out

# train.py as a user runs it, with a record of what it reads back: every file of the
# result directory opened for reading (an audit hook sees Python's opens) and every
# call of Keras' load_weights (h5py opens files in C, out of the hook's sight).
WATCHED_TRAIN = """
import atexit, json, os, sys
import train  # selects tf-keras before TensorFlow loads
import tensorflow as tf

result_path = os.path.abspath(sys.argv[sys.argv.index("--result-path") + 1])
record = {"reads": [], "load_weights": []}

def reading(mode, flags):
    if mode is None:  # os.open
        return not flags & (os.O_WRONLY | os.O_RDWR)
    return "r" in mode and "+" not in mode

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(result_path + os.sep) and reading(args[1], args[2]):
            record["reads"].append(os.path.relpath(path, result_path))

load_weights = tf.keras.Model.load_weights
def counted(self, filepath, *args, **kwargs):
    record["load_weights"].append(str(filepath))
    return load_weights(self, filepath, *args, **kwargs)

tf.keras.Model.load_weights = counted
sys.addaudithook(hook)
atexit.register(lambda: json.dump(record, open(os.environ["READS_RECORD"], "w")))
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def default_run(tfds_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    result_path = str(work / "result")
    script = work / "watched_train.py"
    script.write_text(WATCHED_TRAIN)
    result = run_script(
        [str(script), "--epochs", "2", "--test-run", "--width", "8", "--data-dir", tfds_dir,
         "--result-path", result_path, "--export"],
        env={"PYTHONPATH": ROOT, "READS_RECORD": str(work / "reads.json")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result_path, result.stdout


def test_export_and_report_work_from_the_in_memory_ensemble(default_run):
    """train.py --export hands its ensemble and data forward: nothing is read back."""
    result_path, _ = default_run
    record = json.load(open(os.path.join(os.path.dirname(result_path), "reads.json")))
    assert record["load_weights"] == []  # no weights file reloaded, no model rebuilt
    read_back = {"config.json", "model.json", "metrics.json", "ensemble.weights.h5",
                 "best.weights.h5", os.path.join("export", "export.json")}
    assert read_back.isdisjoint(record["reads"]), record["reads"]
    # the report took the member sizes from the export it was handed
    report = open(os.path.join(result_path, "report.md")).read()
    exported = json.load(open(os.path.join(result_path, "export", "export.json")))
    assert "bytes of the exported files" in report
    for b, entry in exported["members"].items():
        assert f"| {b} |" in report and f"| {entry['bytes']} |" in report


def test_model_json_rebuilds_the_trained_architecture(default_run):
    from quantens.results import read_model

    result_path, _ = default_run
    model = read_model(os.path.join(result_path, "model.json"))
    model.load_weights(os.path.join(result_path, "ensemble.weights.h5"))
    reference = tiny_model()
    reference.load_weights(os.path.join(result_path, "ensemble.weights.h5"))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    for b in (32, 2, 1):
        with quantens.bits(b):
            np.testing.assert_array_equal(model(x, training=False), reference(x, training=False))


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
        assert f"{b:>4}   {metrics['test_accuracy'][str(b)]:.4f}" in stdout  # the table
    # no temporary files left behind
    assert not [n for n in os.listdir(result_path) if ".tmp" in n]
    # --export: one file per member and the report
    exported = json.load(open(os.path.join(result_path, "export", "export.json")))
    for b in (32, 8, 4, 2, 1):
        assert os.path.isfile(os.path.join(result_path, "export", f"member_{b}.tflite"))
    assert exported
    # train.py ends with the report of the run
    assert "accuracy" in open(os.path.join(result_path, "report.md")).read()


def test_saved_weights_load_into_the_model(default_run):
    result_path, _ = default_run
    model = tiny_model()
    model.load_weights(os.path.join(result_path, "ensemble.weights.h5"))
    ensemble = quantens.QuantEnsemble(model)
    assert ensemble.target_bits == 1


def check_result_dir(path, bit_widths):
    metrics = json.load(open(os.path.join(path, "metrics.json")))
    assert metrics["bit_widths"] == list(bit_widths)
    assert set(metrics["val_accuracy"]) == {str(b) for b in bit_widths}
    assert os.path.isfile(os.path.join(path, "ensemble.weights.h5"))
    return metrics


def test_seed_example_1_runs_on_mock_imagenet(tmp_path):
    data_dir = tmp_path / "imagenet1k"
    data_dir.mkdir()
    result, result_path = run_seed_example(
        1, tmp_path, **{"--data-dir": str(data_dir), "--log": str(tmp_path / "run1.log")}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_result_dir(result_path, (32, 8, 4, 2, 1))
    assert metrics["target_bits"] == 1
    config = json.load(open(result_path / "config.json"))
    assert config["input_shape"] == [224, 224, 3] and config["num_classes"] == 1000
    assert "Epoch[1]" in (tmp_path / "run1.log").read_text()


def test_a_second_run_with_more_epochs_resumes(tfds_dir, tmp_path):
    base = ["train.py", "--test-run", "--width", "8", "--bit-widths", "8", "1",
            "--data-dir", tfds_dir, "--result-path", str(tmp_path / "r"),
            "--mode", "imperative"]  # one step per run: less than tracing it
    first = run_script([*base, "--epochs", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_script([*base, "--epochs", "2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_resume_flag_starts_from_given_weights(tfds_dir, tmp_path):
    first = tmp_path / "first"
    base = ["train.py", "--test-run", "--width", "8", "--bit-widths", "8", "1",
            "--data-dir", tfds_dir, "--epochs", "1", "--lr", "1e-12", "--mode", "imperative"]
    assert run_script([*base, "--result-path", str(first)]).returncode == 0
    second = run_script([*base, "--result-path", str(tmp_path / "second"), "--seed", "7",
                         "--resume", str(first)])
    assert second.returncode == 0, second.stderr[-3000:]
    unresumed = run_script([*base, "--result-path", str(tmp_path / "third"), "--seed", "7"])
    assert unresumed.returncode == 0

    def kernels(path):
        model = tiny_model((8, 1))
        model.load_weights(str(path / "ensemble.weights.h5"))
        return [v.numpy() for v in model.trainable_weights if "kernel" in v.name]

    # a tiny lr leaves the kernels as loaded: the resumed run started from them
    for a, b, c in zip(kernels(first), kernels(tmp_path / "second"),
                       kernels(tmp_path / "third"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("flags", [
    ["--mode", "imperative"],
    ["--dtype", "bfloat16", "--jit"],
    ["--optimizer", "radam", "--lr-mode", "step", "--lr-steps", "1", "--warmup-epochs", "0.5",
     "--wd", "1e-4", "--augmentation", "high"],
])
def test_modes_dtypes_and_optimizers_run(flags, tfds_dir, tmp_path):
    result = run_script(["train.py", "--epochs", "2", "--test-run", "--width", "8",
                         "--bit-widths", "8", "1", "--data-dir", tfds_dir,
                         "--result-path", str(tmp_path / "r"), *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(tmp_path / "r" / "config.json"))
    for key in ("mode", "dtype", "optimizer"):
        if f"--{key}" in flags:
            assert config[key] == flags[flags.index(f"--{key}") + 1]
    assert (tmp_path / "r" / "metrics.json").is_file()


def _event_tags(directory):
    import tensorflow as tf

    tags = set()
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith("events.out.tfevents"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                    tags.update(v.tag for v in event.summary.value)
    return tags


def test_tensorboard_logs_every_member_and_the_learning_rate(default_run, tfds_dir, tmp_path):
    result_path, _ = default_run
    tags = _event_tags(os.path.join(result_path, "tensorboard"))
    for b in (32, 8, 4, 2, 1):
        assert {f"epoch_accuracy_{b}", f"epoch_loss_{b}"} <= tags, sorted(tags)
    assert "epoch_learning_rate" in tags
    quiet = tmp_path / "quiet"
    result = run_script(["train.py", "--epochs", "1", "--test-run", "--width", "4",
                         "--data-dir", tfds_dir, "--result-path", str(quiet),
                         "--no-tensorboard"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (quiet / "tensorboard").exists()
    assert not [n for n in os.listdir(quiet) if "tfevents" in n]
