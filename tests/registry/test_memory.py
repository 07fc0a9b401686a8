"""The in-memory backend: the shared contract on a frozen clock, plus its own sweep."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest

from app.registry.memory import SWEEP_SLICE
from app.registry.memory import MemoryRegistry
from tests.registry.contract import Builder
from tests.registry.contract import RegistryContract
from tests.registry.contract import record
from tests.registry.contract import run_id

TTL_MS = 60_000


class TestMemoryRegistry(RegistryContract):
    @pytest.fixture
    def ttl_ms(self):
        return TTL_MS

    @pytest.fixture
    def make_registry(self, frozen):
        return functools.partial(MemoryRegistry, TTL_MS)

    @pytest.fixture
    def advance(self, frozen):
        return lambda ms: frozen.tick(timedelta(milliseconds=ms))

    def test_entry_is_live_until_exactly_its_expiry(self, registry, frozen):
        registry.create_once("k1", Builder(record()))
        frozen.tick(timedelta(milliseconds=TTL_MS - 1))
        assert registry.get(run_id()) is not None
        frozen.tick(timedelta(milliseconds=1))
        assert registry.get(run_id()) is None


def test_each_call_sweeps_a_bounded_slice_of_expired_entries(frozen):
    registry = MemoryRegistry(ttl_ms=TTL_MS, max_entries=10_000)
    for index in range(3 * SWEEP_SLICE):
        registry.create_once(f"k{index}", Builder(record(f"k{index}")))
    frozen.tick(timedelta(milliseconds=TTL_MS))
    registry.touch("unrelated")
    assert len(registry._entries) == 2 * SWEEP_SLICE  # one slice gone, untouched
    registry.get(run_id("unrelated"))
    assert len(registry._entries) == SWEEP_SLICE
    assert registry.stats().total_entries == 0


def test_sweep_stops_at_the_first_live_entry(frozen):
    registry = MemoryRegistry(ttl_ms=TTL_MS, max_entries=100)
    registry.create_once("old", Builder(record("old")))
    frozen.tick(timedelta(milliseconds=TTL_MS // 2))
    registry.create_once("young", Builder(record("young")))
    frozen.tick(timedelta(milliseconds=TTL_MS // 2))
    stats = registry.stats()
    assert (stats.total_entries, stats.expirations) == (1, 1)
    assert registry.get(run_id("young")) is not None
