"""The Run Registry: a Flask service that runs each deterministic scenario once and keeps its transcript.

``create_app`` lives in ``app.factory`` and is looked up here only when asked for (PEP 562):
gunicorn's master imports ``app.config`` to check the settings, and importing the whole app
there would load redis-py, and with it ssl, before the gevent worker patches them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from app.factory import create_app

        return create_app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
