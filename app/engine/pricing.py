"""The default engine: a seeded pricing simulation, narrated token by token.

For a scenario it derives a product (reference price, unit cost) from the scenarioId,
draws a population of customers' willingness to pay from the seed, tries a ladder of
price points against them, and narrates what each price would sell and earn before it
recommends the most profitable one. Deterministic by construction: integer arithmetic
on a SplitMix64 generator (fixed by its algorithm, not by a library version), no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from app.engine.base import Event

_MASK64 = (1 << 64) - 1
_FIELD = (1 << 21) - 1
CUSTOMERS = 1000
PRICE_LADDER_PERCENT = (70, 80, 90, 100, 110, 120, 130)


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64: tiny, fast, and the same everywhere."""

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def next(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def take(self, count: int) -> list[int]:
        """The next ``count`` outputs (the same as ``count`` calls of ``next``, in a tighter loop)."""
        state, outputs = self._state, []
        for _ in range(count):
            state = (state + 0x9E3779B97F4A7C15) & _MASK64
            z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            outputs.append(z ^ (z >> 31))
        self._state = state
        return outputs


@dataclass(frozen=True)
class PricePoint:
    price: int  # cents
    buyers: int
    revenue: int  # cents
    profit: int  # cents


class PricingEngine:
    """Simulates a product's demand at several prices and recommends one."""

    name = "pricing-simulator"
    version = "1.2.0"  # 1.2.0: the report carries its price ladder as series

    def run(self, scenario_id: str, seed: int) -> Iterator[Event]:
        """Simulate and narrate the scenario, yielding each event as it is made (the start at
        once, the rest once the simulation is done); the same inputs give the same events."""
        run_digest = hashlib.sha256(f"{scenario_id}:{seed}".encode()).digest()
        session_id = "session_" + run_digest[8:16].hex()
        yield {"type": "start", "data": {"sessionId": session_id, "scenarioId": scenario_id, "seed": seed}}
        scenario = hashlib.sha256(scenario_id.encode("utf-8")).digest()
        reference = 1000 + int.from_bytes(scenario[0:4], "big") % 9000  # $10.00 .. $99.99
        unit_cost = reference * (25 + scenario[4] % 21) // 100  # 25% .. 45% of it
        rng = SplitMix64(int.from_bytes(run_digest[:8], "big"))

        # Willingness to pay: the mean of three uniform draws, 40% .. 160% of the reference. The
        # three draws are three 21-bit fields of one 64-bit output, each taken modulo 121.
        budgets = sorted(
            reference * (40 + ((z & _FIELD) % 121 + (z >> 21 & _FIELD) % 121 + (z >> 42 & _FIELD) % 121) // 3) // 100
            for z in rng.take(CUSTOMERS)
        )
        points = [
            _simulate(_charm_price(reference * percent // 100), unit_cost, budgets)
            for percent in PRICE_LADDER_PERCENT
        ]
        best = max(points, key=lambda point: (point.profit, -point.price))
        text = _narrate(scenario_id, seed, reference, unit_cost, points, best)
        tokens = re.findall(r"\s*\S+", text)

        for index, token in enumerate(tokens, start=1):
            yield {"type": "token", "data": {"text": token, "tokenIndex": index}}
        yield {"type": "report", "data": _report(reference, unit_cost, points, best)}
        yield {"type": "done", "data": {"sessionId": session_id, "totalTokens": len(tokens)}}


def _charm_price(cents: int) -> int:
    """Round down to the nearest whole dollar and end in .99, as shops do."""
    return max(99, cents // 100 * 100 - 1)


def _simulate(price: int, unit_cost: int, sorted_budgets: list[int]) -> PricePoint:
    # Customers whose budget reaches the price buy one unit.
    buyers = len(sorted_budgets) - _bisect_left(sorted_budgets, price)
    return PricePoint(price, buyers, buyers * price, buyers * (price - unit_cost))


def _bisect_left(values: list[int], target: int) -> int:
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        if values[middle] < target:
            low = middle + 1
        else:
            high = middle
    return low


def _dollars(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _percent(part: int, whole: int) -> str:
    basis_points = part * 10_000 // whole if whole else 0
    return f"{basis_points // 100}.{basis_points % 100:02d}%"


def _narrate(
    scenario_id: str, seed: int, reference: int, unit_cost: int, points: list[PricePoint], best: PricePoint
) -> str:
    lines = [
        f"Based on {CUSTOMERS:,} simulated customers for scenario {scenario_id} with seed {seed},"
        f" I tested {len(points)} price points from {_dollars(points[0].price)}"
        f" to {_dollars(points[-1].price)} against a reference price of {_dollars(reference)}"
        f" and a unit cost of {_dollars(unit_cost)}."
    ]
    lines += (
        f"At {_dollars(p.price)}, {p.buyers:,} customers buy ({_percent(p.buyers, CUSTOMERS)}),"
        f" earning {_dollars(p.revenue)} revenue and {_dollars(p.profit)} profit."
        for p in points
    )
    above = next((p for p in points if p.price > best.price), None)
    if above is not None:
        lost = _percent(best.buyers - above.buyers, best.buyers)
        lines.append(
            f"Raising the price from {_dollars(best.price)} to {_dollars(above.price)} loses {lost} of buyers."
        )
    lines.append(
        f"Recommendation: price at {_dollars(best.price)} for {_dollars(best.profit)} profit"
        f" at a {_percent(best.price - unit_cost, best.price)} margin; rerun with other seeds to confirm."
    )
    return " ".join(lines)


def _report(reference: int, unit_cost: int, points: list[PricePoint], best: PricePoint) -> dict[str, object]:
    """The figures of the recommendation, and the ladder as ``series`` (profit and buyers by price),
    which the replay page and the compare view draw as charts."""
    prices = [point.price / 100 for point in points]
    return {
        "customers": CUSTOMERS,
        "pricePointsTested": len(points),
        "referencePrice": reference / 100,
        "unitCost": unit_cost / 100,
        "bestPrice": best.price / 100,
        "buyersAtBestPrice": best.buyers,
        "conversionRate": round(best.buyers / CUSTOMERS, 4),
        "revenue": best.revenue / 100,
        "profit": best.profit / 100,
        "margin": round((best.price - unit_cost) / best.price, 4),
        "series": [
            {"name": "profit", "x": "price ($)", "y": "profit ($)",
             "points": [[price, point.profit / 100] for price, point in zip(prices, points, strict=True)]},
            {"name": "buyers", "x": "price ($)", "y": "buyers",
             "points": [[price, point.buyers] for price, point in zip(prices, points, strict=True)]},
        ],
    }
