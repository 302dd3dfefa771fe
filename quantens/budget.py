"""Members chosen by budget: the per-layer precision of highest validation accuracy that fits.

`search_policy(ensemble, val_data, max_bytes=..., train_data=...)` returns the
mix (`QuantEnsemble.member(policy)`: each conv and dense layer at one of the
ensemble's bit-widths) whose exported file fits `max_bytes` and that scores
best on `val_data`. Bytes are those of the real export format, counted exactly
without exporting (`quantens.export.member_bytes`). The search:

1. **Sensitivity.** For every layer and every lower bit-width, the mean KL
   divergence of the top member's predictions to those of the top member with
   only that layer lowered (`quantens.bits(policy)`, the ensemble's own BN
   statistics), on at most `max_sensitivity_examples` validation images.
2. **Greedy.** Down: from every layer at the top bit-width, lower one layer
   at a time, the step of least sensitivity per byte saved, until the file
   fits. Up: from that mix and from every uniform member that fits, spend
   what the budget has left, raising the layer whose step up buys most
   sensitivity per byte. (Bytes are not monotonic in the bits: a 1-bit layer
   makes an int8 file an LCE file, whose other layers are stored as int8.)
3. **Choice.** Each candidate (the greedy mixes, and every uniform member that
   fits) is built with its own BN statistics re-estimated from `train_data`
   and scored on `val_data`; the most accurate wins (on a tie, the one of
   lower validation cross-entropy).
   A uniform member that fits is always a candidate: the result is never
   less accurate on validation than one of them.

It reads only the data it is given: pass training and validation images,
never the test split.

```python
import numpy as np
import quantens
from quantens.budget import search_policy
from quantens.export import member_bytes
from zoo import create_model

bits = (8, 4, 2)
ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits),
                                  bits)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
y = rng.integers(0, 10, 64)
sizes = {b: member_bytes(ensemble, b) for b in bits}
result = search_policy(ensemble, (x, y), max_bytes=(sizes[8] + sizes[2]) // 2, train_data=x,
                       verbose=0)
assert result.bytes <= (sizes[8] + sizes[2]) // 2
```
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from quantens.defaults import KB
from quantens.errors import UsageError

__all__ = [
    "PolicySearchResult", "budget_name", "export_budget_members", "export_result_budgets",
    "search_policy",
]


@dataclasses.dataclass
class PolicySearchResult:
    """What `search_policy` found: the chosen `policy` (layer name -> bits), its
    exported `bytes`, its `accuracy` on the validation data, and every
    `candidates` entry it scored (`{"name", "policy", "bytes", "accuracy", "loss"}`:
    the loss is the validation cross-entropy that breaks ties of accuracy)."""

    policy: dict[str, int]
    bytes: int
    accuracy: float
    max_bytes: int
    candidates: list[dict]
    seconds: float
    sensitivity: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def uniform_bits(self) -> int | None:
        """The bit-width when the chosen policy is a uniform member, else None."""
        values = set(self.policy.values())
        return values.pop() if len(values) == 1 else None


def _arrays(data, max_examples: int | None, what: str):
    from quantens.export.common import iter_batches

    xs, ys = [], []
    count = 0
    for x, y in iter_batches(data):
        xs.append(np.asarray(x))
        ys.append(None if y is None else np.asarray(y))
        count += len(x)
        if max_examples is not None and count >= max_examples:
            break
    if not xs:
        raise UsageError(f"{what} is empty: pass images (and labels) of the {what} split")
    x = np.concatenate(xs)[:max_examples]
    y = None if any(v is None for v in ys) else np.concatenate(ys)[:max_examples]
    return x, y


def _progress(total: int, verbose) -> Callable[[], None]:
    if not verbose:
        return lambda: None
    import tensorflow as tf

    bar = tf.keras.utils.Progbar(total, unit_name="mix")
    state = {"done": 0}

    def step():
        state["done"] += 1
        bar.update(state["done"])

    return step


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logits(model, x: np.ndarray, policy, batch_size: int = 256) -> np.ndarray:
    from quantens.bits import bits as bits_scope

    out = []
    with bits_scope(policy):
        for start in range(0, len(x), batch_size):
            out.append(np.asarray(model(x[start:start + batch_size], training=False)))
    return np.concatenate(out).astype("float64")


def _kl(reference: np.ndarray, logits: np.ndarray) -> float:
    p_log = _log_softmax(reference)
    return float(np.mean(np.sum(np.exp(p_log) * (p_log - _log_softmax(logits)), axis=-1)))


def _scores(model, x, y, batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model`'s logits on `(x, y)`."""
    logits = np.concatenate([np.asarray(model(x[start:start + batch_size], training=False))
                             for start in range(0, len(x), batch_size)]).astype("float64")
    labels = np.asarray(y).reshape(-1).astype(int)
    log_p = _log_softmax(logits)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    return accuracy, float(-np.mean(log_p[np.arange(len(labels)), labels]))


def _descend(layers, choices, sensitivity, size, max_bytes):
    """From every layer at the top bit-width, lower the step of least sensitivity per byte
    saved until the policy fits; None when no step saves bytes before it fits."""
    policy = dict.fromkeys(layers, choices[0])
    current = size(policy)
    while current > max_bytes:
        best = None
        for name in layers:
            # the next lower bits that saves bytes (a 4-bit grid stored as int8 saves none)
            for b in choices[choices.index(policy[name]) + 1:]:
                lower = {**policy, name: b}
                saved = current - size(lower)
                if saved > 0:
                    break
            else:
                continue
            cost = sensitivity[name][b] - sensitivity[name][policy[name]]
            ratio = max(cost, 0.0) / saved
            if best is None or ratio < best[0]:
                best = (ratio, lower)
        if best is None:
            return None
        policy = best[1]
        current = size(policy)
    return policy


def _raise(policy, layers, choices, sensitivity, size, max_bytes):
    """Spend the budget's slack: raise the layer whose step up buys most sensitivity per
    byte, while the policy fits."""
    current = size(policy)
    while True:
        best = None
        for name in layers:
            for b in reversed(choices[:choices.index(policy[name])]):  # next higher first
                higher = {**policy, name: b}
                grown = size(higher)
                gain = sensitivity[name][policy[name]] - sensitivity[name][b]
                if grown <= max_bytes and gain > 0:
                    ratio = gain / max(grown - current, 1)
                    if best is None or ratio > best[0]:
                        best = (ratio, higher, grown)
                    break
        if best is None:
            return policy
        policy, current = best[1], best[2]


def search_policy(
    ensemble,
    val_data,
    max_bytes: int,
    *,
    train_data=None,
    bit_widths: Sequence[int] | None = None,
    max_val_examples: int | None = 2048,
    max_sensitivity_examples: int = 256,
    max_train_examples: int | None = 2048,
    size: Callable[[dict], int] | None = None,
    sensitivity: dict[str, dict[int, float]] | None = None,
    verbose="auto",
) -> PolicySearchResult:
    """The per-layer policy of highest validation accuracy whose exported file fits `max_bytes`.

    Arguments:
        ensemble: a trained `QuantEnsemble`.
        val_data: validation images and labels: `(x, y)` arrays or a batched
            dataset of `(x, y)`; at most `max_val_examples` are read. Never the
            test split. A `quantens.run.Datasets` gives its validation split
            (and its training split as `train_data`); its test split is not read.
        max_bytes: the budget, in bytes of the exported `.tflite` file.
        train_data: training images (any form `quantens.calibrate` takes) to
            re-estimate each candidate's BN statistics; None keeps the uniform
            members' (and costs accuracy: see `QuantEnsemble.member`).
        bit_widths: the bit-widths a layer may take (default: the ensemble's
            members of at most 8 bits; 32-bit layers make a float file).
        size: `policy -> bytes` (default: `quantens.export.member_bytes`'s
            count, exact for int8 files and uniform members; a mix that makes
            an LCE or float32 file is counted within
            `quantens.export.size.ESTIMATE_TOLERANCE` and taken at the upper
            end of that bound, so that its file fits).
        sensitivity: a previous result's `sensitivity` (the same ensemble,
            weights and validation data) to search another budget without
            measuring it again.
        verbose: a progress bar (`"auto"`: when stdout is a terminal).

    Raises:
        UsageError: a budget that no policy fits (naming the smallest file),
            bit-widths that are not members, or empty data.
    """
    import sys

    from quantens.bits import check_bit_width

    started = time.time()
    if hasattr(val_data, "validation") and hasattr(val_data, "train"):  # a run.Datasets
        bundle = val_data  # its test split is never read
        val_data = bundle.validation
        train_data = bundle.train if train_data is None else train_data
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    members = tuple(ensemble.bit_widths)
    if bit_widths is None:
        bit_widths = [b for b in members if b <= 8] or list(members)
    choices = sorted({check_bit_width(b) for b in bit_widths}, reverse=True)
    strangers = [b for b in choices if b not in members]
    if strangers:
        raise UsageError(f"bit_widths {strangers} are not members of the ensemble "
                         f"({' '.join(map(str, members))})")
    max_bytes = int(max_bytes)
    if size is None:
        from quantens.export.size import ESTIMATE_TOLERANCE, member_sizes

        sizes = member_sizes(ensemble)

        def size(policy):  # an estimate (an LCE or float32 mix) at its upper bound
            if len(set(policy.values())) == 1:  # a uniform member's file: exact
                return sizes.bytes(next(iter(policy.values())))
            counted = sizes.breakdown(policy)
            if counted["exact"]:
                return counted["bytes"]
            return math.ceil(counted["bytes"] * (1 + ESTIMATE_TOLERANCE))

    from quantens.bits import policy_layers

    model = ensemble.model
    layers = policy_layers(model)
    # the smallest uniform file (not always the lowest bits: an LCE file of 1-bit layers
    # stores what it cannot binarize as int8, and may outweigh INT4 filters)
    smallest, smallest_bits = min((size(dict.fromkeys(layers, b)), b) for b in choices)
    if smallest > max_bytes:
        raise UsageError(
            f"no member of this ensemble fits {max_bytes:,} bytes: the smallest uniform file "
            f"(every layer at {smallest_bits} bits) has {smallest:,} bytes; raise the budget"
        )

    x_val, y_val = _arrays(val_data, max_val_examples, "validation data")
    if y_val is None:
        raise UsageError("validation data has no labels: pass (images, labels)")
    x_sense = x_val[:max_sensitivity_examples]
    train = None if train_data is None else _arrays(train_data, max_train_examples,
                                                    "training data")[0]

    # 1. sensitivity of each layer at each lower bit-width
    top = choices[0]
    known = sensitivity or {}
    if not all(b in known.get(name, {}) for name in layers for b in choices):
        reference = _logits(model, x_sense, {"*": top})
        known = {name: {top: 0.0} for name in layers}
        tick = _progress(len(layers) * (len(choices) - 1), verbose)
        for name in layers:
            for b in choices[1:]:
                known[name][b] = _kl(reference, _logits(model, x_sense, {name: b, "*": top}))
                tick()
    sensitivity = known

    # 2. greedy: down from the top to the budget, and up from each uniform member that
    # fits, spending the slack (file formats make bytes not monotonic in the bits: a
    # 1-bit layer turns an int8 file into an LCE file)
    candidates = []
    for b in choices:
        policy = dict.fromkeys(layers, b)
        if size(policy) <= max_bytes:
            candidates.append({"name": f"uniform {b}-bit", "policy": policy})
    searched = []
    descended = _descend(layers, choices, sensitivity, size, max_bytes)
    if descended is not None:
        searched.append(("greedy down", descended))
    for uniform in list(candidates):
        bits_of = next(iter(uniform["policy"].values()))
        searched.append((f"greedy up from {bits_of}-bit",
                         _raise(uniform["policy"], layers, choices, sensitivity, size,
                                max_bytes)))
    for name, policy in searched:
        if descended is not None and name == "greedy down":
            policy = _raise(policy, layers, choices, sensitivity, size, max_bytes)
        if policy not in [c["policy"] for c in candidates]:
            candidates.append({"name": name, "policy": policy})
    import warnings

    for candidate in candidates:
        policy = candidate["policy"]
        uniform = len(set(policy.values())) == 1
        if uniform:
            member = ensemble.member(next(iter(policy.values())))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # without train_data: the documented cost
                member = ensemble.member(policy, data=train, verbose=0)
        candidate["bytes"] = size(policy)
        candidate["accuracy"], candidate["loss"] = _scores(member, x_val, y_val)
    # the most accurate; on a tie (a small validation split) the lower cross-entropy
    best = max(candidates, key=lambda c: (c["accuracy"], -c["loss"], -c["bytes"]))
    if not math.isfinite(best["accuracy"]):
        raise UsageError("the validation accuracy of every candidate is not a number")
    return PolicySearchResult(
        policy=dict(best["policy"]), bytes=int(best["bytes"]), accuracy=best["accuracy"],
        max_bytes=max_bytes, candidates=candidates, seconds=round(time.time() - started, 2),
        sensitivity=sensitivity,
    )




def budget_name(max_bytes: int) -> str:
    """The name of the budget member of `max_bytes` in export.json and its file name:
    `budget_300kb` (`member_budget_300kb.tflite`).

    ```python
    from quantens.budget import budget_name

    assert budget_name(300_000) == "budget_300kb" and budget_name(12_500) == "budget_12.5kb"
    ```
    """
    return f"budget_{max_bytes / KB:g}kb"


def export_budget_members(ensemble, budgets, out_dir: str, *, train_data, val_data,
                          test_data=None, calibration_data=None, batch_size: int = 256,
                          max_test_examples: int | None = None, verbose="auto") -> dict:
    """For each budget (bytes), the most accurate member that fits, searched and exported.

    `search_policy(ensemble, val_data, budget, train_data=train_data)` chooses
    the policy (validation only); `quantens.export.export_member` writes
    `out_dir/member_budget_<kB>kb.tflite` (its BN statistics re-estimated from
    `train_data`, its int8 ranges from `calibration_data`, default
    `train_data`) and checks the file against its Keras model on `test_data`
    (after every search). Each record (as `export_member` returns it, with
    `search`: the budget, validation accuracy, seconds and the candidates
    scored, and `latency_ms`) is added to `out_dir/export.json`'s `members`
    under `budget_name(budget)`, and its `frontier` is rewritten. Returns
    `{name: record}`.
    """
    from quantens.export import export_member
    from quantens.frontier import export_frontier
    from quantens.layout import ResultDir
    from quantens.results import read_json, write_json

    report_path = os.path.join(out_dir, os.path.basename(ResultDir.EXPORT_REPORT))
    report = read_json(report_path) if os.path.isfile(report_path) else {"members": {}}
    searches, sensitivity = {}, None
    for budget in sorted({int(b) for b in budgets}, reverse=True):
        searches[budget] = search_policy(ensemble, val_data, budget, train_data=train_data,
                                         sensitivity=sensitivity, verbose=verbose)
        sensitivity = searches[budget].sensitivity
    records = {}
    from quantens.ensemble import quiet_logger

    for budget, result in searches.items():
        name = budget_name(budget)
        path = os.path.join(out_dir, f"member_{name}.tflite")
        # the best candidate whose written file fits (a counted estimate could miss)
        ranked = sorted(result.candidates, key=lambda c: (-c["accuracy"], c["loss"]))
        for candidate in ranked:
            # what was scored: a uniform member with the ensemble's BN statistics, a mix
            # with its own
            uniform = set(candidate["policy"].values())
            member, data = ((uniform.pop(), None) if len(uniform) == 1
                            else (candidate["policy"], train_data))
            with quiet_logger("tensorflow"):  # each new member's predict traces once
                record = export_member(
                    ensemble, member, path,
                    calibration_data=(train_data if calibration_data is None
                                      else calibration_data),
                    val_data=test_data, data=data, batch_size=batch_size,
                    max_val_examples=max_test_examples,
                )
            if record["bytes"] <= budget:
                break
        else:
            os.remove(path)
            raise UsageError(f"no searched member's file fits {budget:,} bytes; raise the "
                             "budget")
        record["search"] = {
            "max_bytes": budget, "validation_accuracy": candidate["accuracy"],
            "chosen": candidate["name"],
            "seconds": result.seconds,
            "candidates": [{k: c[k] for k in ("name", "bytes", "accuracy", "loss")}
                           for c in result.candidates],
        }
        records[name] = record
        report.setdefault("members", {})[name] = record
    report["frontier"] = export_frontier(report["members"])
    write_json(report_path, report)
    return records


def export_result_budgets(result_dir: str, budgets, out_dir: str | None = None, *,
                          weights: str | None = None, batch_size: int | None = None,
                          evaluate: bool = True, max_test_examples: int | None = None,
                          model=None, verbose="auto") -> dict:
    """`export_budget_members` for a finished run's result directory (what
    `quantens-export RESULT --budget-kb 300` does after exporting the uniform members).

    The search reads the run's validation split and its training split (not
    augmented, for BN statistics and int8 ranges); the test split only checks
    the exported files. A run that validated on its test split (a dataset
    without a validation split, trained without `--val-split`) is refused:
    a search on it would choose on the test split.

    Raises:
        UsageError: the run has no validation split of its own.
    """
    from quantens import data
    from quantens.defaults import INPUT_PREPROCESSING
    from quantens.export import load_result_ensemble
    from quantens.layout import ResultDir

    kwargs = {} if weights is None else {"weights": weights}
    ensemble, config = load_result_ensemble(result_dir, model=model, **kwargs)
    spec = data.resolve(config["dataset"], config.get("data_dir"))
    plan = data.plan_splits(spec, config.get("val_split"))
    if plan.validation_is_test:
        raise UsageError(
            f"{result_dir} validated on its test split ({plan.test}): a budget search chooses "
            "on validation and must not read the test split; train with --val-split 0.1"
        )
    batch = int(batch_size or config.get("batch_size") or 256)
    settings = {"data_dir": config.get("data_dir"),
                "preprocessing": config.get("input_preprocessing") or INPUT_PREPROCESSING}
    train = data.load(config["dataset"], plan.train, batch, **settings)
    validation = data.load(config["dataset"], plan.validation, batch, **settings)
    test = data.load(config["dataset"], plan.test, batch, **settings) if evaluate else None
    return export_budget_members(
        ensemble, budgets, out_dir or ResultDir(result_dir).export, train_data=train,
        val_data=validation, test_data=test, batch_size=batch,
        max_test_examples=max_test_examples, verbose=verbose,
    )
