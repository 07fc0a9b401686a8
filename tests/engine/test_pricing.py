"""The default engine: pinned golden transcript, determinism, its generator's known outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError
from app.config import Settings
from app.engine import load_engine
from app.engine.pricing import PricingEngine
from app.engine.pricing import SplitMix64
from app.models import canonical_json

GOLDEN = Path(__file__).parent / "golden" / "pricing-v1_seed42.json"


def test_golden_transcript_is_unchanged():
    """If this fails the engine's output changed: bump PricingEngine.version and regenerate."""
    assert canonical_json(list(PricingEngine().run("pricing-v1", 42))) + b"\n" == GOLDEN.read_bytes()


def test_splitmix64_matches_its_reference_outputs():
    generator = SplitMix64(1234567)
    assert [generator.next() for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_same_inputs_same_events_other_inputs_other_events():
    engine = PricingEngine()
    assert list(engine.run("pricing-v1", 42)) == list(PricingEngine().run("pricing-v1", 42))
    assert list(engine.run("pricing-v1", 42)) != list(engine.run("pricing-v1", 43))
    assert list(engine.run("pricing-v1", 42)) != list(engine.run("pricing-v2", 42))


def test_report_recommends_the_most_profitable_price_it_narrated():
    events = list(PricingEngine().run("pricing-v1", 42))
    text = "".join(e["data"]["text"] for e in events if e["type"] == "token")
    report = events[-2]["data"]
    assert f"Recommendation: price at ${report['bestPrice']:,.2f}" in text
    assert report["revenue"] == round(report["bestPrice"] * report["buyersAtBestPrice"], 2)
    assert 0 < report["conversionRate"] <= 1 and 0 < report["margin"] < 1


def test_extreme_seeds_and_long_scenario_ids_run():
    engine = PricingEngine()
    for seed in (-(2**53) + 1, 0, 2**53 - 1):
        events = list(engine.run("x" * 128, seed))
        assert events[0]["data"]["seed"] == seed and events[-1]["type"] == "done"


def test_load_engine_accepts_a_class_an_instance_or_a_factory():
    assert isinstance(load_engine(Settings(engine="app.engine.pricing:PricingEngine")).engine, PricingEngine)
    assert load_engine(Settings(engine="harness.fakes:FakeEngine")).identity().name == "fake"


@pytest.mark.parametrize(
    "spec",
    ["no.such.module:Engine", "app.engine.pricing:NoSuchEngine", "app.engine.pricing:CUSTOMERS",
     "harness.fakes:transcript"],
    ids=["missing-module", "missing-attribute", "not-callable", "factory-returning-no-engine"],
)
def test_load_engine_refuses_what_is_no_engine(spec):
    with pytest.raises(ConfigError, match="RUN_REGISTRY_ENGINE"):
        load_engine(Settings(engine=spec))
