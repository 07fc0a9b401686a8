"""engineCodeHash: the override, the commit variables, git HEAD, the source digest; a change is a new run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from app.config import load_settings
from app.engine import as_engine
from app.engine import load_engine
from app.engine.identity import CHECKOUT
from app.engine.identity import CodeHash
from app.engine.identity import python_source_digest
from app.engine.pricing import PricingEngine
from harness.fakes import FakeEngine


def engine_code_hash(engine, settings, checkout=CHECKOUT) -> str:
    """The engineCodeHash a service with ``settings`` gives ``engine`` (an adapter, or a Python engine)."""
    return CodeHash(settings, checkout).of(as_engine(engine).identity())


def expected(commit: str, engine=None) -> str:
    engine = engine or PricingEngine()
    identity = f"{engine.name}\n{engine.version}\n{python_source_digest(engine)}\n{commit}"
    return hashlib.sha256(identity.encode()).hexdigest()


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


def test_no_commit_at_all_leaves_the_engines_own_digest(tmp_path):
    assert engine_code_hash(PricingEngine(), load_settings({}), checkout=tmp_path) == expected("")


def test_the_source_digest_covers_every_file_of_the_engines_top_level_package():
    import app

    root = Path(app.__file__).parent
    files = sorted(path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts
                   and path.suffix not in (".pyc", ".pyo"))
    lines = "".join(f"0/{path.relative_to(root).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                    for path in files)
    assert python_source_digest(PricingEngine()) == "source:" + hashlib.sha256(lines.encode()).hexdigest()


ENGINE_V1 = """
class Engine:
    name = "outside"
    version = "1.0.0"

    def run(self, scenario_id, seed):
        return [{"type": "start", "data": {"seed": seed}}, {"type": "done", "data": {"answer": %s}}]
"""


@pytest.fixture
def outside_engine(tmp_path, monkeypatch):
    """An engine kept outside this repository, as a user brings one: a module on PYTHONPATH."""
    module = tmp_path / "myeng.py"
    module.write_text(ENGINE_V1 % "41")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop("myeng", None)


def test_an_engine_kept_outside_the_repository_edited_without_a_version_bump_has_a_new_hash(outside_engine):
    settings = load_settings({"RUN_REGISTRY_ENGINE": "myeng:Engine", "ENGINE_COMMIT_SHA": "same-deploy"})
    before = engine_code_hash(load_engine(settings), settings)
    outside_engine.write_text(ENGINE_V1 % "42")  # the answer changed; the version did not
    after = engine_code_hash(load_engine(settings), settings)
    assert before != after
    outside_engine.write_text(ENGINE_V1 % "41")
    assert engine_code_hash(load_engine(settings), settings) == before  # its content, nothing else


def test_a_packaged_engines_helpers_are_part_of_its_hash(tmp_path, monkeypatch):
    package = tmp_path / "teameng"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text("from teameng.tables import TABLE\n" + ENGINE_V1 % "TABLE")
    (package / "tables.py").write_text("TABLE = 1\n")
    (package / "__pycache__").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = load_settings({"RUN_REGISTRY_ENGINE": "teameng.engine:Engine", "ENGINE_COMMIT_SHA": "x"})
    try:
        before = engine_code_hash(load_engine(settings), settings)  # each a service's start
        (package / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"compiled")
        assert engine_code_hash(load_engine(settings), settings) == before  # compiled files are not the engine's code
        (package / "tables.py").write_text("TABLE = 2\n")
        assert engine_code_hash(load_engine(settings), settings) != before
    finally:
        for name in ("teameng", "teameng.engine", "teameng.tables"):
            sys.modules.pop(name, None)


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
