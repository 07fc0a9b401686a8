"""What ``run-registry`` says before it asks anything: a usage error names what is wrong and shows
the right form (exit 2, one line), and every command's help has examples and the variables it
reads. No service is needed: a wrong --url is refused before anything is sent."""

from __future__ import annotations

import os
import subprocess

import pytest

from app.config import ConfigError
from app.config import load_settings
from app.engine import load_engine
from harness.servers import GUNICORN

RUN_REGISTRY = str(GUNICORN.with_name("run-registry"))


def cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([RUN_REGISTRY, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": os.environ["PATH"], **(env or {})})


def refused(done: subprocess.CompletedProcess, status: int, line: str) -> None:
    """Refused with ``status`` and exactly ``line`` on standard error, nothing on standard output."""
    assert (done.returncode, done.stdout, done.stderr) == (status, "", line + "\n")


@pytest.mark.parametrize(
    ("url", "line"),
    [("localhost:3521", "--url localhost:3521 has no scheme: a service's URL starts with http:// or https://, such as"
                        " http://localhost:3521"),
     ("ftp://files.example.com/", "--url ftp://files.example.com/ is not http or https: a service's URL is such as"
                                  " http://files.example.com/"),
     ("http://", "--url http:// names no host: a service's URL is such as http://127.0.0.1:3001"),
     ("http://localhost:30o1", "--url http://localhost:30o1 has a port that is not a number 0-65535: a service's URL"
                               " is such as http://127.0.0.1:3001")],
    ids=["no-scheme", "ftp", "no-host", "port-not-a-number"],
)
def test_a_url_that_is_no_service_is_a_usage_error_before_anything_is_sent(url, line):
    refused(cli("events", "run_a_1_1", "--url", url), 2,
            f"run-registry events: {line} (see run-registry events --help)")


def test_a_url_from_the_environment_is_checked_as_one_given_and_named_as_the_variable():
    refused(cli("status", "run_a_1_1", env={"RUN_REGISTRY_SERVICE_URL": "localhost:3521"}), 2,
            "run-registry status: RUN_REGISTRY_SERVICE_URL localhost:3521 has no scheme: a service's URL starts with"
            " http:// or https://, such as http://localhost:3521 (see run-registry status --help)")


ENGINE_FORMS = "command:<command line>, http(s)://... or openai:<base URL>"


@pytest.mark.parametrize(
    ("spec", "line"),
    [("inventory", "not an engine (no :attribute after the module): name one as module:attribute (a Python engine,"
                   f" such as inventory:Engine), {ENGINE_FORMS}"),
     ("json:", "not an engine ('' is not an attribute's dotted name): name one as module:attribute (a Python engine,"
               f" such as json:Engine), {ENGINE_FORMS}"),
     ("json:Engine.", "not an engine ('Engine.' is not an attribute's dotted name): name one as module:attribute (a"
                      f" Python engine, such as json:Engine), {ENGINE_FORMS}")],
    ids=["no-colon", "no-attribute", "empty-part"],
)
def test_check_engine_says_what_forms_an_engine_takes(spec, line, tmp_path):
    refused(cli("check-engine", spec, cwd=tmp_path), 1, f"run-registry: check-engine: {spec}: {line}")


def test_the_services_engine_setting_is_refused_in_the_same_words():
    # The settings let a Python engine's name end in a dot: loading it said "has no attribute ''".
    settings = load_settings({"RUN_REGISTRY_ENGINE": "json:JSONDecoder."})
    with pytest.raises(ConfigError) as refusal:
        load_engine(settings)
    assert str(refusal.value) == (
        "RUN_REGISTRY_ENGINE json:JSONDecoder.: not an engine ('JSONDecoder.' is not an attribute's dotted name):"
        f" name one as module:attribute (a Python engine, such as json:Engine), {ENGINE_FORMS}")


@pytest.mark.parametrize(
    ("scopes", "line"),
    [("read+read", "run-registry: key ci: scope read is given twice (each of read, run, ops once at most)"),
     ("run+read+run", "run-registry: key ci: scope run is given twice (each of read, run, ops once at most)"),
     ("read+write", "run-registry: key ci: scopes must be one or more of read, run, ops joined by +")],
    ids=["read-twice", "run-twice", "unknown"],
)
def test_new_key_says_which_scope_is_wrong(scopes, line):
    refused(cli("new-key", "ci", scopes), 2, line)


def test_verify_pack_takes_the_public_key_as_public_key_and_still_as_key(tmp_path):
    shown = cli("verify-pack", "--help").stdout
    assert "--public-key keys" in shown and "--key" not in shown  # the old spelling works, out of the help
    for option in ("--public-key", "--key"):
        refused(cli("verify-pack", "pack.zip", option, "keys.json", cwd=tmp_path), 2,
                "run-registry: verify-pack: keys.json: No such file or directory")
    refused(cli("verify-pack", "pack.zip"), 2, "run-registry verify-pack: one of the arguments --public-key is"
                                               " required (see run-registry verify-pack --help)")


ONLINE = ("lookup", "status", "events", "snapshot", "verify", "compare", "signing-keys")


def test_the_help_shows_examples_and_the_environment_it_reads():
    overview = cli("--help").stdout
    for text in ("examples:", 'run-registry status "$RUN"', "--public-key keys.json", "RUN_REGISTRY_SERVICE_URL",
                 "RUN_REGISTRY_KEY", "exit status:", "SIGPIPE"):
        assert text in overview, text
    for command in ONLINE:
        shown = cli(command, "--help").stdout
        assert f"examples:\n  run-registry {command} " in shown, command
        assert "environment:\n  RUN_REGISTRY_SERVICE_URL " in shown, command
        # signing-keys sends no key: its help names no variable for one
        assert ("RUN_REGISTRY_KEY " in shown.split("environment:")[1]) is (command != "signing-keys"), command
