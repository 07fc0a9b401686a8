"""Prometheus metrics; under gunicorn, summed over every worker (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client import disable_created_metrics
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.errors import ServiceError
from app.models import ENGINE_DURATION_BUCKETS_S
from app.models import LedgerFigures
from app.models import RegistryStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# gunicorn passes any token as a method: a client must not be able to mint new series.
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The service's metrics, in a registry of this app's own (a fresh one per ``create_app``).

    With ``multiprocess_dir`` (gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR) every worker
    writes its samples to files there and a scrape sums them, so whichever worker answers
    reports for all. Figures the registry backend keeps (entries, evictions, expirations)
    are read from it at scrape time: with Redis they cover the whole fleet.
    """

    def __init__(self, figures: Callable[[], FleetFigures], multiprocess_dir: str | None) -> None:
        disable_created_metrics()  # the *_created series only double what scrapes already know
        self._multiprocess = multiprocess_dir is not None
        self._registry = CollectorRegistry()
        # Every label value comes from a closed set (route templates, the methods above, the
        # statuses the app answers, sources), so this stays small whatever clients send.
        self._children: dict[tuple[Any, tuple[object, ...]], Any] = {}
        self._backend = _BackendCollector(figures)
        self.request_duration = Histogram(
            "run_registry_http_request_duration_seconds", "Time to answer a request, by endpoint and status.",
            ["endpoint", "method", "status"], buckets=_REQUEST_BUCKETS, registry=self._registry,
        )
        if not self._multiprocess:
            self._registry.register(self._backend)

    def request_answered(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        label = method if method in _METHOD_LABELS else "other"
        self._child(self.request_duration, endpoint, label, status).observe(seconds)

    def _child(self, metric: Any, *labels: object) -> Any:
        """The labelled child, kept: ``labels()`` costs as much as the update (the hot path has both)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*(str(label) for label in labels))
        return child

    def render(self) -> bytes:
        """The text exposition format."""
        if not self._multiprocess:
            return generate_latest(self._registry)
        scrape = CollectorRegistry()
        multiprocess.MultiProcessCollector(scrape)
        scrape.register(self._backend)
        return generate_latest(scrape)


class _BackendCollector(Collector):
    """Figures of the whole registry (with Redis, the fleet's), read at scrape time: entries,
    lookups, engine executions and their durations, runs running, and with queue execution the
    queue's depth and the workers serving it. Counted where they happen, in the registry, so a
    worker's executions count as much as a web process's."""

    def __init__(self, figures: Callable[[], FleetFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self._figures()
        except ServiceError:  # the backend is down: say so, and still serve the process' own figures
            yield GaugeMetricFamily("run_registry_backend_up", "Whether the registry backend answered.", value=0)
            return
        stats = figures.stats
        yield GaugeMetricFamily("run_registry_backend_up", "Whether the registry backend answered.", value=1)
        yield GaugeMetricFamily("run_registry_entries", "Live entries in the registry.", value=stats.total_entries)
        yield GaugeMetricFamily("run_registry_runs_running", "Runs not done yet.", value=stats.running)
        lookups = CounterMetricFamily("run_registry_lookups", "Lookups answered, by source.", labels=["source"])
        lookups.add_metric(["new"], stats.misses)
        lookups.add_metric(["cache"], stats.hits)
        yield lookups
        yield CounterMetricFamily("run_registry_evictions", "Entries evicted at the cap.", value=stats.evictions)
        yield CounterMetricFamily("run_registry_expirations", "Entries that expired.", value=stats.expirations)
        yield CounterMetricFamily("run_registry_engine_executions", "Engine executions (runs and verifications).",
                                  value=stats.engine_runs)
        yield CounterMetricFamily("run_registry_engine_failures", "Engine executions that failed or timed out.",
                                  value=stats.engine_failures)
        durations = HistogramMetricFamily("run_registry_engine_duration_seconds",
                                          "Time an engine execution took, by outcome.", labels=["outcome"])
        for outcome, (counts, total) in sorted(stats.engine_durations.items()):
            cumulative = list(itertools.accumulate(counts))
            bounds = [*(f"{bound:g}" for bound in ENGINE_DURATION_BUCKETS_S), "+Inf"]
            durations.add_metric([outcome], list(zip(bounds, cumulative, strict=True)), sum_value=total)
        yield durations
        checks = CounterMetricFamily("run_registry_determinism_checks",
                                     "Transcripts checked against their key's reference, by result.", labels=["result"])
        checks.add_metric(["reproduced"], figures.ledger.reproduced)
        checks.add_metric(["diverged"], figures.ledger.diverged)
        yield checks
        yield GaugeMetricFamily("run_registry_determinism_keys", "Cache keys the determinism ledger holds.",
                                value=figures.ledger.keys)
        if figures.queued is not None:
            yield GaugeMetricFamily("run_registry_queue_depth", "Runs and verifications waiting for a worker.",
                                    value=figures.queued)
        if figures.workers is not None:
            yield GaugeMetricFamily("run_registry_workers", "Workers serving this engineCodeHash.",
                                    value=figures.workers)


@dataclass(frozen=True)
class FleetFigures:
    stats: RegistryStats
    ledger: LedgerFigures
    queued: int | None  # None: runs are not queued (local execution)
    workers: int | None
