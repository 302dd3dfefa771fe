"""`export_ensemble`: every member of an ensemble written to one export directory.

See `quantens.export` for what the directory holds. The directory is written
under a temporary name beside it and renamed into place at the end, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from quantens.errors import UsageError
from quantens.export.fidelity import fidelity
from quantens.export.flatbuffer import input_quantization, op_counts
from quantens.export.int8 import weights_report
from quantens.export.lce import LCE_INT8_CHOICES
from quantens.export.saved_model import save_serving_model, serving_functions
from quantens.export.tflite import INT8, convert, member_file
from quantens.layout import ResultDir

__all__ = ["EXPORT_REPORT_FILE", "SAVED_MODEL_DIR", "export_ensemble", "remove_stale_exports",
           "summary_table"]

EXPORT_REPORT_FILE = os.path.basename(ResultDir.EXPORT_REPORT)  # export.json
SAVED_MODEL_DIR = "saved_model"


def export_ensemble(ensemble, out_dir: str, val_data=None, calibration_data=None, *,
                    batch_size: int = 256, max_val_examples: int | None = None,
                    extra: Mapping[str, Any] | None = None,
                    remove_stale: bool = False, pack_int4: bool = True,
                    lce_int8: str = "exact") -> dict:
    """Writes `out_dir` (SavedModel, member_<b>.tflite, export.json) whole or not at all.

    Arguments:
        ensemble: a `QuantEnsemble`.
        out_dir: the export directory (replaced if it exists; not a file, nor
            the current directory or one above it).
        val_data: validation inputs (a dataset of (x, y) batches, an array, or
            an (x, y) tuple of arrays); fidelity is reported when given.
        calibration_data: training inputs for the ranges of the int8 members'
            full-precision tensors (needed when a member has 2..8 bits).
        batch_size: batch size for Keras predictions on numpy data (>= 1).
        max_val_examples: check fidelity on the first examples only (>= 1;
            None: all; the TFLite files run one example at a time).
        extra: more fields for export.json (e.g. the model name).
        remove_stale: first remove the temporary folders that killed exports
            of `out_dir` left beside it (`.export.*.tmp`, `.export.*.old`);
            only for a caller that owns the directory (`quantens.locking`).
        pack_int4: store filters whose integers fit -8 ... 7 as packed INT4
            (smaller files; XNNPACK runs only int8 filters, so they run on
            TFLite's builtin kernels); False keeps every filter int8.
        lce_int8: what the 1-bit member's LCE file makes of the layers LCE
            does not binarize: `"exact"` (float32 ops, their filters stored
            as int8 wherever int8 holds them exactly: the file computes what
            the member computes), `"full"` (int8 ops on ranges calibrated
            on `calibration_data`, as the int8 files: faster, smaller than
            `"none"` but no smaller than `"exact"` where that stores the
            filters as int8 already, and as far from the member as an int8
            file is) or `"none"` (float32). See `quantens.export.lce`.

    Returns the content of export.json.

    Raises:
        UsageError: (one line naming the argument, before anything is
            written) not a QuantEnsemble; `out_dir` empty, an existing file
            (or below one), or the current directory or one above it (the
            export replaces `out_dir`); `batch_size` or `max_val_examples`
            below 1; `extra` not a mapping; an unknown `lce_int8`.
        ExportError: a member that cannot be exported (one line naming why).

    ```python
    import tempfile
    import numpy as np
    import quantens
    from quantens.export import export_ensemble
    from zoo import create_model

    bits = (32, 8, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    report = export_ensemble(ensemble, tempfile.mkdtemp(), val_data=x, calibration_data=x)
    assert sorted(report["members"]) == ["1", "32", "8"]
    ```
    """
    out_dir = _checked_arguments(ensemble, out_dir, batch_size, max_val_examples, extra,
                                 lce_int8)
    from quantens.ensemble import held_precision
    from quantens.results import write_json

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if remove_stale:
        remove_stale_exports(out_dir)
    started = time.time()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        report: dict[str, Any] = {
            **dict(extra or {}),
            "bit_widths": list(ensemble.bit_widths),
            "target_bits": ensemble.target_bits,
            "input_shape": list(ensemble.model.input_shape[1:]),
            "saved_model": None,
            "members": {},
        }
        serving = serving_functions(ensemble)  # traced once: the SavedModel and fidelity
        report["saved_model"] = save_serving_model(ensemble, os.path.join(tmp, SAVED_MODEL_DIR),
                                                   serving)
        report["saved_model"]["seconds"] = round(time.time() - started, 2)
        for b in ensemble.bit_widths:
            t0 = time.time()
            member = ensemble.member(b)
            flatbuffer, fmt, details = convert(member, b, calibration_data, pack_int4,
                                               lce_int8)
            grid_scales = details.pop("grid_scales", None)
            entry: dict[str, Any] = {
                "file": member_file(b),
                "format": fmt,
                # layers the member keeps above its bits (policy, depthwise_bits)
                "held_precision": held_precision(ensemble.model, b),
                **details,
                "bytes": len(flatbuffer),
                "ops": op_counts(flatbuffer),
                "convert_seconds": round(time.time() - t0, 2),
            }
            if entry["format"] == INT8:
                entry["int8_weights"] = weights_report(flatbuffer, b, grid_scales)
                entry["input_quantization"] = dict(zip(
                    ("scale", "zero_point"), input_quantization(flatbuffer), strict=True))
            with open(os.path.join(tmp, member_file(b)), "wb") as f:
                f.write(flatbuffer)
            if val_data is not None:
                t0 = time.time()
                entry["fidelity"] = fidelity(member, flatbuffer, val_data, batch_size,
                                             max_val_examples, predict=_logits(serving[b]))
                entry["fidelity_seconds"] = round(time.time() - t0, 2)
            report["members"][str(b)] = entry
        report["export_seconds"] = round(time.time() - started, 1)
        write_json(os.path.join(tmp, EXPORT_REPORT_FILE), report)
        _replace_dir(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _whole_number(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        more = " or None" if allow_none else ""
        raise UsageError(f"export_ensemble: {name} must be a whole number >= 1{more}, "
                         f"got {value!r}")


def _checked_arguments(ensemble, out_dir, batch_size, max_val_examples, extra,
                       lce_int8) -> str:
    """`export_ensemble`'s arguments checked; returns `out_dir` as an absolute path."""
    from quantens.ensemble import QuantEnsemble

    if not isinstance(ensemble, QuantEnsemble):
        raise UsageError(
            f"export_ensemble: ensemble must be a QuantEnsemble, got {type(ensemble).__name__}: "
            "wrap the model as quantens.QuantEnsemble(model, bit_widths)"
        )
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise UsageError(
            f"export_ensemble: out_dir must be the path of the export directory, got {out_dir!r}"
        )
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(
            f"export_ensemble: out_dir {out_dir} is an existing file, not a directory: choose "
            "another path (the export is a directory of saved_model/, member_<b>.tflite and "
            "export.json)"
        )
    above = os.path.dirname(out_dir)
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UsageError(
            f"export_ensemble: out_dir {out_dir} lies below {above}, a file: choose a path in "
            "a directory"
        )
    cwd = os.getcwd()
    if cwd == out_dir or cwd.startswith(out_dir.rstrip(os.sep) + os.sep):
        raise UsageError(
            f"export_ensemble: out_dir {out_dir} is the current directory or one above it, "
            "and the export replaces out_dir: choose a directory of its own, e.g. ./export"
        )
    _whole_number(batch_size, "batch_size")
    _whole_number(max_val_examples, "max_val_examples", allow_none=True)
    if extra is not None and not isinstance(extra, Mapping):
        raise UsageError(
            "export_ensemble: extra must be a dict of fields for export.json, got "
            f"{type(extra).__name__}"
        )
    if lce_int8 not in LCE_INT8_CHOICES:
        raise UsageError(
            f"export_ensemble: lce_int8 must be one of {', '.join(LCE_INT8_CHOICES)}, "
            f"got {lce_int8!r}"
        )
    return out_dir


def _logits(serve):
    """A serving function as a numpy batch -> logits function."""
    return lambda x: serve(images=x)["logits"].numpy()


def remove_stale_exports(out_dir: str) -> list[str]:
    """Removes what killed exports of `out_dir` left beside it; returns the names removed.

    Only this module's own naming pattern: `.<name>.<random>.tmp` (an export
    being written) and `.<name>.<random>.old` (a previous export being
    replaced). Call it only while owning the result directory.

    ```python
    import os, tempfile
    from quantens.export import remove_stale_exports

    run = tempfile.mkdtemp()
    os.makedirs(os.path.join(run, ".export.k1ll3d.tmp", "saved_model"))
    assert remove_stale_exports(os.path.join(run, "export")) == [".export.k1ll3d.tmp"]
    ```
    """
    out_dir = os.path.abspath(out_dir)
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        if name.startswith(f".{base}.") and name.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(name)
    return removed


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Renames `tmp` to `out_dir`; an existing `out_dir` is swapped out, then removed."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".old",
                               dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary_table(report: Mapping[str, Any]) -> str:
    """export.json as a table: one line per member."""
    lines = ["bits  format   bytes       agreement  max|dlogit|  tflite acc  keras acc",
             "----  -------  ----------  ---------  -----------  ----------  ---------"]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    for b, entry in report["members"].items():
        fid = entry.get("fidelity") or {}
        lines.append(
            f"{b:>4}  {entry['format']:<7}  {entry['bytes']:>10}  "
            f"{fmt(fid.get('agreement'), '>9.4f')}  {fmt(fid.get('max_abs_logit_diff'), '>11.2e')}"
            f"  {fmt(fid.get('tflite_accuracy'), '>10.4f')}  "
            f"{fmt(fid.get('keras_accuracy'), '>9.4f')}"
        )
    return "\n".join(lines)
