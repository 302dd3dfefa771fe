"""The accuracy-vs-bytes frontier (quantens.frontier) and the report's frontier section."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from quantens.frontier import frontier
from quantens.report import ResultData, frontier_points, write_report

# the converted MobileNetV2: 2-bit filters stored as INT4 like 4-bit ones
INT4 = {"int4_tensors": 52, "int8_reasons": {}}
# DoReFa's 4-bit grid has odd integers up to +-15: the filters stay int8
WIDE = {"int4_tensors": 0, "int8_reasons": {"conv": "its integers reach ±15; INT4 holds -8 ... 7"}}


def test_a_member_with_the_same_bytes_and_less_accuracy_is_dominated_with_the_reason():
    marked = frontier([
        {"name": "4", "bits": 4, "bytes": 449_440, "accuracy": 0.983, "format": "int8",
         "weights_storage": INT4},
        {"name": "2", "bits": 2, "bytes": 449_440, "accuracy": 0.922, "format": "int8",
         "weights_storage": INT4},
    ])
    assert marked[0]["on_frontier"] and not marked[1]["on_frontier"]
    assert marked[1]["reason"] == ("member 2: the same bytes as member 4 (2-bit filters are "
                                   "stored as INT4, like 4-bit ones) and 6.1 points less")


def test_a_grid_that_needs_five_bits_is_named_as_the_cause():
    marked = frontier([
        {"name": "8", "bits": 8, "bytes": 339_504, "accuracy": 1.0, "format": "int8",
         "weights_storage": WIDE},
        {"name": "4", "bits": 4, "bytes": 339_504, "accuracy": 0.997, "format": "int8",
         "weights_storage": WIDE},
    ])
    assert "its 4-bit grid reaches beyond INT4's -8 ... 7" in marked[1]["reason"]
    assert "0.3 points less" in marked[1]["reason"]


def test_larger_and_less_accurate_and_smaller_equally_accurate_both_dominate():
    marked = frontier([
        {"name": "a", "bytes": 100, "accuracy": 0.9},
        {"name": "b", "bytes": 150, "accuracy": 0.8},   # larger, less accurate: dominated
        {"name": "c", "bytes": 120, "accuracy": 0.9},   # larger, as accurate: dominated
        {"name": "d", "bytes": 200, "accuracy": 0.95},  # larger and better: on the frontier
        {"name": "e", "bytes": None, "accuracy": 0.99},  # unknown: not judged
    ])
    assert [m["on_frontier"] for m in marked] == [True, False, False, True, False]
    assert marked[1]["reason"] == "member b: 50 bytes more than member a and 10.0 points less"
    assert marked[2]["reason"] == "member c: 20 bytes more than member a and no more accurate"
    assert marked[4]["reason"] == "member e: its bytes or accuracy are unknown"


def test_the_frontier_against_a_brute_force_definition():
    rng = random.Random(0)
    for _ in range(50):
        points = [{"name": str(i), "bytes": rng.choice([100, 200, 300, 400]),
                   "accuracy": rng.choice([0.5, 0.7, 0.9])} for i in range(6)]
        marked = frontier(points)
        for p, m in zip(points, marked, strict=True):
            beaten = any(q is not p and q["bytes"] <= p["bytes"] and q["accuracy"] >= p["accuracy"]
                         and (q["bytes"], q["accuracy"]) != (p["bytes"], p["accuracy"])
                         for q in points)
            assert m["on_frontier"] == (not beaten), (points, m)
        on = [m for m in marked if m["on_frontier"]]
        for a, b in itertools.combinations(on, 2):  # the frontier rises with the bytes
            if a["bytes"] < b["bytes"]:
                assert a["accuracy"] < b["accuracy"]


def _export(members: dict) -> dict:
    return {"split": "test", "members": {
        name: {"bytes": size, "format": "int8", "file": f"member_{name}.tflite",
               "fidelity": {"tflite_accuracy": accuracy}}
        for name, (size, accuracy) in members.items()}}


def test_the_report_marks_a_planted_dominated_member(tmp_path):
    export = _export({"8": (4000, 0.99), "4": (2500, 0.98), "2": (1500, 0.95),
                      # planted: larger than member 4 and less accurate
                      "budget_3kb": (3000, 0.97)})
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "export.json").write_text(json.dumps(export))
    metrics = {"bit_widths": [8, 4, 2],
               "val_accuracy": {"8": 0.99, "4": 0.98, "2": 0.95}}
    path = write_report(ResultData(str(tmp_path), metrics, {}, [], export))
    text = open(path, encoding="utf-8").read()
    row = next(line for line in text.splitlines() if line.startswith("| budget_3kb |"))
    assert "dominated: member budget_3kb: 500 bytes more than member 4 and 1.0 points less" in row
    for name in ("8", "4", "2"):
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} | int8"))
        assert line.endswith("| on the frontier |"), line
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 0
    assert "accuracy_vs_bytes.png" in text


@pytest.mark.parametrize("export", [None, {}, {"members": {}}, {"members": {"8": {"bytes": "x"}}}])
def test_no_frontier_without_usable_export_entries(export):
    assert frontier_points(export) == []
