"""Gunicorn settings: bind from PORT, workers by registry backend, threads, graceful stop.

Settings are validated here, in the master, so a bad variable stops the service at
start-up with one line naming it, instead of a worker traceback.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app.config import ConfigError
from app.config import load_settings
from app.config import positive_int
from app.config import redacted_url
from app.engine import load_engine

# Measured with wrk on 2 cores (README, "Choosing the thread count"): 4 threads keep the
# lookup-hit rate within a few percent of 1 thread, while leaving spare threads so a slow
# engine run never stalls the requests behind it.
DEFAULT_THREADS = 4

try:
    _settings = load_settings(os.environ)
    load_engine(_settings.engine)
    _port = positive_int(os.environ, "PORT", default=0)
    threads = positive_int(os.environ, "GUNICORN_THREADS", default=DEFAULT_THREADS)
    _web_concurrency = positive_int(os.environ, "WEB_CONCURRENCY", default=2 * (os.cpu_count() or 1))
except ConfigError as err:
    sys.exit(f"run-registry: refusing to start: {err}")

bind = [f"0.0.0.0:{_port}"] if _port else ["127.0.0.1:3001"]
worker_class = "gthread"
# Redis holds the fleet's one registry, so any number of workers may share it. A dict cannot
# be shared between processes: two workers would each answer "new" for the same key with
# different runIds. So with the in-memory registry exactly one, whatever WEB_CONCURRENCY says.
workers = _web_concurrency if _settings.shared_registry else 1
graceful_timeout = 30  # SIGTERM: stop accepting, let in-flight requests finish
timeout = 60
keepalive = 5
# The control socket (gunicornc) sits at one path per user: two services on a host would clash.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = "info"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# Everything to stdout, one line per record (twelve-factor logs); app loggers propagate to root.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stdout"},
        "access": {"class": "logging.StreamHandler", "formatter": "message", "stream": "ext://sys.stdout"},
    },
    "formatters": {
        "generic": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"},
        "message": {"format": "%(message)s"},
    },
}


def on_starting(server):  # noqa: ARG001 - gunicorn's hook signature
    """Say once how many workers there are and why, since WEB_CONCURRENCY may ask otherwise."""
    log = logging.getLogger("gunicorn.error")
    if _settings.shared_registry:
        log.info("run-registry: %d worker processes with %d threads each, sharing the registry at %s",
                 workers, threads, redacted_url(_settings.registry_url))
    else:
        log.info(
            "run-registry: 1 worker process with %d threads: the in-memory registry (%s) lives in one process%s",
            threads, _settings.registry_url,
            f"; WEB_CONCURRENCY={os.environ['WEB_CONCURRENCY']} ignored" if os.environ.get("WEB_CONCURRENCY") else "",
        )

