"""Turning a recorded transcript into evidence: SSE replay, CSV, ZIP pack, diffs. Pure functions."""
