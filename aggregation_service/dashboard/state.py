"""What the dashboard shows, as one JSON document (``GET /dashboard/api/state``).

Nothing here counts anything: models, versions and lineage come from
:meth:`AggregationService.list_models` (the same answer as ``GET
/v1/models``), live counters from :meth:`Metrics.snapshot` (the numbers
``/metrics`` prints), and devices from the same SQLite table the
``fedge_devices`` gauge is read from — queried now rather than at the
sweeper's last pass, so a freshly enrolled device shows at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aggregation_service.service import AggregationService
from aggregation_service.store import Store


def devices_by_profile(store: Store) -> dict[str, int]:
    """Enrolled devices by the profile name they reported at enrollment
    (``""`` for none). Blocking: run it on the store's thread."""
    rows = store.conn.execute(
        "SELECT CASE WHEN json_valid(profile) THEN json_extract(profile, '$.name') END AS name, "
        "COUNT(*) FROM devices GROUP BY name"
    ).fetchall()
    out: dict[str, int] = {}
    for name, count in rows:
        label = "" if name is None else str(name)
        out[label] = out.get(label, 0) + int(count)
    return out


def _by_label(series: list[dict[str, Any]], label: str) -> dict[str, float]:
    """One counter's values summed per value of one label (others summed over)."""
    out: dict[str, float] = {}
    for sample in series:
        key = str(sample["labels"].get(label, ""))
        out[key] = out.get(key, 0.0) + float(sample["value"])
    return out


def _total(series: list[dict[str, Any]]) -> float:
    return sum(float(s["value"]) for s in series)


def _histogram(hist: Mapping[str, Any]) -> dict[str, Any]:
    """Bucket counts summed over label sets, with a readable name per bucket."""
    bounds: list[float] = list(hist["buckets"])
    counts = [0] * (len(bounds) + 1)
    for series in hist["series"]:
        counts = [a + b for a, b in zip(counts, series["counts"], strict=True)]
    labels, low = [], None
    for bound in bounds:
        labels.append(f"{bound:g}" if low is None or bound - low == 1 else f"{low + 1:g}–{bound:g}")
        low = bound
    labels.append(f">{bounds[-1]:g}")
    return {"labels": labels, "counts": counts, "total": sum(counts)}


def counters(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The live panels, shaped from :meth:`Metrics.snapshot`."""
    checkins = snapshot["fedge_checkins_total"]
    return {
        "accepted": _by_label(snapshot["fedge_updates_accepted_total"], "model"),
        "duplicate": _by_label(snapshot["fedge_updates_duplicate_total"], "model"),
        "rejected": _by_label(snapshot["fedge_updates_rejected_total"], "reason"),
        "quarantined": _by_label(snapshot["fedge_updates_quarantined_total"], "reason"),
        "throttled": _by_label(snapshot["fedge_updates_throttled_total"], "model"),
        "discarded": _by_label(snapshot["fedge_updates_discarded_total"], "model"),
        "published": _by_label(snapshot["fedge_versions_published_total"], "model"),
        "buffer_fill": _by_label(snapshot["fedge_buffer_fill"], "model"),
        "outstanding": _by_label(snapshot["fedge_outstanding_assignments"], "model"),
        "staleness": _histogram(snapshot["fedge_update_staleness"]),
        "bytes_in": {
            "total": _total(snapshot["fedge_bytes_in_total"]),
            "by_route": _by_label(snapshot["fedge_bytes_in_total"], "route"),
        },
        "bytes_out": {
            "total": _total(snapshot["fedge_bytes_out_total"]),
            "by_route": _by_label(snapshot["fedge_bytes_out_total"], "route"),
        },
        "checkins": _by_label(checkins, "action"),
        "wait_reasons": _by_label(
            [s for s in checkins if s["labels"].get("action") == "wait"], "reason"
        ),
        "rate_limited": _total(snapshot["fedge_rate_limited_total"]),
        "dp_epsilon": _by_label(snapshot["fedge_dp_epsilon"], "model"),
        "logins": _by_label(snapshot["fedge_dashboard_logins_total"], "result"),
    }


def json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN (ε without noise is +∞): they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(document: Any) -> str:
    """Strict JSON, which is all a browser's JSON.parse accepts. Nearly every
    poll has only finite floats: one strict dump then, and the recursive
    cleanup only when it refuses a NaN or infinity."""
    try:
        return json.dumps(document, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(document), allow_nan=False)


async def build_state(service: AggregationService) -> dict[str, Any]:
    """The state document (floats as they are: serialise it with :func:`to_json`)."""
    models = await service.list_models()
    by_state = await service.store.run(service.store.devices_by_state)
    by_profile = await service.store.run(devices_by_profile, service.store)
    return {
        "time": service.clock.time(),
        "health": service.health(),
        "models": models,
        "counters": counters(service.metrics.snapshot()),
        "devices": {
            "total": sum(by_state.values()),
            "by_state": by_state,
            "by_profile": by_profile,
        },
    }
