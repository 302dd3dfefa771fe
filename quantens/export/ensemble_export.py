"""`export_ensemble`: every member of an ensemble written to one export directory;
`export_member`: one member, or a mix of per-layer bits, written to one file.

See `quantens.export` for what the directory holds. The directory (or the
file) is written under a temporary name beside it and renamed into place at
the end, so a failed export leaves nothing half-written.
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
from quantens.export.runtime import measure_latency
from quantens.export.saved_model import save_serving_model, serving_functions
from quantens.export.size import weight_bytes
from quantens.export.tflite import INT8, convert, member_file
from quantens.frontier import export_frontier
from quantens.layout import ResultDir

__all__ = ["EXPORT_REPORT_FILE", "SAVED_MODEL_DIR", "export_ensemble", "export_member",
           "remove_stale_exports", "summary_table"]

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

    Returns the content of export.json: per member its file, format, `bytes`
    (`weight_bytes`: filters as stored, `non_weight_bytes`: the rest),
    `latency_ms` (batch 1, 1 thread, XNNPACK on; `latency` says on which
    runtime), ops and, with `val_data`, `fidelity`; and `frontier`: each
    member on the accuracy-vs-bytes frontier or dominated, with the reason
    (`quantens.frontier.export_frontier`).

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
                **_weight_split(flatbuffer),
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
            entry.update(_latency(flatbuffer))
            report["members"][str(b)] = entry
        report["frontier"] = export_frontier(report["members"])
        report["export_seconds"] = round(time.time() - started, 1)
        write_json(os.path.join(tmp, EXPORT_REPORT_FILE), report)
        _replace_dir(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def export_member(ensemble, policy, path: str, calibration_data=None, val_data=None, *,
                  data=None, batch_size: int = 256, max_val_examples: int | None = None,
                  max_bn_examples: int | None = None, pack_int4: bool = True,
                  lce_int8: str = "exact") -> dict:
    """Writes one member of `ensemble`, or a mix of per-layer bits, to the TFLite file `path`.

    A mix is exported like a uniform member (`quantens.export.member_format`):
    every layer at 2..8 bits makes a full-integer int8 file, each layer's
    filter on its own grid (packed INT4 where that grid fits -8 ... 7); a
    layer at 1 bit makes a Larq Compute Engine file, binary convolutions where
    a 1-bit layer reads a 1-bit activation and the other layers as in the
    1-bit member's file (`lce_int8`); a layer above 8 bits, none at 1, a
    float32 file. Its fidelity to its Keras model is measured as
    `export_ensemble` measures a member's. `quantens.export.member_bytes`
    counts the file's bytes without writing it.

    Arguments:
        ensemble: a `QuantEnsemble`.
        policy: a member's bit-width, or a policy (`QuantEnsemble.member`:
            layer names or fnmatch patterns to bits of the ensemble, or a
            callable `layer -> bits`).
        path: the file to write (replaced if it exists; its directory is made).
        calibration_data: training inputs for the int8 file's ranges (needed
            when it has int8 ops).
        val_data: validation inputs (or `(x, y)`) on which to measure agreement.
        data: training inputs from which a mix's BN statistics are
            re-estimated (`QuantEnsemble.member(policy, data=...)`); default
            `calibration_data`; `False` keeps each BN's uniform member's
            statistics. Not taken with a bit-width (a uniform member has the
            ensemble's statistics).
        batch_size: batch size of the Keras predictions (>= 1).
        max_val_examples: check agreement on the first examples only.
        max_bn_examples: re-estimate BN statistics from at most this many
            examples of `data` (None: all).
        pack_int4, lce_int8: as in `export_ensemble`.

    Returns the file's record, as an entry of export.json's `members`:
    `file`, `policy` (the bit-width, or each policy layer's bits), `bits`
    (the bit-widths it uses), `format` (and `format_reason`, `lce`,
    `weights_storage`, `int8_weights`, `input_quantization` as they apply),
    `bytes`, `weight_bytes` and `non_weight_bytes` (`quantens.export.size.weight_bytes`:
    filters as stored, and the rest: scales, zero points, biases, graph),
    `ops`, `bn_statistics` (`"re-estimated"`, or where they come from),
    `convert_seconds`, and with `val_data` `fidelity` (top-1 agreement, logit
    differences, accuracies: `quantens.export.fidelity`) and `fidelity_seconds`.

    Raises:
        UsageError: (one line, before anything is written) not a
            QuantEnsemble; `path` empty, a directory or below a file;
            `batch_size`, `max_val_examples` or `max_bn_examples` below 1;
            an unknown `lce_int8`; a policy that does not fit the model;
            `data` with a bit-width.
        ExportError: a layer the export cannot take (one line naming it).

    ```python
    import os, tempfile
    import numpy as np
    import quantens
    from quantens.export import export_member, member_bytes
    from zoo import create_model

    model = create_model("digits_resnet_e", weights="digits_w8")  # 32 8 4 2 1 bits
    ensemble = quantens.QuantEnsemble(model, (32, 8, 4, 2, 1))
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    path = os.path.join(tempfile.mkdtemp(), "mixed.tflite")
    policy = {"block1_conv": 8, "block2_conv": 4, "*": 2}
    record = export_member(ensemble, policy, path, calibration_data=x, val_data=x)
    assert record["format"] == "int8" and record["bytes"] == os.path.getsize(path)
    assert record["bytes"] == member_bytes(ensemble, policy)
    assert record["weight_bytes"] + record["non_weight_bytes"] == record["bytes"]
    ```
    """
    from quantens.bits import is_policy, mix_bits
    from quantens.ensemble import QuantEnsemble, held_precision

    what = "export_member"
    if not isinstance(ensemble, QuantEnsemble):
        raise UsageError(
            f"{what}: ensemble must be a QuantEnsemble, got {type(ensemble).__name__}: "
            "wrap the model as quantens.QuantEnsemble(model, bit_widths)")
    path = _checked_file(path, what)
    _whole_number(batch_size, "batch_size", what=what)
    _whole_number(max_val_examples, "max_val_examples", allow_none=True, what=what)
    _whole_number(max_bn_examples, "max_bn_examples", allow_none=True, what=what)
    if lce_int8 not in LCE_INT8_CHOICES:
        raise UsageError(f"{what}: lce_int8 must be one of {', '.join(LCE_INT8_CHOICES)}, "
                         f"got {lce_int8!r}")
    mixed = is_policy(policy)
    if mixed:
        layer_bits = mix_bits(ensemble.model, policy, ensemble.bit_widths)
        named = {layer.name: layer_bits[layer.name] for layer in ensemble.model.layers
                 if layer.name in layer_bits and getattr(layer, "bits_follow", None) is None}
        data = calibration_data if data is None else None if data is False else data
    else:
        if data is not None and data is not False:
            raise UsageError(
                f"{what}: data re-estimates the BN statistics of a mix (a policy); member "
                f"{policy!r} is uniform and keeps the ensemble's statistics: leave data out")
        if policy not in ensemble.bit_widths:
            raise UsageError(f"{what}: no member with {policy!r} bits; the members are "
                             f"{' '.join(map(str, ensemble.bit_widths))}")
        layer_bits = int(policy)
    started = time.time()
    if mixed:
        import warnings

        with warnings.catch_warnings():
            # without data: the uniform members' statistics, recorded in bn_statistics
            warnings.simplefilter("ignore", UserWarning)
            member = ensemble.member(policy, data=data, max_examples=max_bn_examples,
                                     verbose=0)
    else:
        member = ensemble.member(layer_bits)
    flatbuffer, fmt, details = convert(member, layer_bits, calibration_data, pack_int4,
                                       lce_int8)
    grid_scales = details.pop("grid_scales", None)
    used = sorted(set(named.values()) if mixed else {layer_bits}, reverse=True)
    record: dict[str, Any] = {
        "file": os.path.basename(path),
        "policy": named if mixed else layer_bits,
        "bits": used,
        "format": fmt,
        **details,
        "bytes": len(flatbuffer),
        **_weight_split(flatbuffer),
        "ops": op_counts(flatbuffer),
        # a mix's BNs: re-estimated from data, or each the uniform member's of its bits
        "bn_statistics": ("re-estimated" if mixed and data is not None
                          else "the uniform members'" if mixed else "the ensemble's"),
    }
    if not mixed:
        record["held_precision"] = held_precision(ensemble.model, layer_bits)
    record["convert_seconds"] = round(time.time() - started, 2)
    if fmt == INT8:
        record["int8_weights"] = weights_report(flatbuffer, max(used), grid_scales)
        record["input_quantization"] = dict(zip(
            ("scale", "zero_point"), input_quantization(flatbuffer), strict=True))
    if val_data is not None:
        t0 = time.time()
        record["fidelity"] = fidelity(member, flatbuffer, val_data, batch_size,
                                      max_val_examples)
        record["fidelity_seconds"] = round(time.time() - t0, 2)
    record.update(_latency(flatbuffer))
    _write_file(path, flatbuffer)
    return record


def _weight_split(flatbuffer: bytes) -> dict:
    """export.json's `weight_bytes` (filters as stored) and `non_weight_bytes` (scales,
    zero points, biases, the graph: what no smaller grid can buy)."""
    split = weight_bytes(flatbuffer)
    return {"weight_bytes": split["weights"], "non_weight_bytes": split["non_weights"]}


def _latency(flatbuffer: bytes) -> dict:
    """export.json's `latency_ms` of a file and how it was measured (`latency`: batch 1, 1
    thread, XNNPACK on, the runtime; `quantens.export.runtime.measure_latency`, at most
    about a second)."""
    latency = measure_latency(flatbuffer, runs=200, max_seconds=1.0)
    return {"latency_ms": latency["ms"], "latency": latency}


def _checked_file(path, what: str) -> str:
    """`path` as an absolute file path that may be written (its directory made)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise UsageError(f"{what}: path must be the path of the .tflite file, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{what}: path {path} is a directory: give the file's path, "
                         "e.g. member.tflite inside it")
    above = os.path.dirname(path)
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UsageError(f"{what}: path {path} lies below {above}, a file: choose a path in "
                         "a directory")
    return path


def _write_file(path: str, content: bytes) -> None:
    """Writes `content` to `path` under a temporary name beside it, then renames it."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _whole_number(value, name: str, allow_none: bool = False,
                  what: str = "export_ensemble") -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        more = " or None" if allow_none else ""
        raise UsageError(f"{what}: {name} must be a whole number >= 1{more}, "
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
