"""Trustworthy runs: what train.py does with bad input, divergence, kills and Ctrl-C.

Each case runs train.py (or a command) as a user would, in a subprocess, with
the smallest model that shows the behaviour (`--width 4 --test-run`).
"""

import csv
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from conftest import ROOT, run_script

from quantens import cli


@pytest.fixture
def small(tfds_dir):
    """The smallest run: a 4-channel model, one batch per epoch, this session's TFDS data,
    eager (a step costs less than tracing it)."""
    return ["--width", "4", "--test-run", "--data-dir", tfds_dir, "--mode", "imperative"]


def one_line_error(result, code=2, *phrases):
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and ": error: " in lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def history_epochs(result_path):
    with open(os.path.join(result_path, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


# ------------------------------------------------------------- bad input up front


@pytest.mark.parametrize("argv, phrase", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--kd-temperature", "nan"], "--kd-temperature must be a finite number"),
    (["--lr-steps", "60,30"], "--lr-steps must be increasing"),
    (["--seed", "-1"], "--seed"),
    (["--width", "0"], "--width must be at least 1"),
    (["--momentum", "1"], "--momentum"),
    (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs"),
])
def test_bad_flags_are_one_line_and_no_result_directory(tmp_path, argv, phrase):
    result_path = tmp_path / "result"
    result = run_script(["train.py", *argv, "--result-path", str(result_path)])
    one_line_error(result, 2, phrase)
    assert not result_path.exists()


@pytest.mark.parametrize("config, phrase", [
    ({"lr": None}, "lr (--lr) must not be null"),
    ({"batch_size": 2.5}, "batch_size (--batch-size) must be an integer"),
    ({"lr": "fast"}, "lr (--lr) must be a finite number"),
    ({"bit_widths": [32, "one"]}, "bit_widths (--bit-widths) must list only integers"),
    ({"optimizer": "adagrad"}, "must be one of radam"),
    ({"fp_weights": "yes"}, "must be true or false"),
])
def test_config_values_are_checked_as_their_flags(tmp_path, config, phrase):
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(config))
    result = run_script(["train.py", "--config", str(path), "--result-path", str(tmp_path / "r")])
    one_line_error(result, 2, phrase)
    assert not (tmp_path / "r").exists()


def test_a_result_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    one_line_error(run_script(["train.py", "--result-path", str(path)]), 2, "is a file")
    assert path.read_text() == "not a directory"


NOBODY = 65534  # a user that owns nothing here ("nobody")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# what uid NOBODY's interpreter must show: its own prefix, Python >= 3.10, and no
# TensorFlow/numpy on its path (-S: no site-packages), so importing them would fail
NOBODY_PROBE = (
    "import importlib.util as u, sys; print(sys.prefix); print(sys.version_info >= (3, 10), "
    "[m for m in ('tensorflow', 'numpy') if u.find_spec(m)])"
)


def _python_for_nobody(home):
    """An interpreter that uid NOBODY runs with its own standard library, or pytest.skip.

    The venv's python (sys.executable) may lie in a directory others cannot read
    (a checkout inside a mode-700 directory; pyenv under /root): its real file
    first, then the system's python3. Only the standard library is used (-S).
    """
    candidates = [os.path.realpath(sys.executable)]
    candidates += [os.path.realpath(p) for p in (shutil.which("python3"), "/usr/bin/python3")
                   if p and os.path.isfile(p)]
    reasons = []
    for python in dict.fromkeys(candidates):
        command = [python, "-E", "-S", "-c", NOBODY_PROBE]
        mine = subprocess.run(command, capture_output=True, text=True, timeout=60)
        theirs = subprocess.run([*AS_NOBODY, *command], capture_output=True, text=True,
                                timeout=60, cwd=home, env={"HOME": home, "PATH": "/usr/bin:/bin"})
        if theirs.returncode != 0:
            error = (theirs.stderr.strip().splitlines() or ["no output"])[-1]
            reasons.append(f"{python}: uid {NOBODY} cannot run it ({error})")
        elif mine.returncode != 0 or theirs.stdout != mine.stdout:
            seen, own = (r.stdout.partition("\n")[0] for r in (theirs, mine))
            reasons.append(f"{python}: uid {NOBODY} cannot read its standard library (it "
                           f"finds the prefix {seen!r}, not {own!r})")
        elif theirs.stdout.splitlines()[-1] != "True []":
            reasons.append(f"{python}: {theirs.stdout.strip()!r} (want Python >= 3.10 "
                           "without TensorFlow and numpy outside site-packages)")
        else:
            return python
    pytest.skip(f"no interpreter uid {NOBODY} can use: " + "; ".join(reasons))


@pytest.fixture
def world_readable():
    """A fresh directory every user can read (pytest's tmp_path is private to root)."""
    top = tempfile.mkdtemp(prefix="quantens-nobody-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        closed = [d for d in (os.path.dirname(top), "/") if not os.stat(d).st_mode & stat.S_IXOTH]
        if closed:
            pytest.skip(f"{closed[0]} does not let other users through")
        yield top
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a command as another user (needs root)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_an_unwritable_result_path_is_refused_before_tensorflow_loads(world_readable):
    """uid 65534 runs train.py with a result path below root's directory: one line, exit 2.

    The command runs from a copy of train.py and the packages in a world-readable
    directory (the checkout may be private to its owner) with the standard
    library only: a TensorFlow or numpy import before the refusal fails the test.
    """
    python = _python_for_nobody(world_readable)
    checkout = os.path.join(world_readable, "checkout")
    for package in ("quantens", "zoo"):
        shutil.copytree(os.path.join(ROOT, package), os.path.join(checkout, package),
                        ignore=shutil.ignore_patterns("__pycache__", "*.h5"))
    shutil.copy(os.path.join(ROOT, "train.py"), checkout)
    locked = os.path.join(world_readable, "locked")  # root's, mode 755
    os.mkdir(locked, 0o755)
    command = [*AS_NOBODY, python, "-E", "-S", "-B", "train.py",
               "--result-path", os.path.join(locked, "run")]
    result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=120,
                            env={"HOME": world_readable, "PATH": "/usr/bin:/bin",
                                 "TF_CPP_MIN_LOG_LEVEL": "2"})
    one_line_error(result, 2, f"{locked} is not writable by this user")
    assert os.listdir(locked) == []


def test_run_main_turns_a_full_disk_and_ctrl_c_into_one_line(capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/results/run/history.csv")

    def interrupted():
        raise KeyboardInterrupt

    assert cli.run_main(full, "train.py") == 1
    assert capsys.readouterr().err == (
        "train.py: error: no space left on device while writing /results/run/history.csv; "
        "free space and re-run the same command to resume\n")
    assert cli.run_main(interrupted, "train.py") == 130
    assert "interrupted: re-run the same command to resume" in capsys.readouterr().err


# ------------------------------------------------------------------- divergence


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_3_and_saves_no_bad_weights(tmp_path, small):
    import h5py

    result_path = tmp_path / "r"
    result = run_script(["train.py", *small, "--epochs", "3", "--lr", "1e6",
                         "--result-path", str(result_path)])
    line = one_line_error(result, 3, "training diverged at epoch 1", "lower --lr")
    assert "nothing of this epoch was saved" in line
    assert not (result_path / "ensemble.weights.h5").exists()
    assert not (result_path / "metrics.json").exists()
    best = result_path / "best.weights.h5"
    if best.exists():  # only from a finite epoch
        with h5py.File(best) as f:
            values = []
            f.visititems(lambda _, o: values.append(o[()]) if isinstance(o, h5py.Dataset)
                         else None)
        assert all(np.all(np.isfinite(v)) for v in values)


# --------------------------------------------------------- kills at awkward moments

# train.py killed (SIGKILL) right after the history row of epoch KILL_EPOCH is
# written, before the backup records the epoch: the window of the lost-row bug.
KILLED_AFTER_HISTORY = """
import os, signal, sys
import train
from quantens import results

write_row = results.HistoryCSV.on_epoch_end
def killing(self, epoch, logs=None):
    write_row(self, epoch, logs)
    if epoch + 1 == int(os.environ["KILL_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)

results.HistoryCSV.on_epoch_end = killing
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_between_history_and_backup_repeats_the_epoch_once(tmp_path, small, tfds_dir):
    script = tmp_path / "killed_train.py"
    script.write_text(KILLED_AFTER_HISTORY)
    result_path = str(tmp_path / "r")
    argv = [*small, "--epochs", "3", "--result-path", result_path]
    killed = run_script([str(script), *argv], env={"PYTHONPATH": ROOT, "KILL_EPOCH": "2"})
    assert killed.returncode == -signal.SIGKILL
    assert history_epochs(result_path) == [1, 2]  # written, but not backed up
    # a partial best checkpoint of a write that was killed, as atomic_path names it
    stale = os.path.join(result_path, ".best.weights.h5.k1ll3d.tmp.weights.h5")
    open(stale, "wb").write(b"\x89HDF partial")
    resumed = run_script(["train.py", *argv])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert history_epochs(result_path) == [1, 2, 3]  # every epoch exactly once
    assert not os.path.exists(stale)
    assert not [n for n in os.listdir(result_path) if ".tmp" in n]
    # best.weights.h5 holds the epoch of the best row of history.csv
    with open(os.path.join(result_path, "history.csv")) as f:
        best_row = max(float(r["val_accuracy_1"]) for r in csv.DictReader(f))
    assert _val_accuracy_of(result_path, "best.weights.h5") == pytest.approx(best_row, abs=1e-6)
    assert json.load(open(os.path.join(result_path, "config.json")))["data_dir"] == tfds_dir


def _val_accuracy_of(result_path, weights):
    """val_accuracy of the target member of a weights file, as train.py measures it."""
    code = (
        "import sys, json, quantens, quantens.data as qd\n"
        "from quantens.results import read_model\n"
        "from quantens.layout import ResultDir\n"
        "run = ResultDir(sys.argv[1]); config = json.load(open(run.config))\n"
        "model = read_model(run.model); model.load_weights(run.path(sys.argv[2]))\n"
        "ensemble = quantens.QuantEnsemble(model, config['bit_widths']); ensemble.compile()\n"
        "spec = qd.resolve(config['dataset'])\n"
        "val = qd.load(config['dataset'], spec.eval_split, config['batch_size'],\n"
        "              data_dir=config['data_dir'], take_batches=1)\n"
        "logs = ensemble.evaluate(val, return_dict=True, verbose=0)\n"
        "print(logs[f\"accuracy_{config['target_bits']}\"])\n"
    )
    result = run_script(["-c", code, result_path, weights])
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ image folders


def _image(path, size=(12, 10)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(path)


def _folder(root, classes=("cat", "dog"), val_classes=None):
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for name in names:
            _image(root / split / name / "0.png")
    return root


def _bad_folder(tmp_path, case):
    root = tmp_path / "images"
    if case == "one class":
        return _folder(root, classes=("cat",)), "at least 2 classes"
    if case == "val classes differ":
        return _folder(root, val_classes=("cat", "cow")), "cow"
    if case == "empty class":
        _folder(root)
        (root / "train" / "bird").mkdir()
        (root / "val" / "bird").mkdir()
        return root, "bird"
    if case == "corrupt image":
        _folder(root)
        bad = root / "train" / "dog" / "1.jpg"
        bad.write_bytes(b"not a jpeg")
        return root, str(bad)
    raise ValueError(case)


@pytest.mark.parametrize("case", ["one class", "val classes differ", "empty class",
                                  "corrupt image"])
def test_image_folders_are_checked_before_anything_is_written(tmp_path, case):
    root, phrase = _bad_folder(tmp_path, case)
    result_path = tmp_path / "r"
    result = run_script(["train.py", "--dataset", "folder", "--data-dir", str(root),
                         "--result-path", str(result_path), "--epochs", "1"])
    one_line_error(result, 2, phrase)
    assert not result_path.exists()  # no config.json, no train.log


@pytest.mark.slow
def test_the_final_table_is_the_test_accuracy_of_the_saved_weights(tmp_path, small, tfds_dir):
    result_path = str(tmp_path / "r")
    result = run_script(["train.py", *small, "--epochs", "2", "--result-path", result_path])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(result_path, "metrics.json")))
    assert metrics["validation_split"] == "validation" and metrics["test_split"] == "test"
    assert not metrics["validation_is_test"] and metrics["best_epoch"] in (1, 2)
    code = (
        "import sys, json, quantens, quantens.data as qd\n"
        "from quantens.results import read_model\n"
        "from quantens.layout import ResultDir\n"
        "run = ResultDir(sys.argv[1]); config = json.load(open(run.config))\n"
        "model = read_model(run.model); model.load_weights(run.weights)\n"
        "ensemble = quantens.QuantEnsemble(model, config['bit_widths']); ensemble.compile()\n"
        "test = qd.load('digits', 'test', config['batch_size'], data_dir=config['data_dir'],\n"
        "               take_batches=1)\n"
        "logs = ensemble.evaluate(test, return_dict=True, verbose=0)\n"
        "print(json.dumps({str(b): logs[f'accuracy_{b}'] for b in config['bit_widths']}))\n"
    )
    evaluated = run_script(["-c", code, result_path])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    measured = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert measured == pytest.approx(metrics["test_accuracy"], abs=1e-7)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.strip() and line.split()[0] in measured}
    for b, accuracy in measured.items():
        assert rows[b][0] == f"{accuracy:.4f}"  # the final weights' column
        assert rows[b][1] == f"{metrics['best_test_accuracy'][b]:.4f}"


@pytest.mark.slow
def test_val_split_holds_out_part_of_train_for_datasets_without_one(tmp_path):
    from conftest import run_seed_example

    result, result_path = run_seed_example(
        4, tmp_path, eager=True, extra=["--val-split", "0.25", "--bit-widths", "32", "1"],
        **{"--dataset": "cifar10"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(result_path / "metrics.json"))
    assert metrics["validation_split"].startswith("train (heldout")
    assert metrics["test_split"] == "test" and not metrics["validation_is_test"]
    assert "checkpoints chosen on: train (heldout" in result.stdout


# ------------------------------------------------- one run owns its result directory


# More epochs than any machine trains while a test waits: a run started with them
# is still training when it is signalled (and that is checked just before).
ENDLESS_EPOCHS = 1_000_000


def _start_train(result_path, tfds_dir, output_dir, epochs=ENDLESS_EPOCHS):
    """train.py in the background; its stdout and stderr go to files in output_dir
    (pipes that nobody reads while it trains would fill up and stall it)."""
    argv = [sys.executable, "train.py", "--width", "4", "--epochs", str(epochs), "--data-dir",
            tfds_dir, "--result-path", result_path]
    with open(os.path.join(output_dir, "train.stdout"), "w") as stdout, \
            open(os.path.join(output_dir, "train.stderr"), "w") as stderr:
        return subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=stderr,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                                preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal():
    """SIGINT's default action in the child, as for a command typed in a terminal.

    A test runner started in the background of a shell (`make test &`, a CI
    step run that way) inherits SIGINT ignored, and so would the run: Python
    keeps an ignored SIGINT ignored (as `nohup` users expect), and the Ctrl-C
    test's run trained on (seen here: 213 epochs after the signal).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _output(output_dir, name="train.stderr"):
    with open(os.path.join(output_dir, name)) as f:
        return f.read()


def _wait_for_epochs(process, result_path, output_dir, n=1):
    deadline = time.time() + 600  # start-up and an epoch, on a busy machine
    history = os.path.join(result_path, "history.csv")
    while not (os.path.exists(history) and len(history_epochs(result_path)) >= n):
        assert process.poll() is None, _output(output_dir)[-3000:]
        assert time.time() < deadline, f"no epoch {n} in 600 s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_run_or_export_on_a_running_directory_exits_2_and_ctrl_c_resumes(
        tmp_path, tfds_dir):
    """One run owns the directory; Ctrl-C ends it with exit 130 and the same command resumes.

    The run has ENDLESS_EPOCHS: it holds the directory for as long as the test
    takes and is interrupted mid-training, however slow the machine.
    (kill -9 releases the lock as well: test_kill_between_history_and_backup_...)
    """
    result_path = str(tmp_path / "r")
    first = _start_train(result_path, tfds_dir, str(tmp_path))
    try:
        _wait_for_epochs(first, result_path, str(tmp_path))
        config = open(os.path.join(result_path, "config.json")).read()
        before = {n: os.path.getmtime(os.path.join(result_path, n))
                  for n in ("config.json", "model.json")}
        second = run_script(["train.py", "--width", "8", "--epochs", "2", "--data-dir",
                             tfds_dir, "--result-path", result_path])
        line = one_line_error(second, 2, f"{result_path} is in use by train.py",
                              f"pid {first.pid}", "choose another --result-path")
        assert "host" in line
        # an export of the running directory is refused too (it has weights of an earlier run)
        open(os.path.join(result_path, "ensemble.weights.h5"), "wb").close()
        exported = run_script(["-m", "quantens.export", result_path])
        one_line_error(exported, 2, "is in use by train.py")
        os.remove(os.path.join(result_path, "ensemble.weights.h5"))
        assert open(os.path.join(result_path, "config.json")).read() == config
        assert before == {n: os.path.getmtime(os.path.join(result_path, n)) for n in before}
        assert json.loads(config)["width"] == 4
        # Ctrl-C mid-training: one line, exit 130, no final weights; the lock goes with it
        assert first.poll() is None, _output(str(tmp_path))[-3000:]
        assert history_epochs(result_path)[-1] < ENDLESS_EPOCHS
        assert not os.path.exists(os.path.join(result_path, "metrics.json"))  # written after fit
        first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
        stderr = _output(str(tmp_path))
        assert first.returncode == 130, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == (
            "train.py: interrupted: re-run the same command to resume")
        assert not os.path.exists(os.path.join(result_path, "ensemble.weights.h5"))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    done = history_epochs(result_path)
    resumed = run_script(["train.py", "--width", "4", "--epochs", str(done[-1] + 1),
                          "--data-dir", tfds_dir, "--result-path", result_path])
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # no manual step
    assert history_epochs(result_path) == list(range(1, done[-1] + 2))
    metrics = json.load(open(os.path.join(result_path, "metrics.json")))
    assert json.load(open(os.path.join(result_path, "config.json")))["width"] == 4
    assert sorted(metrics["test_accuracy"]) == ["1", "2", "32", "4", "8"]


# export killed (SIGKILL) after the SavedModel is written into its temporary folder
KILLED_EXPORT = """
import os, signal, sys
import quantens.export.ensemble_export as export  # where export_ensemble looks it up
from quantens.cli.export import main

save = export.save_serving_model
def killing(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

export.save_serving_model = killing
sys.exit(main())
"""


@pytest.mark.slow
def test_an_export_killed_midway_leaves_nothing_after_the_next_export(tmp_path, small):
    result_path = str(tmp_path / "r")
    trained = run_script(["train.py", *small, "--epochs", "1", "--bit-widths", "32", "1",
                          "--result-path", result_path])
    assert trained.returncode == 0, trained.stderr[-3000:]
    script = tmp_path / "killed_export.py"
    script.write_text(KILLED_EXPORT)
    killed = run_script([str(script), result_path, "--eval-examples", "8"],
                        env={"PYTHONPATH": ROOT})
    assert killed.returncode == -signal.SIGKILL
    stale = [n for n in os.listdir(result_path) if n.startswith(".export.")]
    assert stale and os.path.isdir(os.path.join(result_path, stale[0], "saved_model"))
    again = run_script(["-m", "quantens.export", result_path, "--eval-examples", "8"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert [n for n in os.listdir(result_path) if n.startswith(".export.")] == []
    assert os.path.isfile(os.path.join(result_path, "export", "member_1.tflite"))


@pytest.mark.parametrize("tf_config, phrase", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is outside its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
     "task type 'ps' is not a job"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a \"cluster\""),
])
def test_a_bad_tf_config_is_one_line_and_nothing_is_written(tmp_path, tf_config, phrase):
    result_path = tmp_path / "r"
    result = run_script(["train.py", "--result-path", str(result_path)],
                        env={"TF_CONFIG": tf_config})
    one_line_error(result, 2, phrase)
    assert not result_path.exists()


HOLD_AS_EXPORT = """
import sys
from quantens.locking import ResultDirLock

with ResultDirLock(sys.argv[1], "quantens.export"):
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test ends it, however long train.py takes
"""


def test_train_on_a_directory_an_export_holds_exits_2(tmp_path):
    result_path = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AS_EXPORT, str(result_path)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_script(["train.py", "--result-path", str(result_path)])
        one_line_error(result, 2, "in use by quantens.export", f"pid {holder.pid}")
        assert sorted(os.listdir(result_path)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
