"""A process engine for the benchmark: the default engine's events, each stamped as it is written.

    command:<python> bench/stamping_engine.py     (BENCH_EVENT_TIMES and BENCH_EVENT_DELAY_MS passed
                                                   through RUN_REGISTRY_ENGINE_ENV)

Like bench.engines.TimestampingEngine for a Python engine: a line ``<scenarioId> <seed> <position>
<epoch seconds>`` per event, written just before the event goes to standard output, so the time
from an engine's stdout to a live client compares with the time from a Python engine's yield.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.pricing import PricingEngine


def main() -> None:
    request = json.loads(sys.stdin.readline())
    if request["op"] == "describe":
        print(json.dumps({"name": "pricing-simulator-stamped", "version": PricingEngine.version}))
        return
    delay_s = float(os.environ.get("BENCH_EVENT_DELAY_MS", "0")) / 1000
    scenario_id, seed = request["scenarioId"], request["seed"]
    with open(os.environ["BENCH_EVENT_TIMES"], "a", buffering=1) as times:
        for position, event in enumerate(PricingEngine().run(scenario_id, seed), start=1):
            time.sleep(delay_s)
            times.write(f"{scenario_id} {seed} {position} {time.time():.6f}\n")
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
