"""The receiver's `/metrics` (CONTRACTS §16), in the Prometheus text format.

Push counters are this process's (a scrape of every receiver adds them up); the pull figures
come from the database at scrape time, so any receiver shows every node's pull state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sync.receiver._store import PullStatus

__all__ = ["ReceiverMetrics"]


class _PullCollector(Collector):
    """Per-node pull families from the last `pull_status()` read."""

    def __init__(self) -> None:
        self.status: Sequence[PullStatus] = ()

    def collect(self) -> Iterable[Metric]:
        """The families, one sample per node."""
        records = CounterMetricFamily(
            "hallhub_central_pull_records",
            "Records pulled from each node, by result (accepted, duplicate, rejected)",
            labels=["node", "result"],
        )
        errors = CounterMetricFamily(
            "hallhub_central_pull_errors", "Failed pulls of each node", labels=["node"]
        )
        cursor = GaugeMetricFamily(
            "hallhub_central_pull_cursor", "The seq each node's pull resumes after", labels=["node"]
        )
        acked = GaugeMetricFamily(
            "hallhub_central_pull_acked", "The seq up to which each node confirmed the ack", labels=["node"]
        )
        lag = GaugeMetricFamily(
            "hallhub_central_pull_lag_seconds",
            "Seconds since each node was last read to its end (absent: never)",
            labels=["node"],
        )
        leased = GaugeMetricFamily(
            "hallhub_central_pull_leased", "1 while a collector holds the node's lease", labels=["node"]
        )
        for s in self.status:
            records.add_metric([s.node_id, "accepted"], s.accepted)
            records.add_metric([s.node_id, "duplicate"], s.duplicates)
            records.add_metric([s.node_id, "rejected"], s.rejected)
            errors.add_metric([s.node_id], s.errors)
            cursor.add_metric([s.node_id], s.cursor)
            acked.add_metric([s.node_id], s.acked)
            if s.caught_up_age_s is not None:
                lag.add_metric([s.node_id], s.caught_up_age_s)
            leased.add_metric([s.node_id], 1 if s.owner else 0)
        return [records, errors, cursor, acked, lag, leased]


class ReceiverMetrics:
    """This receiver's counters and the pull state, rendered on demand."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batches = Counter(
            "hallhub_central_batches",
            "Batch requests by result: ok, refused (4xx), unavailable (503), injected (fault switch)",
            ["result"],
            registry=self.registry,
        )
        self.records = Counter(
            "hallhub_central_records",
            "Pushed records by result: accepted, duplicate, rejected",
            ["result"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "hallhub_central_store_up", "1 if the database answered this scrape", registry=self.registry
        )
        self._pull = _PullCollector()
        self.registry.register(self._pull)

    def render(self, status: Sequence[PullStatus] | None) -> bytes:
        """The text exposition; `status` None when the database could not be read."""
        self.store_up.set(0 if status is None else 1)
        self._pull.status = status or ()
        return generate_latest(self.registry)
