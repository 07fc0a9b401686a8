"""The in-memory backend: the shared contract on a frozen clock, plus its own sweep."""

from __future__ import annotations

import contextlib
import functools
from datetime import timedelta

import pytest

from app.registry.base import SWEEP_SLICE
from app.registry.memory import MemoryRegistry
from tests.registry.contract import RegistryContract
from tests.registry.contract import create
from tests.registry.contract import key

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

    @pytest.fixture
    def ledger_wait(self, advance):
        return 60_000, advance

    @pytest.fixture
    def frozen_ms(self, frozen):
        return contextlib.nullcontext  # the clock stands still in every test here

    def test_entry_is_live_until_exactly_its_expiry(self, registry, frozen):
        run_id = create(registry)
        frozen.tick(timedelta(milliseconds=TTL_MS - 1))
        assert registry.get(run_id) is not None
        frozen.tick(timedelta(milliseconds=1))
        assert registry.get(run_id) is None


def test_each_call_sweeps_a_bounded_slice_of_expired_entries(frozen):
    registry = MemoryRegistry(ttl_ms=TTL_MS, max_entries=10_000)
    for index in range(3 * SWEEP_SLICE):
        create(registry, f"k{index}")
    frozen.tick(timedelta(milliseconds=TTL_MS))
    registry.touch(key("unrelated").digest)
    assert registry.held_entries() == 2 * SWEEP_SLICE  # one slice gone, untouched
    registry.get(key("unrelated").run_id(1))
    assert registry.held_entries() == SWEEP_SLICE
    assert registry.stats(top_scenarios=0).total_entries == 0


def test_sweep_stops_at_the_first_live_entry(frozen):
    registry = MemoryRegistry(ttl_ms=TTL_MS, max_entries=100)
    create(registry, "old")
    frozen.tick(timedelta(milliseconds=TTL_MS // 2))
    young = create(registry, "young")
    frozen.tick(timedelta(milliseconds=TTL_MS // 2))
    stats = registry.stats(top_scenarios=0)
    assert (stats.total_entries, stats.expirations) == (1, 1)
    assert registry.get(young) is not None
