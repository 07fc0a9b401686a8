"""engineCodeHash: which engine code produced a run (docs/operations.md, "engineCodeHash")."""

from __future__ import annotations

import hashlib
import inspect
import logging
import subprocess
from pathlib import Path

from app.config import Settings
from app.engine.base import Engine

log = logging.getLogger(__name__)
CHECKOUT = Path(__file__).resolve().parent.parent


def engine_code_hash(engine: Engine, settings: Settings, checkout: Path = CHECKOUT) -> str:
    """The override, or sha256 of the engine's name and version and the deployed code's identity.

    The identity is the first of: a commit from the environment, the checkout's git HEAD,
    a digest of the engine's own source file. So a new deploy starts new runs.
    """
    if settings.engine_code_hash:
        return settings.engine_code_hash
    identity = settings.engine_commit or _git_head(checkout) or _source_digest(engine)
    return hashlib.sha256(f"{engine.name}\n{engine.version}\n{identity}".encode()).hexdigest()


def _git_head(checkout: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--verify", "--quiet", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    head = result.stdout.strip()
    return head if result.returncode == 0 and head else None


def _source_digest(engine: Engine) -> str:
    source_file = inspect.getsourcefile(type(engine))
    if source_file is None:  # built without a source file: its qualified name is all there is
        log.warning("engine %s has no source file; engineCodeHash covers only its name and version", engine.name)
        return type(engine).__qualname__
    return "source:" + hashlib.sha256(Path(source_file).read_bytes()).hexdigest()
