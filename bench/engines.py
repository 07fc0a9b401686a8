"""Engines for the benchmark only (selected with RUN_REGISTRY_ENGINE in the servers it starts)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from app.engine.pricing import PricingEngine


class TimestampingEngine:
    """The default engine's events, each stamped, as it is yielded, in a file of
    ``<scenarioId> <seed> <position> <epoch seconds>`` lines (``BENCH_EVENT_TIMES``): when each
    event was made, for the time it takes to reach a live client."""

    name = "pricing-simulator-timestamped"
    version = PricingEngine.version

    def __init__(self) -> None:
        self._path = os.environ["BENCH_EVENT_TIMES"]
        self._engine = PricingEngine()

    def run(self, scenario_id: str, seed: int) -> Iterator[dict[str, Any]]:
        with open(self._path, "a", buffering=1) as times:
            for position, event in enumerate(self._engine.run(scenario_id, seed), start=1):
                times.write(f"{scenario_id} {seed} {position} {time.time():.6f}\n")
                yield event
