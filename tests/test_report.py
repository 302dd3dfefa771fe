"""`python -m quantens.report RESULT_DIR`: report.md and PNG plots of a real run."""

import json
import os
import shutil

import pytest
from conftest import run_script

pytestmark = pytest.mark.slow  # end-to-end runs; `make test-fast` leaves them out

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BITS = (32, 8, 4, 2, 1)


@pytest.fixture(scope="module")
def run_dir(tfds_dir, tmp_path_factory):
    """A tiny real training run (2 epochs of one batch), untouched by the tests."""
    path = tmp_path_factory.mktemp("report") / "run"
    result = run_script(
        ["train.py", "--epochs", "2", "--test-run", "--width", "8", "--data-dir", tfds_dir,
         "--result-path", str(path)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # train.py writes the report itself; the tests start from a run without one
    for name in ("report.md", "accuracy_per_bits.png", "accuracy_vs_size.png",
                 "training_curves.png"):
        assert (path / name).is_file(), name
        (path / name).unlink()
    return path


@pytest.fixture(scope="module")
def reported(run_dir, tmp_path_factory):
    """A copy of the run with the report written by the command line."""
    path = tmp_path_factory.mktemp("reported") / "run"
    shutil.copytree(run_dir, path)
    result = run_script(["-m", "quantens.report", str(path)])
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result


@pytest.fixture
def run_copy(run_dir, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(run_dir, path)
    return path


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The accuracy table of report.md (its first table): first cell -> cells."""
    rows = {}
    for line in markdown.splitlines():
        if rows and not line.startswith("|"):
            break  # the end of the first table
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] and not set(cells[0]) <= set("-:"):
            rows[cells[0]] = cells
    return rows


def size_of(rows: dict[str, list[str]], bits) -> str:
    """The `size (bytes)` cell of a member's row (the columns before it vary)."""
    return rows[str(bits)][rows["bits"].index("size (bytes)")]


def test_command_writes_report_and_plots(reported):
    path, result = reported
    assert result.stdout.strip().splitlines()[-1] == str(path / "report.md")
    markdown = (path / "report.md").read_text()
    for name in ("accuracy_per_bits.png", "accuracy_vs_size.png", "training_curves.png"):
        assert (path / name).is_file(), name
        assert f"]({name})" in markdown  # linked from the report
    assert not [n for n in os.listdir(path) if ".tmp" in n]  # written atomically


def test_plots_are_readable_pngs(reported):
    import matplotlib.image
    from PIL import Image

    path, _ = reported
    for name in ("accuracy_per_bits.png", "accuracy_vs_size.png", "training_curves.png"):
        data = (path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(path / name) as image:
            image.verify()
        pixels = matplotlib.image.imread(str(path / name))
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500, (name, pixels.shape)
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"


def test_report_numbers_equal_metrics_json(reported):
    path, _ = reported
    metrics = json.loads((path / "metrics.json").read_text())
    markdown = (path / "report.md").read_text()
    rows = table_rows(markdown)
    assert metrics["bit_widths"] == list(BITS)
    header = rows["bits"]
    # one accuracy column per split, each header naming its split; nothing repeated
    assert header[1:4] == ["validation accuracy", "test accuracy",
                           "best checkpoint's test accuracy"]
    assert len(header) == len(set(header)), header
    assert not any("exact" in cell for cell in header)
    for b in BITS:
        cells = rows[str(b)]
        assert len(cells) == len(header)
        value = metrics["val_accuracy"][str(b)]
        assert cells[header.index("validation accuracy")] == f"{value:.4f}"
        assert cells[header.index("test accuracy")] == f"{metrics['test_accuracy'][str(b)]:.4f}"
        best = metrics["best_test_accuracy"][str(b)]
        assert cells[header.index("best checkpoint's test accuracy")] == f"{best:.4f}"
    assert "test on `test` (chooses nothing)" in markdown
    assert f"- target bits: {metrics['target_bits']}\n" in markdown
    assert "- teacher: none" in markdown
    assert f"- training time: {metrics['train_seconds']:.1f} s" in markdown
    assert "- epochs: 2 (history.csv)" in markdown
    assert "teacher" not in rows


def test_estimated_sizes_follow_the_parameter_count(reported):
    from conftest import tiny_model

    import quantens

    path, _ = reported
    markdown = (path / "report.md").read_text()
    assert "Sizes: estimated (no usable export/export.json)" in markdown
    size = {b: int(size_of(table_rows(markdown), b)) for b in BITS}
    model = tiny_model(BITS)
    # every member: each weight once, except the other members' batch normalization
    bn_per_member = sum(
        w.shape.num_elements() for layer in model.layers
        if isinstance(layer, quantens.SwitchableBatchNormalization)
        for w in layer.branch(1).weights
    )
    all_params = sum(w.shape.num_elements() for w in model.weights)
    full = all_params - (len(BITS) - 1) * bn_per_member
    assert size[32] == 4 * full
    quantized = sum(
        layer.kernel.shape.num_elements() for layer in model.layers
        if isinstance(layer, (quantens.QuantConv2D, quantens.QuantDense))
    )
    assert quantized > 0
    for b in BITS:
        # the quantized kernels shrink from 32 to b bits; nothing else changes
        assert size[b] == 4 * full - quantized * (32 - b) // 8


def test_sizes_come_from_export_json_when_present(run_copy):
    from quantens.report import write_report

    members = {
        str(b): {"file": f"member_{b}.tflite", "format": "x", "bytes": 1000 + b}
        for b in BITS
    }
    (run_copy / "export").mkdir()
    (run_copy / "export" / "export.json").write_text(json.dumps({"members": members}))
    markdown = open(write_report(str(run_copy))).read()
    rows = table_rows(markdown)
    for b in BITS:
        assert size_of(rows, b) == str(1000 + b)
        assert f"member_{b}.tflite" in rows[str(b)][rows["bits"].index("note")]
    assert "Sizes: bytes of the exported files" in markdown


def test_unreadable_export_json_falls_back_to_the_estimate(run_copy):
    from quantens.report import write_report

    (run_copy / "export").mkdir()
    (run_copy / "export" / "export.json").write_text('{"members": {"32": {"byt')
    markdown = open(write_report(str(run_copy))).read()
    assert "Sizes: estimated (export/export.json could not be read" in markdown
    assert all(int(size_of(table_rows(markdown), b)) > 0 for b in BITS)


def test_teacher_accuracy_is_reported_and_drawn(run_copy, reported):
    from quantens.report import write_report

    metrics_path = run_copy / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["teacher_val_accuracy"] = 0.98765
    metrics["teacher_test_accuracy"] = 0.97531
    metrics_path.write_text(json.dumps(metrics))
    markdown = open(write_report(str(run_copy))).read()
    assert "- teacher validation accuracy: 0.9877\n" in markdown
    rows = table_rows(markdown)
    assert len(rows["teacher"]) == len(rows["bits"])
    assert rows["teacher"][1:4] == ["0.9877", "0.9753", "-"]  # validation, test, best checkpoint
    import matplotlib.image

    with_teacher = matplotlib.image.imread(str(run_copy / "accuracy_per_bits.png"))
    without = matplotlib.image.imread(str(reported[0] / "accuracy_per_bits.png"))
    assert with_teacher.shape == without.shape
    # the teacher's line is red: pixels with much more red than blue and green
    red = (with_teacher[..., 0] > 0.7) & (with_teacher[..., 1] < 0.4) & (with_teacher[..., 2] < 0.4)
    red_without = (without[..., 0] > 0.7) & (without[..., 1] < 0.4) & (without[..., 2] < 0.4)
    assert red.sum() > red_without.sum() + 100


def test_validation_on_the_test_split_is_one_column():
    from quantens.report import ResultData, render_markdown

    accuracy = {"32": 0.9861111044883728, "1": 0.91}
    metrics = {"bit_widths": [32, 1], "target_bits": 1, "val_accuracy": accuracy,
               "test_accuracy": accuracy, "best_test_accuracy": None,
               "validation_is_test": True, "validation_split": "test", "test_split": "test"}
    markdown = render_markdown(ResultData("run", metrics, {}, []), None, "estimated", {})
    rows = table_rows(markdown)
    assert rows["bits"][:2] == ["bits", "validation (= test) accuracy"]
    assert "test accuracy" not in rows["bits"]  # the same numbers once, not twice
    assert "best checkpoint's test accuracy" not in rows["bits"]  # none was chosen
    assert rows["32"][1] == "0.9861" and "0.9861111044883728" not in markdown
    assert "**validation is the test split**" in markdown


def test_without_history_the_report_says_so(run_copy):
    from quantens.report import write_report

    os.remove(run_copy / "history.csv")
    markdown = open(write_report(str(run_copy))).read()
    assert "No training curves: history.csv is missing" in markdown
    assert not (run_copy / "training_curves.png").exists()
    assert (run_copy / "accuracy_per_bits.png").is_file()


def bad_result_dirs(run_dir, tmp_path):
    """(name, path) of result directories the report cannot use."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    text = (cut / "metrics.json").read_text()
    (cut / "metrics.json").write_text(text[: len(text) // 2])
    lacking = tmp_path / "lacking"
    shutil.copytree(run_dir, lacking)
    metrics = json.loads((lacking / "metrics.json").read_text())
    del metrics["val_accuracy"]["4"]
    (lacking / "metrics.json").write_text(json.dumps(metrics))
    return [("empty", empty), ("cut", cut), ("lacking", lacking),
            ("missing", tmp_path / "no_such_dir")]


def test_bad_input_is_one_line_and_exit_code_2(run_dir, tmp_path):
    for name, path in bad_result_dirs(run_dir, tmp_path):
        result = run_script(["-m", "quantens.report", str(path)])
        assert result.returncode == 2, (name, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("quantens.report: error: "), lines[0]
        assert str(path) in lines[0]
        assert not (path / "report.md").exists()
    usage = run_script(["-m", "quantens.report"])
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1


def test_bad_input_raises_a_clear_error_in_python(run_dir, tmp_path):
    from quantens.errors import ReportError, ResultDirError
    from quantens.report import write_report

    errors = {}
    for name, path in bad_result_dirs(run_dir, tmp_path):
        with pytest.raises((FileNotFoundError, ValueError)) as info:
            write_report(str(path))
        errors[name] = info
    # typed: ResultDirError is a FileNotFoundError, ReportError a ValueError
    assert errors["empty"].type is ResultDirError
    assert "no metrics.json" in str(errors["empty"].value)
    assert errors["cut"].type is ReportError and "not valid JSON" in str(errors["cut"].value)
    assert errors["lacking"].type is ReportError and "4 bits" in str(errors["lacking"].value)
    assert errors["missing"].type is ResultDirError
    for info in errors.values():
        assert "train.py" in str(info.value)  # says how to fix it

