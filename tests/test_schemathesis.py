"""schemathesis against the running service: every response must match /openapi.json, none a 500."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import Gunicorn

pytestmark = pytest.mark.server
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 25


SECRET = "schemathesis-key-with-every-scope"


def test_the_api_keeps_to_its_openapi_document(tmp_path):
    # With a key of every scope, as the document declares it (schemathesis also checks that a
    # request without one is refused where the document says a key is needed).
    keys = {"RUN_REGISTRY_API_KEYS": f"schemathesis:{hashlib.sha256(SECRET.encode()).hexdigest()}:read+run+ops"}
    with Gunicorn(tmp_path / "gunicorn.log", env=keys) as server:
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {SECRET}",
             "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", "20261126",
             "--generation-database", "none", "--workers", "1", "--no-color", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) > 100, output[-2000:]
    print(f"schemathesis: {generated.group(0)} test cases")
    assert "500 Internal" not in server.log()
