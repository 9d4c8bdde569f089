"""Sessions (expiry, capacity, CSRF comparison) on a ManualClock, and
Metrics.snapshot against the text /metrics renders from the same objects."""

from __future__ import annotations

import math

from aggregation_service.dashboard.sessions import Sessions
from aggregation_service.dashboard.state import counters, json_safe
from aggregation_service.metrics import Metrics
from fedge.clock import ManualClock


def test_sessions_expire_idle_and_old_and_evict_the_oldest() -> None:
    clock = ManualClock()
    s = Sessions(clock, idle_s=10, max_age_s=25, capacity=2)
    a, session_a = s.create()
    assert s.get(a) is session_a and s.get("") is None and s.get("x" * 200) is None
    assert s.get("\udcff\udcfe") is None and not s.drop("é" * 8)  # undecodable cookie bytes
    clock.advance(9)
    assert s.get(a) is session_a  # touched: idle deadline now 19
    clock.advance(9)
    assert s.get(a) is session_a
    clock.advance(11)
    assert s.get(a) is None and len(s) == 0
    b, _ = s.create()
    for _ in range(4):
        clock.advance(6)
        assert s.get(b) is not None  # 24 s, never idle
    clock.advance(2)
    assert s.get(b) is None  # 26 s: past the 25 s maximum age, however active
    first, _ = s.create()
    second, _ = s.create()
    third, _ = s.create()
    assert s.get(first) is None and s.get(second) and s.get(third)  # capacity 2: oldest out
    assert s.drop(second) and not s.drop(second)


def test_csrf_comparison() -> None:
    s = Sessions(ManualClock())
    _, session = s.create()
    assert Sessions.csrf_matches(session, session.csrf)
    assert not Sessions.csrf_matches(session, None)
    assert not Sessions.csrf_matches(session, session.csrf + "x")
    assert not Sessions.csrf_matches(session, "\udcff" * 4)  # undecodable header text


def test_snapshot_matches_render() -> None:
    m = Metrics()
    m.updates_accepted.inc("a", amount=3)
    m.updates_rejected.inc("bad_update")
    m.updates_rejected.inc("stale_update", amount=2)
    for tau in (0, 0, 1, 5, 40):
        m.staleness.observe(tau)
    m.buffer_fill.collect = lambda: {("a",): 2.0}
    m.dp_epsilon.set(math.inf, "a")
    snap = m.snapshot()
    text = m.render()
    assert snap["fedge_updates_accepted_total"] == [{"labels": {"model": "a"}, "value": 3.0}]
    assert 'fedge_updates_accepted_total{model="a"} 3' in text
    assert snap["fedge_buffer_fill"] == [{"labels": {"model": "a"}, "value": 2.0}]
    assert 'fedge_buffer_fill{model="a"} 2' in text
    hist = snap["fedge_update_staleness"]
    counts = hist["series"][0]["counts"]
    assert sum(counts) == 5 and counts[0] == 2 and counts[1] == 1 and counts[-1] == 1
    assert 'fedge_update_staleness_bucket{le="6"} 4' in text  # cumulative in the text
    assert hist["series"][0]["sum"] == 46.0

    shaped = json_safe(counters(snap))
    assert shaped["rejected"] == {"bad_update": 1.0, "stale_update": 2.0}
    assert shaped["dp_epsilon"] == {"a": None}  # +Inf has no JSON form
    assert shaped["staleness"]["labels"] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5–6",
        "7–8",
        "9–12",
        "13–16",
        "17–32",
        ">32",
    ]
    assert shaped["staleness"]["counts"][5] == 1 and shaped["staleness"]["total"] == 5
