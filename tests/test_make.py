"""The Makefile installs what each command needs: `make run` the runtime alone, `make test` and
`make lint` the test and lint tools too, whichever comes first (a venv made by `make run` gets them).

Run against a copy of the Makefile whose .venv holds stand-ins that write down how they were
called, so nothing is installed: what is checked is which installs each target asks for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import ROOT
from harness.servers import require_binary

PROJECT_FILES = ("Makefile", "requirements.txt", "requirements-dev.txt", "setup.cfg", "pyproject.toml")
STAND_INS = ("python", "uv", "gunicorn", "pytest", "ruff", "mypy")
RUNTIME = "uv pip install --quiet --system-certs --python .venv/bin/python -r requirements.txt"
EDITABLE = "uv pip install --quiet --system-certs --python .venv/bin/python --no-deps -e ."
DEV = "uv pip install --quiet --system-certs --python .venv/bin/python -r requirements-dev.txt"

# What requirements-dev.txt adds, by the name it is imported as: none of it may be imported by the
# service, which `make run` starts with requirements.txt alone.
DEV_ONLY_IMPORTS = {
    "pytest": "pytest", "pytest-xdist": "xdist", "execnet": "execnet", "freezegun": "freezegun",
    "schemathesis": "schemathesis", "hypothesis": "hypothesis", "honcho": "honcho", "playwright": "playwright",
    "securesystemslib": "securesystemslib", "in-toto-attestation": "in_toto_attestation", "protobuf": "google",
    "gguf": "gguf", "numpy": "numpy", "tqdm": "tqdm", "ruff": "ruff", "mypy": "mypy",
}


@pytest.fixture
def checkout(tmp_path):
    """The Makefile and its inputs in a directory whose .venv/bin holds logging stand-ins."""
    require_binary("make")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in STAND_INS:
        stand_in = bin_dir / name
        stand_in.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.log"\n')
        stand_in.chmod(0o755)
    return tmp_path


def make(checkout: Path, *targets: str) -> list[str]:
    """Run make there; the stand-ins' calls it made, one line each."""
    log = checkout / "calls.log"
    log.write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAKE", "MFLAGS"))}
    done = subprocess.run(["make", "--no-print-directory", *targets], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().splitlines()


def test_make_run_installs_the_runtime_alone(checkout):
    assert make(checkout, "run") == [RUNTIME, EDITABLE, "gunicorn -c gunicorn.conf.py wsgi:app"]
    assert make(checkout, "run") == ["gunicorn -c gunicorn.conf.py wsgi:app"]  # installed once


def test_make_test_after_make_run_installs_the_test_tools(checkout):
    make(checkout, "run")
    calls = make(checkout, "test")
    assert calls[0] == DEV and calls[1].startswith("pytest ") and len(calls) == 2
    assert make(checkout, "test")[0].startswith("pytest ")  # and only once


@pytest.mark.parametrize("target", ["test", "test-fast", "lint"])
def test_testing_and_linting_on_a_fresh_clone_install_both(checkout, target):
    calls = make(checkout, target)
    assert calls[:3] == [RUNTIME, EDITABLE, DEV]


def test_make_run_redis_installs_the_runtime_alone(checkout):
    planned = subprocess.run(["make", "--no-print-directory", "-n", "run-redis"], cwd=checkout, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert RUNTIME in planned and EDITABLE in planned and "requirements-dev.txt" not in planned


def test_a_venv_without_uv_gets_the_pinned_one_from_pip_first(checkout):
    (checkout / ".venv" / "bin" / "uv").unlink()
    planned = subprocess.run(["make", "--no-print-directory", "-n", "run"], cwd=checkout, capture_output=True,
                             text=True, timeout=60, check=True).stdout.splitlines()
    pinned = next(line for line in (checkout / "Makefile").read_text().splitlines() if line.startswith("UV_VERSION"))
    getting_uv = next(index for index, line in enumerate(planned) if "-m pip install" in line)
    assert f"uv=={pinned.split(':=')[1].strip()}" in planned[getting_uv]
    assert getting_uv < next(index for index, line in enumerate(planned) if "uv pip install" in line)


def test_a_changed_requirement_reinstalls_what_it_belongs_to(checkout):
    make(checkout, "test")
    for name, stamp, expected in (("requirements-dev.txt", ".installed-dev", [DEV]),
                                  ("requirements.txt", ".installed-run", [RUNTIME, EDITABLE, DEV])):
        before = (checkout / name).stat().st_mtime - 10  # the file changed after its install
        os.utime(checkout / ".venv" / stamp, (before, before))
        assert make(checkout, "test")[:-1] == expected, name


def test_the_service_imports_nothing_only_the_test_tools_install():
    dev_names = {line.split("==")[0].strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
                 if line.strip() and not line.startswith(("#", "-r"))}
    runtime = {line.split("==")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert dev_names - runtime == set(DEV_ONLY_IMPORTS)  # a new dev dependency: name its import here
    probe = (
        "import importlib, pkgutil, sys; sys.path.insert(0, '.'); import app, wsgi, app.worker, app.cli.main\n"
        "for module in pkgutil.walk_packages(app.__path__, 'app.'): importlib.import_module(module.name)\n"
        f"print(sorted({{name.split('.')[0] for name in sys.modules}} & {set(DEV_ONLY_IMPORTS.values())!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RUN_REGISTRY_ACCESS_LOG": "off"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
