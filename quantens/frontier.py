"""The accuracy-vs-bytes frontier of exported members, and why a member is not on it.

Users deploy against a budget of bytes: a member that another member beats at
no more bytes (more accurate and at most as large, or as accurate and
smaller) is *dominated* and worth nothing to them unless something says so.
`frontier(points)` marks each member as on the frontier or dominated, naming
the member that dominates it and the reason in words: how many bytes more (or
the same bytes), how many points less, and, from export.json's
`weights_storage`, why its file is no smaller (its grid needs 5 bits, or its
filters are stored as INT4 like the wider member's).

```python
from quantens.frontier import frontier

marked = frontier([
    {"name": "4", "bits": 4, "bytes": 449_440, "accuracy": 0.983},
    {"name": "2", "bits": 2, "bytes": 449_440, "accuracy": 0.922},
    {"name": "1", "bits": 1, "bytes": 486_112, "accuracy": 0.435},
])
assert [m["on_frontier"] for m in marked] == [True, False, False]
assert marked[1]["reason"] == "member 2: the same bytes as member 4 and 6.1 points less"
assert marked[2]["dominated_by"] == "4"
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["export_frontier", "frontier", "member_label", "storage_reason"]


def member_label(point: Mapping) -> str:
    """`member 4`, `member budget_300kb`: how a point is named in the reasons."""
    return f"member {point['name']}"


def storage_reason(point: Mapping, other: Mapping) -> str | None:
    """Why `point`'s file is no smaller than `other`'s, from their export.json entries
    (`format`, `weights_storage`), or None when nothing there says."""
    storage = point.get("weights_storage") or {}
    other_storage = other.get("weights_storage") or {}
    bits, other_bits = point.get("bits"), other.get("bits")
    if point.get("format") != other.get("format"):
        return None
    reasons = " ".join(str(r) for r in (storage.get("int8_reasons") or {}).values())
    if storage.get("int4_tensors") == 0 and "INT4 holds" in reasons and bits is not None:
        return f"its {bits}-bit grid reaches beyond INT4's -8 ... 7, so its filters stay int8"
    if storage.get("int4_tensors") and other_storage.get("int4_tensors") and bits and other_bits:
        return f"{bits}-bit filters are stored as INT4, like {other_bits}-bit ones"
    return None


def _reason(point: Mapping, by: Mapping) -> str:
    points_less = 100 * (float(by["accuracy"]) - float(point["accuracy"]))
    size = ("the same bytes as" if point["bytes"] == by["bytes"]
            else f"{point['bytes'] - by['bytes']:,} bytes more than")
    why = storage_reason(point, by)
    accuracy = (f"{points_less:.1f} points less" if points_less > 0.05
                else "no more accurate")
    return (f"{member_label(point)}: {size} {member_label(by)}"
            + (f" ({why})" if why and point["bytes"] == by["bytes"] else "")
            + f" and {accuracy}")


def frontier(points: Sequence[Mapping]) -> list[dict]:
    """Each point (`name`, `bytes`, `accuracy`, any other keys kept) with `on_frontier`,
    `dominated_by` (the name of the smallest member that dominates it, else None) and
    `reason` (one sentence, or None), in the given order.

    A member is dominated by another that is at most as large and more accurate,
    or smaller and as accurate. Points without bytes or accuracy are left off the
    frontier and not judged (`reason` says so).
    """
    marked = [dict(p) for p in points]
    judged = [p for p in marked if p.get("bytes") is not None and p.get("accuracy") is not None]
    for point in marked:
        point.update(on_frontier=False, dominated_by=None, reason=None)
        if point not in judged:
            point["reason"] = f"{member_label(point)}: its bytes or accuracy are unknown"
            continue
        dominating = [
            other for other in judged if other is not point and (
                (other["bytes"] <= point["bytes"] and other["accuracy"] > point["accuracy"])
                or (other["bytes"] < point["bytes"] and other["accuracy"] >= point["accuracy"]))
        ]
        if not dominating:
            point["on_frontier"] = True
            continue
        by = min(dominating, key=lambda o: (o["bytes"], -o["accuracy"]))
        point["dominated_by"] = by["name"]
        point["reason"] = _reason(point, by)
    return marked


def export_frontier(members: Mapping) -> list[dict]:
    """export.json's `frontier`: each exported file of `members` (export.json's entries,
    uniform and budget members) on the frontier or dominated, with the reason. The
    accuracy is the TFLite file's on export.json's split (`fidelity.tflite_accuracy`).

    ```python
    from quantens.frontier import export_frontier

    members = {"8": {"bytes": 900, "fidelity": {"tflite_accuracy": 0.98}},
               "4": {"bytes": 900, "fidelity": {"tflite_accuracy": 0.97}}}
    eight, four = export_frontier(members)
    assert eight["on_frontier"] and four["dominated_by"] == "8"
    ```
    """
    points = []
    for name, entry in members.items():
        accuracy = (entry.get("fidelity") or {}).get("tflite_accuracy")
        points.append({"name": str(name),
                       "bits": int(name) if str(name).isdigit() else entry.get("bits"),
                       "bytes": entry.get("bytes"), "accuracy": accuracy,
                       "format": entry.get("format"),
                       "weights_storage": entry.get("weights_storage")})
    return [{key: point[key] for key in ("name", "bytes", "accuracy", "on_frontier",
                                         "dominated_by", "reason")}
            for point in frontier(points)]
