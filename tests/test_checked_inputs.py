"""Every path, file and flag of a command checked before work starts (issue 23).

Each case runs an entry point's `main(argv)` in this process (TensorFlow is
loaded once for the file) and asserts what a user sees: the exit code, one
line `...: error: ...` on stderr naming the flag, and that nothing was
written or changed. Subprocess runs are in test_robustness.py.
"""

import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from quantens.cli import export as export_cli
from quantens.cli import report as report_cli
from quantens.cli import train as train_cli
from quantens.locking import ResultDirLock


def run(main, argv, capsys):
    """(exit code, stderr lines) of an entry point called as a user would call it."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's error path
        code = exit_.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def one_line(main, argv, capsys, code, *phrases):
    got, lines = run(main, argv, capsys)
    assert got == code, (got, lines)
    assert len(lines) == 1 and ": error: " in lines[0], lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def snapshot(root):
    """Every file under `root` with its bytes (what 'unchanged' means; the lock file aside)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name == ".lock":
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def weights_file(path, truncate=False):
    with h5py.File(path, "w") as f:
        f["layer/kernel"] = np.arange(4096, dtype="float32")
    if truncate:  # a half-copied file: its header still says HDF5
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    return str(path)


SMALL = ["--width", "4", "--test-run", "--epochs", "1", "--bit-widths", "32", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run with an export (for the export and report cases)."""
    path = str(tmp_path_factory.mktemp("runs") / "done")
    assert train_cli.main([*SMALL, "--no-tensorboard", "--export", "--result-path", path]) == 0
    return path


# ------------------------------------------------------- train.py: flags and files


@pytest.mark.parametrize("argv, phrases", [
    (["--no-tensorboard", "--tensorboard-dir", "tb"], ["--tensorboard-dir has no effect"]),
    (["--lr-steps", "10,20"], ["--lr-steps and --lr-factor shape --lr-mode step only"]),
    (["--lr-factor", "0.5"], ["--lr-mode step only"]),
    (["--max-trials", "3"], ["--max-trials and --tune-objective belong to a search"]),
    (["--dry-run", "--export"], ["--export has no effect with --dry-run"]),
    (["--calibration", "percentile"], [  # the library's answer (check_calibratable)
        "--calibration percentile: model 'digits_resnet_e' has no clip value to calibrate"]),
    (["--member-loss-weights", "32:0", "1:0", "--bit-widths", "32", "1"],
     ["--member-loss-weights: every member's weight is 0"]),
    (["--kd-mode", "progressive", "--kd-weights", "32:2"],
     ["--kd-weights: the 32-bit member learns from no target in --kd-mode progressive",
      "students: 8 4 2 1 bits"]),
    (["--kd-mode", "highest", "--kd-temperatures", "32:2", "8:3"],
     ["--kd-temperatures: the 32-bit member learns from no target in --kd-mode highest"]),
    (["--kd-mode", "progressive", "--kd-weight", "0"],
     ["--kd-weight 0 and no positive --kd-weights", "would distil nothing"]),
    (["--kd-attention-weight", "1"], ["--kd-attention-weight shape distillation"]),
    (["--kd-mode", "progressive", "--teacher-lr", "0.1"],
     ["--teacher-lr set the training of an untrained_external teacher"]),
])
def test_a_flag_that_would_have_no_effect_is_one_line_and_nothing_is_written(
        tmp_path, capsys, argv, phrases):
    result = tmp_path / "r"
    one_line(train_cli.main, [*argv, "--result-path", str(result)], capsys, 2, *phrases)
    assert os.listdir(tmp_path) == []


def test_kd_flags_for_students_and_zero_weights_for_some_members_still_work(tmp_path):
    from quantens import cli

    args = cli.parse_args(["--kd-mode", "progressive", "--kd-weights", "1:2", "--kd-weight", "0",
                           "--member-loss-weights", "32:0", "--result-path", str(tmp_path)])
    assert args.kd_weights == [[1, 2.0]] and args.member_loss_weights == [[32, 0.0]]
    teacher = cli.parse_args(["--teacher", "resnet18", "--kd-teacher-mode", "pretrained_external",
                              "--kd-mode", "progressive", "--kd-weights", "32:1"])
    assert teacher.kd_weights == [[32, 1.0]]  # with a teacher the highest member is a student


def test_an_unwritable_or_file_tensorboard_dir_is_refused_before_anything_is_written(
        tmp_path, capsys):
    blocker = tmp_path / "tb"
    blocker.write_text("a file")
    one_line(train_cli.main, [*SMALL, "--tensorboard-dir", str(blocker), "--result-path",
                              str(tmp_path / "r")], capsys, 2, "--tensorboard-dir", "is a file")
    one_line(train_cli.main, [*SMALL, "--tensorboard-dir", str(blocker / "sub"),
                              "--result-path", str(tmp_path / "r")],
             capsys, 2, "--tensorboard-dir", "is a file, not a directory")
    assert sorted(os.listdir(tmp_path)) == ["tb"] and blocker.read_text() == "a file"


@pytest.mark.parametrize("flag", ["--resume", "--teacher-params"])
def test_a_damaged_or_foreign_weights_file_is_one_line_naming_the_flag(tmp_path, capsys, flag):
    extra = ["--ensemble-teacher"] if flag == "--teacher-params" else []
    damaged = weights_file(tmp_path / "half.weights.h5", truncate=True)
    before = snapshot(tmp_path)
    one_line(train_cli.main, [*SMALL, *extra, flag, damaged, "--result-path",
                              str(tmp_path / "r")],
             capsys, 2, f"{flag} {damaged} is damaged (truncated or half-copied?)")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    one_line(train_cli.main, [*SMALL, *extra, flag, str(text), "--result-path",
                              str(tmp_path / "r")],
             capsys, 2, f"{flag} {text} is not a weights file")
    assert snapshot(tmp_path) == {**before, "notes.txt": b"not weights"}


def test_teacher_params_without_a_teacher_is_refused(tmp_path, capsys):
    weights = weights_file(tmp_path / "t.weights.h5")
    one_line(train_cli.main, ["--teacher-params", weights, "--result-path", str(tmp_path / "r")],
             capsys, 2, "--teacher-params", "this run has no teacher to load it into")
    assert os.listdir(tmp_path) == ["t.weights.h5"]


def test_an_architecture_flag_the_model_does_not_take_is_refused_before_the_lock(
        tmp_path, capsys):
    one_line(train_cli.main, [*SMALL, "--alpha", "0.5", "--result-path", str(tmp_path / "r")],
             capsys, 2, "--model digits_resnet_e takes no alpha (--alpha): leave it out")
    assert os.listdir(tmp_path) == []


def test_a_kd_warmup_that_covers_every_step_is_refused_and_nothing_is_written(tmp_path, capsys):
    # 1.6 epochs of warm-up in 2 epochs of one step each: round(1.6) = 2 steps, all of them
    one_line(train_cli.main, [*SMALL, "--epochs", "2", "--kd-mode", "progressive",
                              "--kd-warmup-epochs", "1.6", "--result-path", str(tmp_path / "r")],
             capsys, 2, "--kd-warmup-epochs 1.6: the distillation warm-up covers all 2 training steps")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------- export and report: flags and the lock


@pytest.mark.parametrize("argv, phrase", [
    (["--eval-examples", "-5"], "--eval-examples must be at least 1, got -5"),
    (["--eval-examples", "0"], "--eval-examples must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--no-eval", "--eval-examples", "8"], "--eval-examples has no effect with --no-eval"),
])
def test_export_options_out_of_range_are_one_line_and_change_nothing(
        trained, capsys, argv, phrase):
    before = snapshot(trained)
    one_line(export_cli.main, [trained, *argv], capsys, 2, phrase)
    assert snapshot(trained) == before


def test_an_export_destination_that_is_a_file_is_refused_and_kept(trained, tmp_path, capsys):
    destination = tmp_path / "out"
    destination.write_text("mine")
    one_line(export_cli.main, [trained, "--out", str(destination)], capsys, 2,
             f"--out {destination} is a file")
    assert destination.read_text() == "mine"


def test_export_and_report_of_a_running_first_training_name_its_holder(tmp_path, capsys):
    running = str(tmp_path / "running")
    os.makedirs(running)
    with open(os.path.join(running, "config.json"), "w") as f:
        json.dump({"model": "digits_resnet_e"}, f)  # a run that has not written weights yet
    with ResultDirLock(running, "train.py"):
        before = snapshot(running)
        for main in (export_cli.main, report_cli.main):
            one_line(main, [running], capsys, 2, f"{running} is in use by train.py",
                     f"pid {os.getpid()}")
        assert snapshot(running) == before


def _mount_small_tmpfs(path, size="200k"):
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs a small file system to fill: mounting a tmpfs is not permitted "
                    f"here ({mounted.stderr.decode().strip() or mounted.returncode})")


def test_an_export_on_a_full_disk_is_one_line_and_loses_nothing(trained, tmp_path, capsys):
    full = tmp_path / "full"
    _mount_small_tmpfs(full)
    try:
        good = full / "export"
        shutil.copytree(os.path.join(trained, "export"), good,
                        ignore=shutil.ignore_patterns("saved_model", "*.tflite"))
        before = snapshot(full)
        line = one_line(export_cli.main, [trained, "--out", str(good), "--eval-examples", "8"],
                        capsys, 1, "no space left on device while writing " + str(full),
                        "free space and re-run the same command")
        assert "Traceback" not in line
        assert snapshot(full) == before  # the earlier export intact, no temporary left
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_search_keeps_kd_entries_some_mode_uses_and_best_json_only_those_of_its_mode(
        tmp_path, capsys):
    from quantens import cli
    from quantens.cli import tune

    args = cli.parse_args(["--tune", "random", "--kd-mode", "progressive", "--kd-weights",
                           "32:0.5", "1:2", "--kd-warmup-epochs", "1", "--epochs", "3",
                           "--result-path", str(tmp_path / "search")])
    assert args.kd_weights == [[32, 0.5], [1, 2.0]]  # the average mode teaches 32 bits
    for mode, kept in (("average", [[32, 0.5], [1, 2.0]]), ("progressive", [[1, 2.0]]),
                       ("none", None)):
        best = tune.best_flags(args, {"kd_mode": mode})
        assert best["kd_weights"] == kept
        path = tmp_path / f"best_{mode}.json"
        path.write_text(json.dumps(best))
        again = cli.parse_args(["--config", str(path)])  # best.json is a valid --config
        assert again.kd_mode == mode and again.kd_weights == kept
        assert again.kd_warmup_epochs == (0.0 if mode == "none" else 1.0)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, phrase", [
    (["--mode", "imperative", "--jit"], "--jit compiles the graph of the train step"),
    (["--dataset", "folder"], "--dataset folder reads its images from --data-dir DIR"),
])
def test_found_beyond_the_issue_are_one_line_too(tmp_path, capsys, argv, phrase):
    one_line(train_cli.main, [*argv, "--result-path", str(tmp_path / "r")], capsys, 2, phrase)
    assert os.listdir(tmp_path) == []


def test_a_trial_drops_kd_entries_its_mode_does_not_use(tmp_path):
    from quantens import cli
    from quantens.cli import tune

    args = cli.parse_args(["--tune", "random", "--kd-mode", "progressive", "--kd-weights",
                           "32:0.5", "1:2", "--result-path", str(tmp_path / "search")])
    trial = tune.trial_args(args, {"kd_mode": "highest"}, str(tmp_path / "t"))
    assert trial.kd_weights == [[1, 2.0]]  # "highest" teaches every member but the 32-bit one
    assert tune.trial_args(args, {"kd_mode": "average"}, None).kd_weights == args.kd_weights


# ------------------------------------------- damaged files of a result directory (found here)


def _copy_run(trained, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_resuming_from_a_damaged_backup_or_history_is_one_line_and_changes_nothing(
        trained, tmp_path, capsys):
    run_dir = _copy_run(trained, tmp_path)
    index = next(os.path.join(d, n) for d, _, names in os.walk(os.path.join(run_dir, "backup"))
                 for n in names if n.endswith(".index"))
    with open(index, "wb") as f:
        f.write(b"garbage")  # Keras would warn and train again from epoch 1
    before = snapshot(run_dir)
    argv = [*SMALL, "--no-tensorboard", "--epochs", "2", "--result-path", run_dir]
    one_line(train_cli.main, argv, capsys, 2, f"{run_dir}/backup is damaged",
             "remove that folder to train again from epoch 1")
    assert snapshot(run_dir) == before
    shutil.rmtree(run_dir)
    run_dir = _copy_run(trained, tmp_path)
    with open(os.path.join(run_dir, "history.csv"), "w") as f:
        f.write("epoch,loss\nxx,1\n")
    before = snapshot(run_dir)
    one_line(train_cli.main, argv, capsys, 2, f"{run_dir}/history.csv is damaged",
             "remove it to start the run's history afresh")
    assert snapshot(run_dir) == before


def test_a_model_json_of_an_unknown_class_is_named_by_export(trained, tmp_path, capsys):
    run_dir = _copy_run(trained, tmp_path)
    path = os.path.join(run_dir, "model.json")
    with open(path) as f:
        config = json.load(f)
    config["class_name"] = "NoSuchModel"
    with open(path, "w") as f:
        json.dump(config, f)
    before = snapshot(run_dir)
    one_line(export_cli.main, [run_dir, "--out", str(tmp_path / "out")], capsys, 2,
             f"{path} is not a Keras model config quantens can build")
    assert snapshot(run_dir) == before and not (tmp_path / "out").exists()
