import os

import pytest
from conftest import ROOT, run_script
from seed_examples import EXAMPLES, flags

from quantens import cli


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
