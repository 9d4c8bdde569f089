"""Prometheus text exposition, written by hand (format 0.0.4).

Small on purpose: counters and gauges with labels, and fixed-bucket
histograms. The service updates them from the event loop only, so no locks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Gauge(Counter):
    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        collect: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.collect = collect

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def samples(self) -> Iterable[str]:
        if self.collect is not None:
            self.values = self.collect()
        return super().samples()


class Histogram:
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, []))

    def samples(self) -> Iterable[str]:
        for labels, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                le = f'le="{_num(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_num(self.sums[labels])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {cumulative}"


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric the service exposes, as attributes."""

    def __init__(self) -> None:
        self.updates_accepted = Counter(
            "fedge_updates_accepted_total", "Updates acknowledged (202), by model", ["model"]
        )
        self.updates_duplicate = Counter(
            "fedge_updates_duplicate_total",
            "Retried uploads answered from the idempotency record",
            ["model"],
        )
        self.updates_rejected = Counter(
            "fedge_updates_rejected_total", "Uploads refused, by reason code", ["reason"]
        )
        self.updates_discarded = Counter(
            "fedge_updates_discarded_total",
            "Accepted updates dropped by a push, a rollback or an abandoned round",
            ["model"],
        )
        self.staleness = Histogram(
            "fedge_update_staleness",
            "Versions published between an update's base and its acceptance",
            (0, 1, 2, 3, 4, 6, 8, 12, 16, 32),
        )
        self.bytes_in = Counter("fedge_bytes_in_total", "Request body bytes read", ["route"])
        self.bytes_out = Counter("fedge_bytes_out_total", "Response body bytes sent", ["route"])
        self.buffer_fill = Gauge(
            "fedge_buffer_fill", "Accepted updates in the open buffer, by model", ["model"]
        )
        self.versions_published = Counter(
            "fedge_versions_published_total", "Aggregated versions published", ["model"]
        )
        self.rounds_abandoned = Counter(
            "fedge_rounds_abandoned_total", "Sync rounds closed without enough reports", ["model"]
        )
        self.aggregation_seconds = Histogram(
            "fedge_aggregation_seconds",
            "Time to step the optimizer and publish a version",
            LATENCY_BUCKETS,
        )
        self.ack_seconds = Histogram(
            "fedge_ack_seconds", "Upload receipt to durable acknowledgement", LATENCY_BUCKETS
        )
        self.log_fsyncs = Gauge("fedge_log_fsyncs", "fsync calls on the update log")
        self.checkins = Counter("fedge_checkins_total", "Check-ins by answer", ["action", "reason"])
        self.rate_limited = Counter("fedge_rate_limited_total", "Requests answered 429")
        self.devices = Gauge("fedge_devices", "Enrolled devices by last known state", ["state"])
        self.updates_quarantined = Counter(
            "fedge_updates_quarantined_total",
            "Updates left out as anomalous (robust), by model and reason",
            ["model", "reason"],
        )
        self.updates_throttled = Counter(
            "fedge_updates_throttled_total",
            "Uploads answered 429 because their device keeps sending anomalous updates",
            ["model"],
        )
        self.dp_epsilon = Gauge(
            "fedge_dp_epsilon",
            "Cumulative ε of the last published DP version, by model (+Inf without noise)",
            ["model"],
        )
        self.dp_delta = Gauge("fedge_dp_delta", "δ of the DP guarantee, by model", ["model"])
        self.dp_clip_norm = Gauge(
            "fedge_dp_clip_norm",
            "L2 clip bound devices training from the last published DP version use "
            "(moves with adaptive clipping), by model",
            ["model"],
        )
        self.outstanding = Gauge(
            "fedge_outstanding_assignments", "Plans handed out and not yet reported", ["model"]
        )
        self.publication_failures = Counter(
            "fedge_publication_failures_total",
            "Failed publication attempts, by model and reason (non_finite_step, publication_error)",
            ["model", "reason"],
        )
        self.publication_blocked = Gauge(
            "fedge_publication_blocked",
            "1 while a model's publications are blocked until the operator acts, by model",
            ["model"],
        )
        self.connections = Gauge("fedge_open_connections", "Open HTTP connections")
        self.connections_refused = Counter(
            "fedge_connections_refused_total",
            "Connections refused at a cap (too_many_connections, too_many_connections_from_peer), "
            "closed to make room (evicted_idle) or for a slow request head (header_timeout)",
            ["reason"],
        )
        self.dashboard_logins = Counter(
            "fedge_dashboard_logins_total", "Dashboard login attempts, by result", ["result"]
        )

        # Secure aggregation (aggregation_service.secagg_rounds): rounds by how they
        # ended — "completed", or abandoned with the reason (too_few_keys, …).
        self.secagg_rounds = Counter(
            "fedge_secagg_rounds_total",
            "Secure aggregation rounds by outcome",
            ["model", "outcome"],
        )
        self.secagg_refused = Counter(
            "fedge_secagg_messages_refused_total",
            "Secure aggregation messages refused, by error code",
            ["code"],
        )

    def all(self) -> list[Counter | Histogram]:
        return [v for v in vars(self).values() if isinstance(v, (Counter, Histogram))]

    def snapshot(self) -> dict[str, Any]:
        """Every metric's current values as plain data, keyed by metric name:
        a list of ``{"labels", "value"}`` for counters and gauges, and
        ``{"buckets", "series": [{"labels", "counts", "sum"}]}`` for histograms
        (counts per bucket, not cumulative; the last is above the largest
        bound). Read-only: the same numbers ``render`` prints, for the dashboard."""
        out: dict[str, Any] = {}
        for metric in self.all():
            if isinstance(metric, Histogram):
                out[metric.name] = {
                    "buckets": list(metric.buckets),
                    "series": [
                        {
                            "labels": dict(zip(metric.label_names, labels, strict=True)),
                            "counts": list(counts),
                            "sum": metric.sums[labels],
                        }
                        for labels, counts in sorted(metric.counts.items())
                    ],
                }
                continue
            values = metric.values
            if isinstance(metric, Gauge) and metric.collect is not None:
                values = metric.collect()
            out[metric.name] = [
                {"labels": dict(zip(metric.label_names, labels, strict=True)), "value": value}
                for labels, value in sorted(values.items())
            ]
        return out

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
