"""Gunicorn settings: bind from RUN_REGISTRY_BIND or PORT, workers by registry backend, threads, graceful stop.

Settings are validated here, in the master, so a bad variable stops the service at
start-up with one line naming it, instead of a worker traceback.
"""

import glob
import ipaddress
import logging
import os
import resource
import shutil
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gunicorn.util
from gunicorn.glogging import Logger

from app.config import ConfigError
from app.config import load_settings
from app.config import positive_int
from app.config import registry_url_for_display
from app.engine import load_engine
from app.serving.concurrency import gevent_active
from app.serving.web_worker import write_json_error

# Connections one worker holds at once (gevent: a greenlet each). Waiting connections (live
# streams, waiting lookups) may take RUN_REGISTRY_MAX_WAITING of them; the rest stay free for
# hits, health checks and whatever arrives meanwhile. README, "Serving model".
DEFAULT_WORKER_CONNECTIONS = 2000

try:
    _settings = load_settings(os.environ)
    load_engine(_settings).close()  # it loads (a process engine describes itself), or the service does not start
    worker_connections = positive_int(os.environ, "GUNICORN_WORKER_CONNECTIONS", default=DEFAULT_WORKER_CONNECTIONS)
    _web_concurrency = positive_int(os.environ, "WEB_CONCURRENCY", default=2 * (os.cpu_count() or 1))
    if _settings.max_waiting >= worker_connections:
        raise ConfigError(
            f"RUN_REGISTRY_MAX_WAITING ({_settings.max_waiting}) must be less than GUNICORN_WORKER_CONNECTIONS"
            f" ({worker_connections}): connections that do not wait need room too"
        )
except ConfigError as err:
    sys.exit(f"run-registry: refusing to start: {err}")

# Redis holds the fleet's one registry, so any number of workers may share it. A dict cannot
# be shared between processes: two workers would each answer "new" for the same key with
# different runIds. So with the in-memory registry exactly one, whatever WEB_CONCURRENCY says.
workers = _web_concurrency if _settings.shared_registry else 1

# With several workers, each writes its metrics to files here and a scrape sums them
# (prometheus_client's multiprocess mode, chosen when prometheus_client is first imported, in
# the workers). One worker keeps them in memory: the files cost each request about two
# microseconds more (docs/benchmarks.md), for a sum of one.
_own_metrics_dir = workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="run-registry-metrics-")
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    for _stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_stale)  # figures of an earlier run would be summed in

# RUN_REGISTRY_BIND, else 0.0.0.0:$PORT (a Heroku-style host's), else loopback (app/config.py); gunicorn's
# own --bind (or GUNICORN_CMD_ARGS="--bind ...") still overrides it, for unix sockets or several addresses.
bind = [_settings.bind]
# Evented: an idle, slow or streaming connection costs a greenlet, not a thread, so none of them
# can stop the service from answering others; engines run on real threads of their own
# (app/serving/concurrency.py). gevent also answered about twice gthread's requests a second here.
worker_class = "app.serving.web_worker.WebWorker"  # gevent's, with deadlines for clients that never finish
graceful_timeout = 30  # SIGTERM: stop accepting, let in-flight requests finish
timeout = 60
# With the gevent worker this also bounds how long a connection may take to send a request's
# line and headers (each one, the first included): idle and slow clients are cut after it.
keepalive = 5
# Headers are read by gunicorn_h1c (picohttpparser), not gunicorn's Python parser, which rescans
# the whole head on every read: 59 ms for 90 headers of 8 KB, 4 ms in C. And fewer of them: 32
# lines of at most 8 KiB (nginx's own default is 32 KiB for the whole head), so no request's
# head costs more than a few milliseconds to read, whatever a client sends (docs/operations.md).
http_parser = "fast"
limit_request_fields = 32
limit_request_field_size = 8190
limit_request_line = 4094


def _raise_open_files_limit() -> None:
    """Every connection is a file descriptor: lift the soft limit (often 1024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_raise_open_files_limit()
# The control socket (gunicornc) sits at one path per user: two services on a host would clash.
control_socket_disable = True
accesslog = None  # the app logs one JSON line per request itself, with its request id


class _WithoutAccessLog(Logger):
    """gunicorn's logger, minus its access log, which any logconfig_dict switches back on: the
    app writes the one JSON line per request, and gunicorn's would be a second (at a cost)."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = _WithoutAccessLog

# gunicorn answers a request it cannot parse (a request line over 4094 bytes, a header too
# large, a malformed line) itself, before the app sees it, with an HTML page that echoes the
# input. Every answer of this service is JSON and echoes nothing, so its writer is replaced.
gunicorn.util.write_error = write_json_error
errorlog = "-"
loglevel = "info"
# Everything to stdout as JSON, one object a line; app loggers propagate to root.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
    },
    "filters": {"request_id": {"()": "app.logs.RequestIdFilter"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"],
                   "stream": "ext://sys.stdout"},
    },
    "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
}


def on_starting(server):  # noqa: ARG001 - gunicorn's hook signature
    """Say once how many workers there are and why, since WEB_CONCURRENCY may ask otherwise (and
    that PORT is not used when RUN_REGISTRY_BIND is set)."""
    log = logging.getLogger("gunicorn.error")
    if os.environ.get("RUN_REGISTRY_BIND", "").strip() and os.environ.get("PORT", "").strip():
        log.info("run-registry: binding RUN_REGISTRY_BIND (%s); PORT ignored", _settings.bind)
    if _settings.shared_registry:
        log.info("run-registry: %d worker processes (gevent, %d connections each), sharing the registry at %s",
                 workers, worker_connections, registry_url_for_display(_settings.registry_url))
    else:
        log.info(
            "run-registry: 1 worker process (gevent, %d connections): the in-memory registry (%s) lives in one"
            " process%s", worker_connections, _settings.registry_url,
            f"; WEB_CONCURRENCY={os.environ['WEB_CONCURRENCY']} ignored" if os.environ.get("WEB_CONCURRENCY") else "",
        )


def _exposed_addresses(server) -> list[str]:
    """The addresses gunicorn listens on that others may reach, as host:port: read from its sockets,
    so a name is what it resolved to and a port 0 the port given, whichever of RUN_REGISTRY_BIND,
    PORT, --bind or GUNICORN_CMD_ARGS chose them."""
    exposed = []
    for listener in server.LISTENERS:
        if listener.sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue  # a unix socket (or an inherited one of another kind) is reached from this host only
        host, port = listener.sock.getsockname()[:2]
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_loopback:
            exposed.append(f"[{host}]:{port}" if listener.sock.family == socket.AF_INET6 else f"{host}:{port}")
    return exposed


def when_ready(server):
    """Say what is open to whom: without keys, on an address others reach, everything is
    (docs/operations.md, "Keys and scopes"); behind a Heroku-style router every client's connection
    comes from the router, and without trusting its X-Forwarded-For all would share one client's limits."""
    log = logging.getLogger("gunicorn.error")
    exposed = _exposed_addresses(server)
    if exposed and not _settings.api_keys:
        log.warning(
            "run-registry: no RUN_REGISTRY_API_KEYS, and listening on %s: anyone who reaches it may start runs and"
            " read every transcript", ", ".join(exposed)
        )
    if os.environ.get("DYNO") and not _settings.trusted_proxies:
        log.warning(
            "run-registry: DYNO is set but RUN_REGISTRY_TRUSTED_PROXIES is 0: behind the host's router every"
            " client shares the router's new-run limit and waiting room; set RUN_REGISTRY_TRUSTED_PROXIES=1"
        )


def child_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """A dead worker's live gauges must not be summed any more."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """No engine process outlives the worker that started it (however the worker was told to stop)."""
    extensions = getattr(worker.wsgi, "extensions", None)  # the Flask app, once the worker loaded it
    service = extensions.get("run_service") if extensions else None
    if service is not None:
        service.close()


def on_exit(server):  # noqa: ARG001 - gunicorn's hook signature
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_request(worker, req, environ, resp):  # noqa: ARG001 - gunicorn's hook signature
    """Let the other connections' greenlets run before this one reads its next request.

    A greenlet yields only when a read would block; a keep-alive client that sends its next
    request while the last answer is being finished is read at once, again and again, and the
    other connections wait: `make bench` measured lookup hits at p99 470 ms with 16 connections,
    6.6 ms with this yield, for 3 % fewer requests a second.
    """
    if gevent_active():
        from gevent import sleep

        sleep(0)


def post_worker_init(worker):
    """Say when a worker has loaded the app and serves: a worker stopped before it is ready
    finishes booting first (so tests and operators know when a replacement is in service)."""
    logging.getLogger("gunicorn.error").info("run-registry: worker ready (pid: %d)", worker.pid)
