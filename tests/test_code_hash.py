"""engineCodeHash: the override, the commit variables, git HEAD, the source digest; a change is a new run."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from app import create_app
from app.code_hash import engine_code_hash
from app.config import load_settings
from app.engine.pricing import PricingEngine
from harness.fakes import FakeEngine


def expected(identity: str, engine=None) -> str:
    engine = engine or PricingEngine()
    return hashlib.sha256(f"{engine.name}\n{engine.version}\n{identity}".encode()).hexdigest()


def test_override_wins_over_everything():
    settings = load_settings({"ENGINE_CODE_HASH": "pinned", "ENGINE_COMMIT_SHA": "abc"})
    assert engine_code_hash(PricingEngine(), settings) == "pinned"


def test_commit_variables_name_the_deployed_code():
    settings = load_settings({"SOURCE_VERSION": "deadbeef"})
    assert engine_code_hash(PricingEngine(), settings) == expected("deadbeef")


def test_git_head_of_the_checkout_when_no_variable_is_set(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert engine_code_hash(PricingEngine(), load_settings({}), checkout=tmp_path) == expected(head)


def test_source_digest_without_git(tmp_path):
    from app.engine import pricing

    digest = "source:" + hashlib.sha256(Path(pricing.__file__).read_bytes()).hexdigest()
    assert engine_code_hash(PricingEngine(), load_settings({}), checkout=tmp_path) == expected(digest)


def test_engine_version_is_part_of_the_hash():
    settings = load_settings({"ENGINE_COMMIT_SHA": "abc"})
    bumped = FakeEngine()
    bumped.version = "2"
    assert engine_code_hash(FakeEngine(), settings) != engine_code_hash(bumped, settings)


def test_a_new_deploy_starts_new_runs():
    def lookup(commit):
        app = create_app(load_settings({"ENGINE_COMMIT_SHA": commit}), engine=FakeEngine())
        client = app.test_client()
        run_id = client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
        return client.get(f"/runs/{run_id}").get_json()

    old, same, new = lookup("v1"), lookup("v1"), lookup("v2")
    assert old["cacheKey"] == same["cacheKey"] and old["engineCodeHash"] == same["engineCodeHash"]
    assert new["cacheKey"] != old["cacheKey"] and new["engineCodeHash"] != old["engineCodeHash"]
