"""A registry backend that does not answer is the API's 503, wherever a service meets it."""

from __future__ import annotations

from app.errors import Unavailable
from app.registry.base import RegistryUnavailable


class _RegistryErrors:
    """Turn a backend outage into the API's 503 (a class, not ``@contextmanager``: every lookup
    hit enters one, and a generator-based one costs several times as much)."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if isinstance(error, RegistryUnavailable):
            raise Unavailable("The run registry is unavailable; try again shortly") from error


registry_errors = _RegistryErrors()  # stateless: one for every use
