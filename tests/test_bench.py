"""A few-second run of the benchmark, so the script never rots. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.run import SMOKE_ROWS
from harness.servers import ROOT
from harness.servers import require_binary

pytestmark = pytest.mark.server


def test_the_benchmark_runs_and_prints_its_table(tmp_path):
    require_binary("wrk")
    report = tmp_path / "benchmarks.md"
    result = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--markdown", str(report)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    for row in SMOKE_ROWS:
        assert f"| {row} |" in text, row
    assert "ratio to peer" in text and "µs of CPU more than an in-memory one" in text
    for figure in ("memory per cached run, tracemalloc", "memory per cached run, RSS growth",
                   "memory per determinism ledger key, tracemalloc", "Redis memory per determinism ledger key",
                   "entries:", "sweep of", "live streams of one run", "byte-identical to the replay",
                   "server memory per live stream", "lookup hits while they stream", "slow and",
                   "event creation to a live client, memory", "event creation to a live client, redis",
                   "new runs a second, 2 workers", "lookup to the first live event",
                   "live streams of one run over two web processes",
                   "lookup to done against the command run directly", "event creation to a live client, process engine",
                   "less a Python engine's", "sent straight to the server", "first token, from the server's write"):
        assert figure in text, figure


def test_the_overhead_measurement_runs_and_prints_its_table():
    result = subprocess.run([sys.executable, "-m", "bench.overhead", "--calls", "200"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for row in ("lookup hit", "events JSON, 304", "GET /runs/<runId>", "events SSE (done run)", "CSV export",
                "snapshot ZIP"):
        assert f"| {row} |" in result.stdout, row


def test_the_report_replaces_only_what_lies_between_its_markers(tmp_path):
    from bench.run import BEGIN
    from bench.run import END
    from bench.run import write_report

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\nprose before\n{BEGIN}\nold table\n{END}\nprose after\n")
    write_report(page, "new table\n")
    assert page.read_text() == f"# Benchmarks\nprose before\n{BEGIN}\nnew table\n{END}\nprose after\n"
    bare = tmp_path / "bare.md"
    write_report(bare, "new table\n")
    assert bare.read_text() == "new table\n"
