"""Turning a recorded transcript into evidence: SSE replay, CSV, the signed ZIP pack and its
keys, diffs and verification, and the service that serves them to the API."""
