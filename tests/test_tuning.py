"""`train.py --tune`: keras-tuner searches over train.py runs, best.json, resume."""

import json
import os

import pytest
from conftest import run_script

from quantens import cli, tuning
from quantens.cli import tune

SMALL = ["--test-run", "--width", "8", "--epochs", "1", "--bit-widths", "32", "1"]


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def trial_dirs(result_path):
    tuning_dir = os.path.join(result_path, "tuning")
    return sorted(d for d in os.listdir(tuning_dir) if d.startswith("trial_"))


@pytest.fixture(scope="module")
def search(tmp_path_factory, tfds_dir):
    """A 2-trial random search run as a user runs it."""
    result_path = str(tmp_path_factory.mktemp("search") / "run")
    argv = ["train.py", "--tune", "random", "--max-trials", "2", *SMALL,
            "--data-dir", tfds_dir, "--result-path", result_path]
    return argv, run_script(argv), result_path


@pytest.mark.slow
def test_random_search_runs_trials_and_writes_best_json(search):
    _, result, result_path = search
    assert result.returncode == 0, result.stderr[-3000:]
    assert trial_dirs(result_path) == ["trial_0", "trial_1"]
    scores = {}
    for trial in trial_dirs(result_path):
        directory = os.path.join(result_path, "tuning", trial)
        for name in ("config.json", "metrics.json", "ensemble.weights.h5", "trial.json"):
            assert os.path.exists(os.path.join(directory, name)), (trial, name)
        scores[trial] = (read(os.path.join(directory, "metrics.json"))["val_accuracy"]["1"],
                         read(os.path.join(directory, "config.json")))
    best = read(os.path.join(result_path, "tuning", "best.json"))
    best_score, best_config = max(scores.values(), key=lambda s: s[0])
    for flag in ("lr", "wd", "optimizer", "kd_mode"):
        assert best[flag] == best_config[flag]
    assert best["kd_mode"] in ("none", "progressive", "highest", "average")  # never simple
    # the recipe levers are searched: each trial's lowest member has its CE weight
    weights = [c["member_loss_weights"] for _, c in scores.values()]
    assert all(w[0][0] == 1 and w[0][1] in tuning.LOWEST_MEMBER_WEIGHTS for w in weights)
    assert best["width"] == 8 and best["epochs"] == 1
    assert not {"tune", "max_trials", "result_path", "test_run"} & set(best)
    # the end of the output: a table of the trials, the best one starred
    assert "val_accuracy_1" in result.stdout and "best flags:" in result.stdout
    table = result.stdout[result.stdout.index("random search: 2 trials"):]
    assert sum(line.startswith(("0", "1")) for line in table.splitlines()) == 2


@pytest.mark.slow
def test_best_json_trains_with_config(search, tmp_path, tfds_dir):
    _, _, result_path = search
    best_path = os.path.join(result_path, "tuning", "best.json")
    best = read(best_path)
    result = run_script(["train.py", "--config", best_path, "--test-run", "--data-dir",
                         tfds_dir, "--result-path", str(tmp_path / "best")])
    assert result.returncode == 0, result.stderr[-3000:]
    config = read(tmp_path / "best" / "config.json")
    for flag in ("lr", "wd", "optimizer", "kd_mode", "width", "bit_widths"):
        assert config[flag] == best[flag], flag


@pytest.mark.slow
def test_a_second_invocation_resumes_without_redoing_finished_trials(search):
    argv, _, result_path = search
    metrics = [os.path.join(result_path, "tuning", t, "metrics.json")
               for t in trial_dirs(result_path)]
    before = [os.stat(m).st_mtime_ns for m in metrics]
    result = run_script(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reloading Tuner" in result.stdout and "Running Trial" not in result.stdout
    assert [os.stat(m).st_mtime_ns for m in metrics] == before
    assert trial_dirs(result_path) == ["trial_0", "trial_1"]
    # other flags in the same result path: refused
    changed = run_script([*argv[:-2], "--width", "16", *argv[-2:]])
    assert changed.returncode == 2
    assert "holds a search with other flags (--width 8 -> 16)" in changed.stderr


# In-process searches with a stand-in for train.run: they test the search loop
# (oracles, trial directories, resume, best.json) without training networks.


def make_args(tmp_path, *flags):
    return cli.parse_args(["--epochs", "9", "--result-path", str(tmp_path / "run"), *flags])


class Recorder:
    """Returns an accuracy that grows with lr (so the best trial is known); records calls."""

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = [], interrupt_at

    def __call__(self, args):
        self.calls.append(args)
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # the user stops the search during this trial
        os.makedirs(args.result_path, exist_ok=True)
        return {"bit_widths": list(args.bit_widths), "target_bits": args.target_bits,
                "val_accuracy": {str(b): args.lr for b in args.bit_widths},
                "teacher_val_accuracy": None}


def test_search_space_offers_simple_kd_only_with_a_teacher(tmp_path):
    plain = make_args(tmp_path)
    taught = make_args(tmp_path, "--teacher", "cifar_resnet20_v1",
                       "--kd-teacher-mode", "untrained_external")
    assert tune.kd_modes(plain) == ["none", "progressive", "highest", "average"]
    assert tune.kd_modes(taught) == ["none", "progressive", "highest", "average", "simple"]
    space = tune.search_space(plain)
    assert [hp.name for hp in space.space] == [
        "lr", "wd", "optimizer", "kd_mode", "kd_temperature", "kd_weight", "kd_warmup_epochs",
        "kd_weight_lowest", "member_weight_lowest", "activation_method",
    ]
    assert tune.trial_args(plain, {"activation_method": "pact"}, None).activation_method \
        == "pact"
    det_sign = make_args(tmp_path, "--activation-method", "det_sign")
    assert "activation_method" not in [hp.name for hp in tune.search_space(det_sign).space]
    assert space.space[0].sampling == "log"


def test_recipe_levers_of_a_trial_become_flags_and_the_objective_can_be_the_mean(tmp_path):
    args = make_args(tmp_path, "--tune", "random", "--kd-mode", "progressive",
                     "--kd-weights", "32:0.5")  # the average mode teaches 32 bits
    trial = tune.trial_args(args, {"kd_mode": "average", "kd_warmup_epochs": 1.0,
                                     "kd_weight_lowest": 2.5, "member_weight_lowest": 3.0},
                              "/tmp/t")
    lowest = min(args.bit_widths)
    assert trial.kd_mode == "average" and trial.kd_warmup_epochs == 1.0
    assert trial.kd_weights == [[32, 0.5], [lowest, 2.5]]
    assert trial.member_loss_weights == [[lowest, 3.0]]
    assert args.kd_weights == [[32, 0.5]]  # the search's flags are untouched
    assert tune.objective_name(args) == f"val_accuracy_{args.target_bits}"
    mean = make_args(tmp_path, "--tune", "random", "--tune-objective", "mean")
    assert tune.objective_name(mean) == "val_accuracy_mean"
    metrics = {"val_accuracy": {"32": 0.9, "1": 0.5}}
    assert tuning.flat_metrics(metrics)["val_accuracy_mean"] == pytest.approx(0.7)


def test_trial_args_copy_the_flags_and_teacher_flags_follow_the_student(tmp_path):
    args = make_args(tmp_path, "--teacher", "cifar_resnet20_v1",
                     "--kd-teacher-mode", "untrained_external", "--teacher-wd", "0.5")
    trial = tune.trial_args(args, {"lr": 0.02, "wd": 1e-4, "optimizer": "sgd",
                                     "tuner/epochs": 3}, "/tmp/t")
    assert (trial.lr, trial.teacher_lr, trial.optimizer, trial.teacher_optimizer) == (
        0.02, 0.02, "sgd", "sgd")
    assert trial.wd == 1e-4 and trial.teacher_wd == 0.5  # given explicitly: kept
    assert trial.epochs == 3 and trial.result_path == "/tmp/t"
    assert args.lr == 0.005 and args.epochs == 9  # the search's flags are untouched


def test_random_search_in_process_picks_the_best_trial_and_resumes(tmp_path):
    run = Recorder()
    best = tune.tune(make_args(tmp_path, "--tune", "random", "--max-trials", "3"), run)
    assert len(run.calls) == 3
    assert best["lr"] == max(a.lr for a in run.calls)
    assert {os.path.basename(a.result_path) for a in run.calls} == {
        "trial_0", "trial_1", "trial_2"}
    # the saved best.json is accepted by --config and gives back these values
    best_path = tmp_path / "run" / "tuning" / "best.json"
    again = cli.parse_args(["--config", str(best_path)])
    assert (again.lr, again.optimizer, again.epochs) == (best["lr"], best["optimizer"], 9)
    # the same search with a larger budget runs only the new trials
    more = Recorder()
    tune.tune(make_args(tmp_path, "--tune", "random", "--max-trials", "5"), more)
    assert [os.path.basename(a.result_path) for a in more.calls] == ["trial_3", "trial_4"]


def test_an_interrupted_search_resumes_the_interrupted_trial(tmp_path):
    args = make_args(tmp_path, "--tune", "random", "--max-trials", "3")
    stopped = Recorder(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        tune.tune(args, stopped)
    resumed = Recorder()
    tune.tune(make_args(tmp_path, "--tune", "random", "--max-trials", "3"), resumed)
    # trial 0 is kept; trial 1 runs again in its own directory (its backup), then trial 2
    assert [os.path.basename(a.result_path) for a in resumed.calls] == ["trial_1", "trial_2"]
    assert resumed.calls[0].lr == stopped.calls[1].lr


def test_hyperband_gives_each_trial_its_epochs_budget(tmp_path):
    run = Recorder()
    tune.tune(make_args(tmp_path, "--tune", "hyperband", "--max-trials", "6"), run)
    epochs = [a.epochs for a in run.calls]
    assert len(epochs) == 6 and all(1 <= e <= 9 for e in epochs) and min(epochs) < 9


def test_bayesian_search_completes(tmp_path):
    run = Recorder()
    best = tune.tune(make_args(tmp_path, "--tune", "bayesian", "--max-trials", "4"), run)
    assert len(run.calls) == 4 and best["lr"] == max(a.lr for a in run.calls)


def test_a_search_whose_trials_all_fail_raises_search_failed(tmp_path):
    from quantens.errors import SearchFailed

    def failing(args):
        raise ValueError("the loss diverged")

    args = make_args(tmp_path, "--tune", "random", "--max-trials", "2")
    with pytest.raises(SearchFailed) as info:
        tune.tune(args, failing)
    assert info.value.exit_code == 1  # the command line exits 1, not 2: the flags were fine


def test_resuming_a_search_with_other_flags_is_a_typed_error(tmp_path):
    from quantens.errors import TuningError, UsageError

    tune.tune(make_args(tmp_path, "--tune", "random", "--max-trials", "1"), Recorder())
    changed = make_args(tmp_path, "--tune", "random", "--max-trials", "1", "--batch-size", "32")
    with pytest.raises(TuningError, match="other flags.*--batch-size 64 -> 32"):
        tune.tune(changed, Recorder())
    with pytest.raises(UsageError, match="--dry-run"):
        tune.tune(make_args(tmp_path, "--tune", "random", "--dry-run"), Recorder())


def test_a_search_on_a_directory_another_run_owns_is_refused(tmp_path):
    from quantens.errors import LockedError
    from quantens.locking import ResultDirLock

    args = make_args(tmp_path, "--tune", "random", "--max-trials", "1")
    with ResultDirLock(args.result_path, "train.py"):
        with pytest.raises(LockedError, match="in use by train.py"):
            tune.tune(args, Recorder())
    assert tune.tune(args, Recorder())  # free again once the owner is done


def test_the_search_library_takes_values_not_flags():
    """quantens.tuning (the library half) reads no argparse Namespace; quantens.cli.tune does."""
    import ast
    import pathlib

    source = pathlib.Path(tuning.__file__).read_text(encoding="utf-8")
    imported = {alias.name for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                           if isinstance(node, ast.ImportFrom)}
    assert "argparse" not in imported and "Namespace" not in source
    names = [hp.name for hp in tuning.search_space(epochs=2, teacher=True).space]
    assert "activation_method" not in names and "simple" in tuning.kd_modes(teacher=True)
    space = tuning.search_space(epochs=2, activation=True)
    warmup = [hp for hp in space.space if hp.name == "kd_warmup_epochs"][0]
    assert warmup.values == [0.0, 1.0]  # the choices below the 2 epochs
    assert "activation_method" in [hp.name for hp in space.space]
    assert tuning.objective_name(4) == "val_accuracy_4"
    assert tuning.objective_name(4, "mean") == "val_accuracy_mean"
    assert tuning.searches_activation("digits_resnet_e", "round")
    assert not tuning.searches_activation("mobilenet_v2", "round")
