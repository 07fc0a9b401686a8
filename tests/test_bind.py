"""Where the service listens: RUN_REGISTRY_BIND, else 0.0.0.0:$PORT, else loopback, under a real gunicorn."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness.servers import Gunicorn
from harness.servers import free_port
from harness.servers import http

pytestmark = pytest.mark.server
WARNING = "anyone who reaches it may start runs and read every transcript"


def bound_by_setting(log_path: Path, host: str, port: int | None = None, env: dict[str, str] | None = None) -> Gunicorn:
    """gunicorn with RUN_REGISTRY_BIND=<host>:<port> as its only say on the address: no --bind, no PORT."""
    server = Gunicorn(log_path, env=env, bind=False)
    server.port = port or server.port
    server.env.pop("PORT", None)
    server.env["RUN_REGISTRY_BIND"] = f"{host}:{server.port}"
    server.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', 'localhost') else host}:{server.port}"
    server.env.update(env or {})
    return server


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_on_both_loopbacks() -> int:
    """A port free on 127.0.0.1 (free_port's probe) and on ::1 too."""
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET6) as probe:
            try:
                probe.bind(("::1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free on both loopbacks")


def test_run_registry_bind_chooses_a_loopback_port(tmp_path):
    with bound_by_setting(tmp_path / "bind.log", "127.0.0.1") as server:
        assert http("GET", f"{server.url}/healthz").json() == {"status": "ok"}
        log = server.log()
    assert f"Listening at: http://127.0.0.1:{server.port}" in log
    assert WARNING not in log  # open, but only this host reaches it


def test_run_registry_bind_takes_an_ipv6_address_in_brackets(tmp_path):
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    with bound_by_setting(tmp_path / "bind6.log", "[::1]", port=free_on_both_loopbacks()) as server:
        assert http("GET", f"{server.url}/healthz").json() == {"status": "ok"}
        log = server.log()
    assert f"Listening at: http://[::1]:{server.port}" in log
    assert WARNING not in log
    with pytest.raises(OSError):  # ::1 alone: nothing answers on IPv4
        http("GET", f"http://127.0.0.1:{server.port}/healthz", timeout=2)


def test_run_registry_bind_wins_over_port_and_says_so(tmp_path):
    host_port = free_port()
    with bound_by_setting(tmp_path / "both.log", "127.0.0.1", env={"PORT": str(host_port)}) as server:
        assert http("GET", f"{server.url}/healthz").status == 200
        with pytest.raises(OSError):
            http("GET", f"http://127.0.0.1:{host_port}/healthz", timeout=2)
        log = server.log()
    assert f"binding RUN_REGISTRY_BIND (127.0.0.1:{server.port}); PORT ignored" in log
    assert f"Listening at: http://127.0.0.1:{server.port}" in log


def test_an_open_service_on_a_public_bind_address_warns_naming_it(tmp_path):
    with bound_by_setting(tmp_path / "public.log", "0.0.0.0") as server:
        assert http("GET", f"{server.url}/healthz").status == 200
        log = server.log()
    assert log.count(WARNING) == 1
    assert f"no RUN_REGISTRY_API_KEYS, and listening on 0.0.0.0:{server.port}: {WARNING}" in log


def test_a_name_that_resolves_to_loopback_is_not_an_exposed_address(tmp_path):
    """The warning reads the sockets gunicorn listens on: localhost is 127.0.0.1 once bound."""
    with bound_by_setting(tmp_path / "name.log", "localhost") as server:
        assert http("GET", f"{server.url}/healthz").status == 200
        log = server.log()
    assert WARNING not in log
