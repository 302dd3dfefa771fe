"""A report of a training run that users can look at: Markdown and PNG plots.

```
python -m quantens.report RESULT_DIR
```

reads a result directory of `train.py` (`metrics.json`, and where present
`config.json`, `history.csv`, `export/export.json`) and writes into it:

```
report.md                 per member (and the teacher): validation and test accuracy,
                          a column each; size; training time, links to the plots
accuracy_per_bits.png     validation accuracy per member (bars), the teacher as a line
accuracy_vs_size.png      accuracy against the size of each member
training_curves.png       loss and accuracy per member and epoch (history.csv)
```

Member sizes are the bytes of the exported files (`export/export.json`, written
by `python -m quantens.export RESULT_DIR`) when there are any; otherwise they
are estimated from the model's parameter count: quantized kernels at the
member's bit-width, every other parameter (stem, classifier, biases, that
member's batch normalization) at 32 bits. The report says which.

Every file is written whole or not at all (temporary name, then rename).

```python
import tempfile
from quantens.report import ResultData, write_report

metrics = {"bit_widths": [32, 1], "target_bits": 1,
           "val_accuracy": {"32": 0.97, "1": 0.91}, "teacher_val_accuracy": None}
history = [{"epoch": 1.0, "accuracy_32": 0.8, "accuracy_1": 0.6, "loss": 1.2},
           {"epoch": 2.0, "accuracy_32": 0.9, "accuracy_1": 0.8, "loss": 0.7}]
result = ResultData(tempfile.mkdtemp(), metrics, {"model": "digits_resnet_e"}, history)
print(open(write_report(result)).read())
```

`python -m quantens.report RESULT_DIR` (`quantens.cli.report`) does the same
for a finished run: it reads the files once, and the model for the size
estimate from `model.json`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from quantens.errors import ReportError, ResultDirError, one_line
from quantens.layout import ResultDir

__all__ = [
    "EXPORT_REPORT",
    "PLOT_FILES",
    "REPORT_FILE",
    "SIZE_ESTIMATED",
    "SIZE_FROM_EXPORT",
    "ResultData",
    "estimate_member_bytes",
    "frontier_points",
    "load_result",
    "member_sizes",
    "parse_history",
    "plot_accuracy",
    "plot_accuracy_vs_size",
    "plot_frontier",
    "plot_training_curves",
    "render_markdown",
    "write_report",
]

REPORT_FILE = ResultDir.REPORT
PLOT_FILES = ResultDir.PLOTS
EXPORT_REPORT = ResultDir.EXPORT_REPORT
SIZE_FROM_EXPORT = "export"
SIZE_ESTIMATED = "estimate"

_RERUN = "run `python train.py --result-path {dir}` to (re)create it"


# -------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class ResultData:
    """What a report is made of: a run's metrics, flags, history and export report.

    `train.py` makes one in memory at the end of a run; `load_result` reads
    one from a finished run's result directory.
    """

    result_dir: str
    metrics: dict  # metrics.json
    config: dict  # config.json ({} when absent or unreadable)
    history: list[dict[str, float]]  # history.csv rows (parse_history), [] when absent
    export: dict | None = None  # export/export.json, None when absent or unreadable


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _read_json_file(path: str, what: str, result_dir: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}): the {what} "
            f"was cut short or edited; {_RERUN.format(dir=result_dir)}"
        ) from None
    except UnicodeDecodeError:
        raise ReportError(
            f"{path} is not a text file: {_RERUN.format(dir=result_dir)}"
        ) from None


def _check_metrics(metrics: Any, path: str, result_dir: str) -> dict:
    """Validates metrics.json: what the report reads must be there, of the right type."""
    fix = _RERUN.format(dir=result_dir)
    if not isinstance(metrics, dict):
        raise ReportError(f"{path} must hold a JSON object, not {type(metrics).__name__}; {fix}")
    bit_widths = metrics.get("bit_widths")
    if (
        not isinstance(bit_widths, list)
        or not bit_widths
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in bit_widths)
    ):
        raise ReportError(f"{path} has no list of integer \"bit_widths\"; {fix}")
    accuracy = metrics.get("val_accuracy")
    if not isinstance(accuracy, dict):
        raise ReportError(f"{path} has no \"val_accuracy\" object; {fix}")
    missing = [b for b in bit_widths if not _is_number(accuracy.get(str(b)))]
    if missing:
        raise ReportError(
            f"{path} has no numeric \"val_accuracy\" for "
            f"{', '.join(f'{b} bits' for b in missing)}; {fix}"
        )
    target = metrics.get("target_bits")
    if target is not None and target not in bit_widths:
        raise ReportError(f"{path}: \"target_bits\" {target!r} is not one of the bit-widths; {fix}")
    for key in ("teacher_val_accuracy", "train_seconds"):
        if metrics.get(key) is not None and not _is_number(metrics[key]):
            raise ReportError(f"{path}: \"{key}\" must be a number or null; {fix}")
    return metrics


def parse_history(rows) -> list[dict[str, float]]:
    """History rows (history.csv's strings or a run's floats) as floats, sorted by epoch.

    Empty or non-numeric cells are left out, and rows without an epoch.
    """
    parsed_rows = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                continue
        if "epoch" in parsed:
            parsed_rows.append(parsed)
    return sorted(parsed_rows, key=lambda r: r["epoch"])


def _read_history(path: str) -> list[dict[str, float]]:
    """history.csv as rows of floats ([] when absent or unreadable)."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return parse_history(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _read_export(path: str) -> dict | None:
    """export.json, or None when it is absent or unreadable (sizes are then estimated)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_result(result_dir: str) -> ResultData:
    """Reads and checks a result directory; raises one clear error if it cannot be used.

    Only metrics.json is required; config.json, history.csv and
    export/export.json are read (once each) when present.

    ```python
    from quantens.report import load_result

    try:
        load_result("/nonexistent")
    except FileNotFoundError as error:
        print(error)
    ```

    Raises:
        ResultDirError (a FileNotFoundError): the directory or its metrics.json
            does not exist.
        ReportError (a ValueError): metrics.json is not valid JSON or lacks
            what the report needs.
    """
    if not os.path.isdir(result_dir):
        raise ResultDirError(
            f"{result_dir} is not a directory: give the --result-path of a train.py run"
        )
    run = ResultDir(result_dir)
    metrics_path = run.metrics
    if not os.path.isfile(metrics_path):
        raise ResultDirError(
            f"{result_dir} has no metrics.json: it is not the result directory of a "
            f"finished train.py run; {_RERUN.format(dir=result_dir)}"
        )
    metrics = _check_metrics(
        _read_json_file(metrics_path, "metrics", result_dir), metrics_path, result_dir
    )
    config: dict = {}
    config_path = run.config
    if os.path.isfile(config_path):
        try:
            loaded = _read_json_file(config_path, "configuration", result_dir)
            config = loaded if isinstance(loaded, dict) else {}
        except ReportError:
            config = {}  # only needed for the title
    return ResultData(
        result_dir=result_dir,
        metrics=metrics,
        config=config,
        history=_read_history(run.history),
        export=_read_export(run.export_report),
    )


# ---------------------------------------------------------------------- sizes


def _quantized_kernel_bits(layer, bits: int) -> int:
    """The bit-width that `layer`'s kernel is stored at in member `bits`."""
    quantizer = getattr(layer, "kernel_quantizer", None)
    if quantizer is None:
        return 32
    if hasattr(quantizer, "for_bits"):  # switchable: follows the member
        return 32 if quantizer.for_bits(bits) is None else bits
    precision = getattr(quantizer, "precision", None)  # a fixed larq quantizer
    return int(precision) if isinstance(precision, int) else 32


def _layers(model) -> list:
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "branch"):
            layers += _layers(layer)  # a nested model
        else:
            layers.append(layer)
    return layers


def estimate_member_bytes(model, bit_widths: Sequence[int]) -> dict[int, int]:
    """Estimated bytes of each member: quantized kernels at b bits, the rest at 32.

    Counts, per member, every weight that member needs at inference: a
    quantized kernel at the member's bit-width (32 where its quantizer keeps
    full precision, e.g. `--fp-weights`), biases, full-precision layers and that
    member's own batch normalization (switchable BN) at 32 bits.

    ```python
    import quantens
    from quantens.report import estimate_member_bytes
    from zoo import create_model

    sizes = estimate_member_bytes(create_model("digits_resnet_e", bit_widths=(32, 1)), (32, 1))
    assert sizes[1] < sizes[32]
    ```
    """
    totals = {}
    for b in bit_widths:
        bits_total = 0
        for layer in _layers(model):
            if hasattr(layer, "branch"):  # SwitchableBatchNormalization: this member's BN
                weights = layer.branch(b).weights
            else:
                weights = layer.weights
            kernel = getattr(layer, "kernel", None) if hasattr(layer, "kernel_quantizer") else None
            kernel_name = getattr(kernel, "name", None)
            for w in weights:
                n = int(w.shape.num_elements() or 0)
                if kernel_name is not None and w.name == kernel_name:
                    bits_total += n * _quantized_kernel_bits(layer, b)
                else:
                    bits_total += n * 32
        totals[int(b)] = math.ceil(bits_total / 8)
    return totals


def _sizes_from_export(export: Mapping | None, bit_widths: Sequence[int]) -> dict[int, dict] | None:
    """Per member {"bytes", "file", ...} of export.json's content, or None if unusable."""
    members = export.get("members") if isinstance(export, Mapping) else None
    entries: dict[int, dict] = {}
    if isinstance(members, dict):
        items = list(members.items())
    elif isinstance(members, list):
        items = [(m.get("bits"), m) for m in members if isinstance(m, dict)]
    else:
        return None
    for key, entry in items:
        try:
            b = int(key)
        except (TypeError, ValueError):
            continue
        if isinstance(entry, dict) and _is_number(entry.get("bytes")) and entry["bytes"] > 0:
            entries[b] = entry
    if not all(b in entries for b in bit_widths):
        return None  # partial exports would mix two kinds of size in one plot
    return {b: entries[b] for b in bit_widths}


def member_sizes(result: ResultData, model=None) -> tuple[dict[int, int] | None, str, str]:
    """(bytes per member, source, a sentence saying where the sizes come from).

    `source` is `"export"` (the bytes of the exported files, `result.export`)
    or `"estimate"` (`estimate_member_bytes` of `model`, or of the model that
    the result directory's model.json records); the bytes are None when
    neither is possible.

    ```python
    from quantens.report import ResultData, member_sizes

    export = {"members": {"32": {"bytes": 40000}, "1": {"bytes": 9000}}}
    metrics = {"bit_widths": [32, 1], "val_accuracy": {"32": 0.9, "1": 0.8}}
    sizes, source, note = member_sizes(ResultData("run", metrics, {}, [], export))
    assert sizes == {32: 40000, 1: 9000} and source == "export"
    ```
    """
    bit_widths = [int(b) for b in result.metrics["bit_widths"]]
    exported = _sizes_from_export(result.export, bit_widths)
    if exported is not None:
        return (
            {b: int(e["bytes"]) for b, e in exported.items()},
            SIZE_FROM_EXPORT,
            f"bytes of the exported files in export/, from {EXPORT_REPORT}",
        )
    why_not = (
        f"no usable {EXPORT_REPORT}" if result.export is None
        else f"{EXPORT_REPORT} could not be read or lacks members"
    )
    name = result.config.get("model", "the model")
    if model is None:
        from quantens.results import read_model

        try:
            model = read_model(ResultDir(result.result_dir).model)
        except (OSError, ValueError) as error:  # no or a bad model.json: no estimate
            return None, SIZE_ESTIMATED, (
                f"unknown: {why_not}, and the model could not be rebuilt ({one_line(error)})"
            )
    return (
        estimate_member_bytes(model, bit_widths),
        SIZE_ESTIMATED,
        f"estimated ({why_not}) from the parameter count of {name}: "
        "quantized kernels at the member's bit-width, all other parameters at 32 bits",
    )


# ---------------------------------------------------------------------- plots


def _figure(width: float = 6.4, height: float = 4.0):
    # A Figure with its own Agg canvas: no pyplot state, no global backend change.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> None:
    from quantens.results import atomic_path

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def _bits_label(b: int) -> str:
    return "32 (float)" if b == 32 else str(b)


def plot_accuracy(metrics: Mapping[str, Any], path: str) -> None:
    """Bars of the validation accuracy per bit-width; the teacher as a line."""
    bit_widths = [int(b) for b in metrics["bit_widths"]]
    values = [float(metrics["val_accuracy"][str(b)]) for b in bit_widths]
    target = metrics.get("target_bits")
    figure = _figure()
    ax = figure.add_subplot()
    colors = ["tab:orange" if b == target else "tab:blue" for b in bit_widths]
    bars = ax.bar([_bits_label(b) for b in bit_widths], values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.4f}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    teacher = metrics.get("teacher_val_accuracy")
    if teacher is not None:
        ax.axhline(float(teacher), color="tab:red", linestyle="--",
                   label=f"teacher {float(teacher):.4f}")
        ax.legend(loc="lower left")
    ax.set_xlabel("bit-width of the member" + (f" (target {target} in orange)" if target else ""))
    ax.set_ylabel("validation accuracy")
    # headroom above the bars for their value labels
    ax.set_ylim(0, max(1.0, max([*values, float(teacher or 0)])) * 1.1)
    ax.set_title("Validation accuracy per member")
    _save(figure, path)


def _log_size_axis(ax, sizes) -> None:
    """A log x axis of sizes with plain tick labels (when every size is positive)."""
    if not sizes or min(sizes) <= 0:
        return
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)


def plot_accuracy_vs_size(
    metrics: Mapping[str, Any], sizes: Mapping[int, int], source: str, path: str
) -> None:
    """Accuracy against member size (KiB, log scale), one labelled point per member."""
    bit_widths = [int(b) for b in metrics["bit_widths"]]
    kib = [sizes[b] / 1024 for b in bit_widths]
    values = [float(metrics["val_accuracy"][str(b)]) for b in bit_widths]
    figure = _figure()
    ax = figure.add_subplot()
    ax.plot(kib, values, "o-", color="tab:blue")
    for b, x, y in zip(bit_widths, kib, values, strict=True):
        ax.annotate(f"{b} bit", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    teacher = metrics.get("teacher_val_accuracy")
    if teacher is not None:
        ax.axhline(float(teacher), color="tab:red", linestyle="--",
                   label=f"teacher {float(teacher):.4f}")
        ax.legend(loc="lower right")
    _log_size_axis(ax, kib)
    ax.set_xlabel("member size (KiB)")
    ax.set_ylabel("validation accuracy")
    how = ("sizes of the exported files" if source == SIZE_FROM_EXPORT
           else "sizes estimated from parameter counts")
    ax.set_title(f"Accuracy vs model size ({how})", fontsize=10)
    _save(figure, path)


def frontier_points(export: Mapping | None) -> list[dict]:
    """Every exported file of export.json (uniform members and budget members) as a point
    of the accuracy-vs-bytes frontier (`quantens.frontier`), marked, smallest first.

    The accuracy is that of the TFLite file on export.json's split
    (`fidelity.tflite_accuracy`), the one users deploy; `latency_ms` is kept
    where export.json has it.

    ```python
    from quantens.report import frontier_points

    export = {"members": {
        "4": {"bytes": 900, "format": "int8", "fidelity": {"tflite_accuracy": 0.98}},
        "2": {"bytes": 900, "format": "int8", "fidelity": {"tflite_accuracy": 0.92}}}}
    four, two = frontier_points(export)  # the same bytes: the more accurate first
    assert four["on_frontier"] and two["dominated_by"] == "4"
    ```
    """
    from quantens.frontier import frontier

    members = export.get("members") if isinstance(export, Mapping) else None
    if not isinstance(members, Mapping):
        return []
    points = []
    for name, entry in members.items():
        if not isinstance(entry, Mapping) or not _is_number(entry.get("bytes")):
            continue
        accuracy = (entry.get("fidelity") or {}).get("tflite_accuracy")
        try:
            bits = int(name)
        except (TypeError, ValueError):
            bits = entry.get("bits")
        points.append({
            "name": str(name), "bits": bits, "bytes": int(entry["bytes"]),
            "accuracy": float(accuracy) if _is_number(accuracy) else None,
            "latency_ms": entry.get("latency_ms"), "format": entry.get("format"),
            "file": entry.get("file"), "weights_storage": entry.get("weights_storage"),
            "policy": entry.get("policy"),
        })
    marked = frontier(points)
    return sorted(marked, key=lambda p: (p["bytes"], -(p["accuracy"] or 0)))


def plot_frontier(points: Sequence[Mapping[str, Any]], path: str) -> None:
    """The exported files' accuracy against bytes: the frontier as a line, a dominated
    member as a hollow marker with its name."""
    figure = _figure()
    ax = figure.add_subplot()
    judged = [p for p in points if p.get("accuracy") is not None]
    on = [p for p in judged if p["on_frontier"]]
    off = [p for p in judged if not p["on_frontier"]]
    if on:
        ax.plot([p["bytes"] / 1024 for p in on], [p["accuracy"] for p in on], "o-",
                color="tab:blue", label="frontier")
    if off:
        ax.plot([p["bytes"] / 1024 for p in off], [p["accuracy"] for p in off], "o",
                markerfacecolor="none", color="tab:red", label="dominated")
    labels: dict[tuple, list[str]] = {}  # one label per point, however many files share it
    for p in judged:
        labels.setdefault((p["bytes"], p["accuracy"]), []).append(
            str(p["name"]) + (" bit" if str(p["name"]).isdigit() else ""))
    for (size, accuracy), names in labels.items():
        ax.annotate(", ".join(names), (size / 1024, accuracy), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)
    _log_size_axis(ax, [p["bytes"] for p in judged])
    ax.set_xlabel("exported file (KiB)")
    ax.set_ylabel("accuracy of the TFLite file")
    ax.legend(loc="lower right")
    ax.set_title("Accuracy vs bytes of the exported files", fontsize=10)
    _save(figure, path)


def _frontier_lines(points: Sequence[Mapping[str, Any]], split: str | None) -> list[str]:
    lines = ["", "## Accuracy against bytes: the frontier", "",
             f"Each exported file's accuracy on `{split or 'the export split'}` (the TFLite "
             "file, as deployed) against its bytes. A member that another one beats at no "
             "more bytes is dominated: the last column says by which, and why.", "",
             "| member | format | bytes | KiB | TFLite accuracy | latency (ms) | frontier |",
             "|:-------|:-------|------:|----:|----------------:|-------------:|:---------|"]
    for p in points:
        accuracy = f"{p['accuracy']:.4f}" if p.get("accuracy") is not None else "?"
        latency = f"{p['latency_ms']:.3f}" if _is_number(p.get("latency_ms")) else "-"
        status = "on the frontier" if p["on_frontier"] else f"dominated: {p['reason']}"
        lines.append(f"| {p['name']} | {p.get('format') or '?'} | {p['bytes']} | "
                     f"{p['bytes'] / 1024:.1f} | {accuracy} | {latency} | {status} |")
    return lines


def plot_training_curves(
    history: Sequence[Mapping[str, float]], bit_widths: Sequence[int], path: str
) -> None:
    """Loss and accuracy per member and epoch: training solid, validation dashed."""
    figure = _figure(10.0, 4.0)
    loss_ax, acc_ax = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    epochs = [row["epoch"] for row in history]
    series = [(str(b), f"{b} bit", f"C{i % 10}") for i, b in enumerate(bit_widths)]
    if any("teacher_accuracy" in row or "val_teacher_accuracy" in row for row in history):
        series.append(("teacher", "teacher", "black"))
    for key, label, color in series:
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            for prefix, style in (("", "-"), ("val_", "--")):
                name = (f"{prefix}teacher_{metric}" if key == "teacher"
                        else f"{prefix}{metric}_{key}")
                points = [(row["epoch"], row[name]) for row in history if name in row]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, marker="o", markersize=3, color=color,
                            label=label if prefix == "" else None)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per member (solid: training, dashed: validation)", fontsize=9)
        if len(set(epochs)) <= 10:
            ax.set_xticks(sorted(set(epochs)))
    handles, labels = acc_ax.get_legend_handles_labels()
    if not handles:
        handles, labels = loss_ax.get_legend_handles_labels()
    if handles:
        acc_ax.legend(handles, labels, fontsize=8, loc="lower right")
    _save(figure, path)


# --------------------------------------------------------------------- report


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    minutes, rest = divmod(float(seconds), 60)
    if minutes >= 60:
        return f"{seconds:.1f} s ({int(minutes // 60)} h {int(minutes % 60)} min)"
    return f"{seconds:.1f} s ({int(minutes)} min {rest:.0f} s)" if minutes else f"{seconds:.1f} s"


def _fmt_bytes(n: int | None) -> str:
    return "?" if n is None else str(int(n))


def render_markdown(
    result: ResultData,
    sizes: Mapping[int, int] | None,
    size_note: str,
    plots: Mapping[str, str],
    exported: Mapping[int, Mapping[str, Any]] | None = None,
) -> str:
    """The text of report.md (pure: no files are read or written).

    `exported` is export.json's entry per member, when sizes come from it.
    """
    metrics, config, history = result.metrics, result.config, result.history
    bit_widths = [int(b) for b in metrics["bit_widths"]]
    target = metrics.get("target_bits")
    teacher = metrics.get("teacher_val_accuracy")
    title = " on ".join(str(config[k]) for k in ("model", "dataset") if config.get(k))
    lines = [f"# Training report{': ' + title if title else ''}", ""]
    lines.append(f"- result directory: `{os.path.abspath(result.result_dir)}`")
    lines.append(f"- members: {', '.join(f'{b} bit' for b in bit_widths)}")
    lines.append(f"- target bits: {target if target is not None else 'not recorded'}")
    if teacher is not None:
        lines.append(f"- teacher validation accuracy: {float(teacher):.4f}")
    else:
        lines.append("- teacher: none")
    lines.append(f"- training time: {_fmt_seconds(metrics.get('train_seconds'))}")
    if history:
        lines.append(f"- epochs: {len(history)} (history.csv)")
    test = metrics.get("test_accuracy") or {}
    best = metrics.get("best_test_accuracy") or {}
    validation_is_test = bool(test) and bool(metrics.get("validation_is_test"))
    if test:
        lines.append(
            f"- accuracy: validation on `{metrics.get('validation_split', 'validation')}` "
            f"(chooses the best checkpoint), test on `{metrics.get('test_split', 'test')}` "
            "(chooses nothing)"
            + ("; **validation is the test split** (pass --val-split to hold out part of "
               "train)" if validation_is_test else "")
        )
    # one column per split (validation, then test unless it is the same split), and
    # the test accuracy of the checkpoint that validation chose (when one was chosen)
    columns = [("validation (= test) accuracy" if validation_is_test
                else "validation accuracy", metrics["val_accuracy"],
                metrics.get("teacher_val_accuracy"))]
    if test and not validation_is_test:
        columns.append(("test accuracy", test, metrics.get("teacher_test_accuracy")))
    if test and best:
        columns.append(("best checkpoint's test accuracy", best, None))

    def accuracy_cells(values) -> str:
        return " | ".join(f"{float(v):.4f}" if _is_number(v) else "-" for v in values)

    lines += ["", "## Accuracy and size per member", ""]
    lines += [
        "| bits | " + " | ".join(c[0] for c in columns) + " | size (bytes) | size (KiB) | note |",
        "|-----:|" + "---:|" * len(columns) + "-------------:|-----------:|:-----|",
    ]
    for b in bit_widths:
        accuracies = accuracy_cells((values or {}).get(str(b)) for _, values, _ in columns)
        size = sizes.get(b) if sizes else None
        kib = f"{size / 1024:.1f}" if size is not None else "?"
        notes = []
        if b == target:
            notes.append("target")
        if b == 32:
            notes.append("full precision")
        entry = (exported or {}).get(b) or {}
        notes += [str(entry[k]) for k in ("file", "format") if entry.get(k)]
        tflite_accuracy = (entry.get("fidelity") or {}).get("tflite_accuracy")
        if _is_number(tflite_accuracy):
            notes.append(f"TFLite accuracy {tflite_accuracy:.4f}")
        lines.append(
            f"| {b} | {accuracies} | {_fmt_bytes(size)} | {kib} | {', '.join(notes)} |"
        )
    if teacher is not None:
        lines.append(f"| teacher | {accuracy_cells(t for _, _, t in columns)} | | | |")
    lines += ["", f"Sizes: {size_note}."]
    points = frontier_points(result.export)
    if points:
        lines += _frontier_lines(points, (result.export or {}).get("split"))
    lines += ["", "## Plots", ""]
    captions = {
        "accuracy": "Validation accuracy per bit-width",
        "size": "Accuracy vs model size",
        "frontier": "Accuracy vs bytes of the exported files (the frontier)",
        "curves": "Training curves per member",
    }
    for key, caption in captions.items():
        if key in plots:
            lines += [f"### {caption}", "", f"![{caption}]({plots[key]})", ""]
    if "curves" not in plots:
        lines += ["No training curves: history.csv is missing or has no rows.", ""]
    if "size" not in plots:
        lines += ["No accuracy-vs-size plot: the member sizes are unknown.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: ResultData | str, model=None) -> str:
    """Writes report.md and its PNG plots into the result directory; returns report.md's path.

    Arguments:
        result: a `ResultData` (what train.py has in memory at the end of a
            run), or the path of a finished run's result directory
            (`load_result`).
        model: the trained model, for the size estimate when nothing was
            exported (default: rebuilt from the directory's model.json).

    ```python
    import tempfile
    from quantens.report import ResultData, write_report

    metrics = {"bit_widths": [8, 1], "val_accuracy": {"8": 0.95, "1": 0.9}}
    path = write_report(ResultData(tempfile.mkdtemp(), metrics, {}, []))
    assert "| 1 | 0.9000 |" in open(path).read()
    ```

    Raises:
        ResultDirError: the directory or its metrics.json does not exist.
        ReportError: metrics.json is not valid JSON or lacks the accuracy per member.
    """
    if not isinstance(result, ResultData):
        result = load_result(result)
    result_dir = result.result_dir
    metrics = result.metrics
    bit_widths = [int(b) for b in metrics["bit_widths"]]
    sizes, source, size_note = member_sizes(result, model)
    plots = {}
    plot_accuracy(metrics, os.path.join(result_dir, PLOT_FILES["accuracy"]))
    plots["accuracy"] = PLOT_FILES["accuracy"]
    if sizes is not None:
        plot_accuracy_vs_size(metrics, sizes, source, os.path.join(result_dir, PLOT_FILES["size"]))
        plots["size"] = PLOT_FILES["size"]
    points = frontier_points(result.export)
    if any(p.get("accuracy") is not None for p in points):
        plot_frontier(points, os.path.join(result_dir, PLOT_FILES["frontier"]))
        plots["frontier"] = PLOT_FILES["frontier"]
    if result.history:
        plot_training_curves(
            result.history, bit_widths, os.path.join(result_dir, PLOT_FILES["curves"])
        )
        plots["curves"] = PLOT_FILES["curves"]
    from quantens.results import write_text

    path = os.path.join(result_dir, REPORT_FILE)
    exported = _sizes_from_export(result.export, bit_widths) if source == SIZE_FROM_EXPORT else None
    write_text(path, render_markdown(result, sizes, size_note, plots, exported))
    return path
