"""OperationsService: how the registry, the engine and its executions stand, for those who run them."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.engine.base import Engine
from app.engine.base import EngineUnavailable
from app.engine.identity import CodeHash
from app.errors import Unavailable
from app.metrics import FleetFigures
from app.models import LedgerFigures
from app.models import RegistryStats
from app.registry.base import Registry
from app.runs.execution import Execution
from app.runs.outage import registry_errors

# /registry/stats lists this many scenarios by entries; the rest are counted, not named, so the
# answer stays small however many scenarios a registry holds.
STATS_TOP_SCENARIOS = 20


@dataclass(frozen=True)
class StatsReport:
    stats: RegistryStats
    backend: str
    ttl_minutes: float
    execution: str
    workers: int | None


@dataclass(frozen=True)
class Readiness:
    backend: str
    engine_kind: str
    engine_name: str
    engine_version: str
    engine_code_hash: str
    execution: str
    workers: int | None  # with queue execution: workers serving this engineCodeHash


class OperationsService:
    """Readiness, the registry's statistics, what a metrics scrape reports, and the determinism
    ledger in all: read from the parts the run services share, changing nothing."""

    def __init__(self, registry: Registry, engine: Engine, settings: Settings, execution: Execution,
                 code_hash: CodeHash) -> None:
        self._registry = registry
        self._engine = engine
        self._settings = settings
        self._execution = execution
        self._code_hash = code_hash
        self._backend = "redis" if settings.shared_registry else "memory"

    def readiness(self) -> Readiness:
        """:raises Unavailable: the registry backend (or the job queue), or a remote engine, does not answer."""
        with registry_errors:
            self._registry.ping()
            workers = self._execution.workers()
        try:
            identity = self._engine.ready()
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None
        return Readiness(
            backend=self._backend,
            engine_kind=self._engine.kind,
            engine_name=identity.name,
            engine_version=identity.version,
            engine_code_hash=self._code_hash.of(identity),
            execution=self._settings.execution,
            workers=workers,
        )

    def stats_report(self) -> StatsReport:
        """What the registry counts (with a shared backend, for the whole fleet), with its settings;
        entries by scenario for the ``STATS_TOP_SCENARIOS`` scenarios with the most."""
        with registry_errors:
            stats = self._registry.stats(top_scenarios=STATS_TOP_SCENARIOS)
            workers = self._execution.workers()
        return StatsReport(stats, self._backend, self._settings.ttl_minutes, self._settings.execution, workers)

    def fleet_figures(self) -> FleetFigures:
        """What a metrics scrape reports: the registry's counts (without any scenario: cheaply),
        and with queue execution the queue's depth and its workers."""
        with registry_errors:
            stats = self._registry.stats(top_scenarios=0)
            ledger = self._registry.ledger_figures(latest=0)
            workers = self._execution.workers()
            queued = self._execution.in_use() if workers is not None else None
        return FleetFigures(stats, ledger, queued, workers)

    def ledger_figures(self, latest: int) -> LedgerFigures:
        """The determinism ledger in all, with the ``latest`` divergences."""
        with registry_errors:
            return self._registry.ledger_figures(latest)

    def engine_slots_in_use(self) -> int:
        """Engine executions running or waiting in this process now, or queued for workers."""
        with registry_errors:
            return self._execution.in_use()
