"""Gunicorn settings: bind from PORT, one worker for the in-memory registry, threads, graceful stop.

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
except ConfigError as err:
    sys.exit(f"run-registry: refusing to start: {err}")

bind = [f"0.0.0.0:{_port}"] if _port else ["127.0.0.1:3001"]
worker_class = "gthread"
# A dict cannot be shared between processes: two workers would each answer "new" for
# the same key with different runIds. So exactly one, whatever WEB_CONCURRENCY says.
workers = 1
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
    """Say once why there is one worker, since WEB_CONCURRENCY may ask for more."""
    logging.getLogger("gunicorn.error").info(
        "run-registry: 1 worker process with %d threads: the in-memory registry (%s) lives in one"
        " process%s", threads, _settings.registry_url,
        f"; WEB_CONCURRENCY={os.environ['WEB_CONCURRENCY']} ignored" if os.environ.get("WEB_CONCURRENCY") else "",
    )
