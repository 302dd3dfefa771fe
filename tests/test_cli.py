import json
import os
import re

import h5py
import numpy as np
import pytest
from conftest import ROOT, run_script
from seed_examples import EXAMPLES, flags

from quantens import cli
from quantens.errors import UsageError


@pytest.mark.parametrize("n", sorted(EXAMPLES))
def test_all_five_seed_commands_parse(n):
    args = cli.build_parser().parse_args(flags(n, **{"--gpus": "0"}))
    assert args.model == "resnet18_e1"
    assert args.fp_downsample_sc and args.pool_downsample_sc
    assert args.clip_threshold == 1.3 and args.lr_mode == "cosine" and args.optimizer == "radam"
    assert args.result_path == f"../test_run{n}/"
    assert args.gpus == "0"
    if n == 3:
        assert args.bit_widths == [32, 8, 4, 2] and args.target_bits == 4
        assert args.teacher == "cifar_resnet110_v2" and args.kd_mode == "progressive"
        assert args.teacher_optimizer == "sgd" and args.teacher_lr == 0.1
    if n == 5:
        assert args.ensemble_teacher and args.resume == "first_stage.params"


def test_validation_sorts_bits_and_defaults_target_to_the_lowest(tmp_path):
    args = cli.parse_args(["--bit-widths", "1", "32", "4", "--result-path", str(tmp_path)])
    assert args.bit_widths == (32, 4, 1) and args.target_bits == 1
    assert args.lr_steps == (30.0, 60.0, 90.0)


def test_model_forms_get_sane_default_result_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model, dataset, expected in [
        ("mobilenet_v2", "cifar10", "mobilenet_v2_cifar10"),
        ("keras:EfficientNetB0", "cifar10", "keras_EfficientNetB0_cifar10"),
        ("models/my cnn.keras", "digits", "my_cnn_digits"),
        ("float.h5", "mnist", "float_mnist"),
    ]:
        args = cli.parse_args(["--model", model, "--dataset", dataset])
        assert args.result_path == os.path.join("results", expected)
    # a saved model's path is recorded absolute: config.json rebuilds it from anywhere
    args = cli.parse_args(["--model", "models/my cnn.keras"])
    assert args.model == str(tmp_path / "models" / "my cnn.keras")


def test_help_documents_every_flag_of_the_seed():
    text = cli.build_parser().format_help()
    for n in EXAMPLES:
        for word in flags(n, **{"--gpus": "0"}):
            if word.startswith("-"):
                assert word in text, word


BAD = [
    (["--bit-widths", "0"], "--bit-widths"),
    (["--bit-widths", "33"], "--bit-widths"),
    (["--bit-widths", "4", "4"], "--bit-widths"),
    (["--bit-widths", "8", "2", "--target-bits", "4"], "--target-bits"),
    (["--model", "resnet99"], "--model"),
    (["--model", "keras:NoSuchNet"], "--model"),
    (["--model", "missing/float.keras"], "--model"),
    (["--model", "mobilenet_v2", "--alpha", "0"], "--alpha"),
    (["--dataset", "imagenet1k"], "--dataset"),
    (["--data-dir", "/nonexistent/imagenet"], "--data-dir"),
    (["--optimizer", "adagrad"], "--optimizer"),
    (["--epochs", "0"], "--epochs"),
]


@pytest.mark.parametrize("argv, flag", BAD)
def test_bad_input_is_one_line_naming_the_flag_exit_2(argv, flag, tmp_path):
    result_path = tmp_path / "result"
    result = run_script(["train.py", *argv, "--result-path", str(result_path)])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "error" in lines[0]
    assert "Traceback" not in result.stderr
    assert not result_path.exists()


def test_corrupt_resume_file_is_one_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"this is not an HDF5 file" * 10)
    result_path = tmp_path / "result"
    result = run_script(["train.py", "--resume", str(corrupt), "--width", "8",
                         "--result-path", str(result_path)])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0], result.stderr
    assert not result_path.exists()


def test_help_is_complete_and_exits_0():
    result = run_script(["train.py", "--help"], cwd=ROOT)
    assert result.returncode == 0
    for flag in ("--kd-temperature", "--result_path", "--wd", "--dry-run", "--test-run"):
        assert flag in result.stdout
    assert "wd_mult" in result.stdout  # how --wd treats quantized kernels


def test_dry_run_summarises_each_member_and_writes_nothing(tmp_path):
    result_path = tmp_path / "result"
    result = run_script(["train.py", "--dry-run", "--bit-widths", "8", "1", "--width", "8",
                         "--result-path", str(result_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== member 8 bit" in result.stdout and "== member 1 bit" in result.stdout
    assert "1-bit MACs" in result.stdout
    assert not os.path.exists(result_path)


def test_resume_weights_of_another_ensemble_are_refused(tmp_path):
    from conftest import tiny_model

    other = tmp_path / "five_members.weights.h5"
    tiny_model((32, 8, 4, 2, 1)).save_weights(str(other))  # Keras would load it silently
    result_path = tmp_path / "result"
    result = run_script(["train.py", "--resume", str(other), "--width", "8",
                         "--bit-widths", "8", "1", "--result-path", str(result_path)])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "another architecture" in lines[0], result.stderr[-2000:]
    assert not result_path.exists()


def test_flag_choices_and_the_library_share_one_home():
    """The choice lists live in quantens.defaults (no TensorFlow); CLI and library import them."""
    from quantens import defaults, distillation, optimizers

    assert cli.OPTIMIZERS is optimizers.OPTIMIZERS is defaults.OPTIMIZERS
    assert cli.LR_MODES is optimizers.LR_MODES is defaults.LR_MODES
    assert cli.KD_MODES is distillation.KD_MODES is defaults.KD_MODES
    assert set(cli.KD_TEACHER_MODES) < set(distillation.TEACHER_MODES)
    parser = cli.build_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert choices["optimizer"] is defaults.OPTIMIZERS and choices["lr_mode"] is defaults.LR_MODES
    # the architecture defaults of train.py are defaults.ARCHITECTURE_DEFAULTS
    parsed = vars(parser.parse_args([]))
    assert {k: parsed[k] for k in defaults.ARCHITECTURE_DEFAULTS} == defaults.ARCHITECTURE_DEFAULTS


def _help_entries(text: str) -> dict[str, str]:
    """Option string -> its entry in `--help` (the flag line and the help under it, one line)."""
    entries, current = {}, []
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation = line.strip().split("  ")[0]
            current = [w for w in invocation.replace(",", " ").split() if w.startswith("-")]
            entries.update({flag: " ".join(line.split()) for flag in current})
        elif current and line.startswith("    ") and line.strip():
            for flag in current:
                entries[flag] += " " + " ".join(line.split())
        else:
            current = []
    return entries


def test_every_action_has_help_that_states_its_default_once():
    """A walk over the parser: no flag without help, each default said exactly once."""
    import argparse

    parser = cli.build_parser("train.py")
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        assert action.help and action.help.strip(), f"{flag} has no help text"
        expanded = formatter._expand_help(action)
        assert len(re.findall(r"\bdefault\b", expanded)) == 1, (flag, expanded)
        assert "default: None" not in expanded, (flag, expanded)
        if action.default is not None:  # argparse's own, not a hand-written one
            assert f"(default: {action.default})" in expanded, (flag, expanded)


@pytest.mark.parametrize("flag, default", [
    ("--epochs", "30"), ("--lr", "0.005"), ("--batch-size", "64"), ("--model", "digits_resnet_e"),
    ("--lr-steps", "30,60,90"), ("--kd-temperature", "4.0"), ("--clip-threshold", "1.3"),
    ("--max-trials", "10"), ("--log-interval", "50"), ("--optimizer", "adam"),
])
def test_help_prints_each_default_once(flag, default):
    text = cli.build_parser("train.py").format_help()
    entries = _help_entries(text)
    assert " ".join(text.split()).count(f"(default: {default})") == 1, flag
    assert f"(default: {default})" in entries[flag]
    assert entries[flag].count("default") == 1, entries[flag]


def test_help_ends_with_three_example_commands_that_parse():
    import shlex

    text = cli.build_parser("train.py").format_help()
    epilog = text[text.index("examples:"):]
    commands = [line.strip() for line in epilog.replace("\\\n", " ").splitlines()
                if line.strip().startswith("python ")]
    assert len(commands) == 3, epilog
    default, seed, export = (shlex.split(c) for c in commands)
    assert default == ["python", "train.py"]
    assert seed[:2] == ["python", "train.py"] and export[:3] == ["python", "-m", "quantens.export"]
    assert seed[2:] == shlex.split(EXAMPLES[4])[2:]  # the seed's example 4, verbatim
    args = cli.build_parser().parse_args(seed[2:])
    assert args.fp_weights and args.dataset == "cifar100" and args.result_path == "../test_run4/"
    assert cli.build_parser().parse_args([]).epochs == 30
    assert " \\\n    --clip-threshold 1.3" in epilog  # as written (RawDescription), not re-wrapped


def test_program_name_follows_the_console_script():
    assert cli.program_name("quantens-train", "train.py", "/venv/bin/quantens-train") == (
        "quantens-train")
    assert cli.program_name("quantens-train", "train.py", "quantens-train.exe") == "quantens-train"
    assert cli.program_name("quantens-train", "train.py", "/repo/train.py") == "train.py"
    assert cli.program_name("quantens-train", "train.py", "") == "train.py"
    assert cli.program_name("quantens-export", "quantens.export", "/v/bin/quantens-train") == (
        "quantens.export")
    assert set(cli.CONSOLE_SCRIPTS) == {"quantens-train", "quantens-export", "quantens-report",
                                        "quantens-evaluate"}


@pytest.mark.parametrize("argv0, train, export, report", [
    ("/venv/bin/quantens-train", "quantens-train", "quantens.export", "quantens.report"),
    ("/venv/bin/quantens-export", "train.py", "quantens-export", "quantens.report"),
    ("/venv/bin/quantens-report", "train.py", "quantens.export", "quantens-report"),
    ("train.py", "train.py", "quantens.export", "quantens.report"),
    ("/repo/quantens/export/__main__.py", "train.py", "quantens.export", "quantens.report"),
])
def test_usage_and_error_lines_name_the_program_started(argv0, train, export, report,
                                                        monkeypatch, capsys):
    from quantens.cli import export as export_cli
    from quantens.cli import report as report_cli

    monkeypatch.setattr("sys.argv", [argv0])
    parser = cli.build_parser()
    assert parser.prog == train and parser.format_usage().startswith(f"usage: {train} ")
    installed = train == "quantens-train"
    assert ("quantens-export RESULT_DIR" in parser.epilog) == installed
    assert ("python -m quantens.export RESULT_DIR" in parser.epilog) == (not installed)
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--epochs", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"{train}: error: --epochs")

    assert export_cli.build_parser().prog == export
    assert export_cli.main(["/nonexistent/run"]) == 2
    assert capsys.readouterr().err.startswith(f"{export}: error: ")

    assert report_cli.main(["/nonexistent/run"]) == 2
    assert capsys.readouterr().err.startswith(f"{report}: error: ")
    with pytest.raises(SystemExit):
        report_cli.main(["--help"])
    usage = "quantens-report" if report == "quantens-report" else "python -m quantens.report"
    assert capsys.readouterr().out.startswith(f"usage: {usage} ")


def test_python_forms_keep_their_program_names(tmp_path):
    help_ = run_script(["train.py", "--help"])
    assert help_.returncode == 0 and help_.stdout.startswith("usage: train.py ")
    bad = run_script(["train.py", "--epochs", "0", "--result-path", str(tmp_path / "r")])
    assert bad.returncode == 2 and bad.stderr.startswith("train.py: error: --epochs"), bad.stderr
    export = run_script(["-m", "quantens.export", str(tmp_path / "missing")])
    assert export.returncode == 2 and export.stderr.startswith("quantens.export: error: ")


RECIPE_BAD = [
    (["--kd-mode", "progressive", "--kd-weights", "2:1.0"], "--kd-weights names bit-widths [2] that are not members"),
    (["--kd-mode", "progressive", "--kd-weights", "1"], "is not BITS:VALUE"),
    (["--kd-mode", "progressive", "--kd-temperatures", "1:0"],
     "--kd-temperatures: the value for 1 bits must be a finite number > 0"),
    (["--kd-mode", "progressive", "--kd-weights", "1:1", "1:2"], "1 bits is given twice"),
    (["--member-loss-weights", "1:-1"],
     "--member-loss-weights: the value for 1 bits must be a finite number >= 0"),
    (["--kd-mode", "progressive", "--kd-warmup-epochs", "-1"], "--kd-warmup-epochs"),
    (["--kd-weights", "1:2"], "choose a --kd-mode"),
    (["--kd-mode", "progressive", "--kd-warmup-epochs", "30"], "covers all 30 training epochs"),
    (["--tune-objective", "16"], "--tune-objective must be"),
]


@pytest.mark.parametrize("argv, message", RECIPE_BAD)
def test_recipe_flags_are_checked_against_the_members(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([*argv, "--bit-widths", "32", "4", "1", "--result-path", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_recipe_flags_parse_into_member_pairs_that_survive_config_json(tmp_path):
    argv = ["--kd-mode", "average", "--kd-warmup-epochs", "2", "--kd-weights", "1:2", "4:0.5",
            "--kd-temperatures", "1:2", "--member-loss-weights", "1:1.5",
            "--bit-widths", "32", "4", "1", "--result-path", str(tmp_path / "run")]
    args = cli.parse_args(argv)
    assert args.kd_weights == [[1, 2.0], [4, 0.5]] and args.kd_temperatures == [[1, 2.0]]
    assert args.member_loss_weights == [[1, 1.5]] and args.kd_warmup_epochs == 2.0
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in vars(args).items()
                                  if k in ("kd_weights", "member_loss_weights")}))
    again = cli.parse_args(["--kd-mode", "average", "--config", str(config), "--bit-widths",
                            "32", "4", "1", "--result-path", str(tmp_path / "run2")])
    assert again.kd_weights == args.kd_weights
    assert again.member_loss_weights == args.member_loss_weights


def test_a_saved_float_model_teaches_its_members_by_default_and_a_flag_turns_it_off(tmp_path):
    path = str(tmp_path / "cnn.keras")  # parse_args checks flags, not the file
    on = cli.parse_args(["--model", path, "--result-path", str(tmp_path / "r")])
    assert on.float_teacher is True and on.kd_mode == "simple"
    assert cli.config_dict(on)["float_teacher"] is True
    kept = cli.parse_args(["--model", path, "--kd-mode", "progressive"])
    assert kept.float_teacher and kept.kd_mode == "progressive"
    off = cli.parse_args(["--model", path, "--no-float-teacher"])
    assert off.float_teacher is False and off.kd_mode == "none"
    zoo_model = cli.parse_args(["--model", "mobilenet_v2"])  # no trained float weights
    assert zoo_model.float_teacher is False and zoo_model.kd_mode == "none"
    other = cli.parse_args(["--model", path, "--teacher", "resnet18",
                            "--kd-teacher-mode", "untrained_external"])
    assert other.float_teacher is False  # another teacher chosen: no float teacher
    parse = cli.build_parser().parse_args
    with pytest.raises(UsageError, match="--model mobilenet_v2 has no trained float weights"):
        cli.validate(parse(["--model", "mobilenet_v2", "--float-teacher"]))
    weights = tmp_path / "teacher.weights.h5"
    with h5py.File(weights, "w") as f:
        f["w"] = np.zeros(2)
    with pytest.raises(UsageError, match="--float-teacher and --ensemble-teacher exclude"):
        cli.validate(parse(["--model", path, "--float-teacher", "--ensemble-teacher",
                            "--teacher-params", str(weights)]))


def test_the_command_line_and_the_zoo_share_one_one_line_parser(capsys):
    """`quantens.argparsing.OneLineParser` is the only one: cli.Parser and zoo.evaluate's."""
    import zoo.evaluate
    from quantens.argparsing import OneLineParser

    assert cli.Parser is OneLineParser and zoo.evaluate.OneLineParser is OneLineParser
    assert isinstance(cli.build_parser(), OneLineParser)
    parser = OneLineParser(prog="python -m demo", error_prog="demo")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--n", "x"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "demo: error: argument --n: invalid int value: 'x' (see --help)\n"
    with pytest.raises(SystemExit) as stop:
        parser.fail("no such file")
    assert stop.value.code == 2 and capsys.readouterr().err == "demo: error: no such file\n"
    with pytest.raises(SystemExit):
        zoo.evaluate.main([])
    err = capsys.readouterr().err
    assert err.startswith("python -m zoo.evaluate: error: ") and err.endswith("(see --help)\n")
    assert err.count("\n") == 1
