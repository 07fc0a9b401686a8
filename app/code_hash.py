"""engineCodeHash: which engine code produced a run (docs/operations.md, "engineCodeHash").

An engine's identity is its content, as Bazel keys an action by its tool's digest: its name and
version, a digest of its own source files wherever it is installed, and the deployed commit.
A name and version alone would let an edited engine (a version not bumped) be served the old
engine's runs; this repository's commit alone says nothing of an engine kept outside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from app.config import Settings
from app.engine.base import Engine

log = logging.getLogger(__name__)
CHECKOUT = Path(__file__).resolve().parent.parent
# An engine's package is a few files; past these bounds it is something else (a whole
# environment on the path), and the digest covers what it has read so far, with a warning.
MAX_SOURCE_FILES = 10_000
MAX_SOURCE_BYTES = 256 * 2**20


def engine_code_hash(engine: Engine, settings: Settings, checkout: Path = CHECKOUT) -> str:
    """The override, or sha256 of the engine's name, version, source digest and the deployed commit
    (the first commit variable set, else this checkout's git HEAD, else none)."""
    if settings.engine_code_hash:
        return settings.engine_code_hash
    commit = settings.engine_commit or _git_head(checkout) or ""
    identity = f"{engine.name}\n{engine.version}\n{engine_source_digest(engine)}\n{commit}"
    return hashlib.sha256(identity.encode()).hexdigest()


def engine_source_digest(engine: Engine) -> str:
    """``source:`` and the sha256 of the engine's own files: the top-level package its class is
    defined in (every file of it but compiled ones), or its module's file when it is no package.

    The top-level package, not the module alone: an engine's helpers (its tables, its numerics)
    shape its output as much as the module that yields the events.
    """
    module_name = type(engine).__module__
    top = sys.modules.get(module_name.partition(".")[0])
    roots = [Path(path) for path in getattr(top, "__path__", ()) or ()]
    if not roots:
        module_file = getattr(sys.modules.get(module_name), "__file__", None)
        if module_file is None:  # built without a source file: its qualified name is all there is
            log.warning("engine %s has no source file; engineCodeHash covers only its name and version", engine.name)
            return type(engine).__qualname__
        return "source:" + _digest_of_files([(Path(module_file).name, Path(module_file))])
    files = [
        (f"{index}/{path.relative_to(root).as_posix()}", path)
        for index, root in enumerate(sorted(roots)) for path in _source_files(root)
    ]
    return "source:" + _digest_of_files(sorted(files))


def _source_files(root: Path) -> list[Path]:
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
        found += [Path(directory) / name for name in sorted(names) if not name.endswith((".pyc", ".pyo"))]
    return found


def _digest_of_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over each file's name (relative to its package) and content digest, in name order."""
    digest = hashlib.sha256()
    total = 0
    for count, (name, path) in enumerate(files):
        try:
            content = path.read_bytes()
        except OSError:
            continue  # a broken link, a file gone meanwhile: not part of the engine
        total += len(content)
        if count >= MAX_SOURCE_FILES or total > MAX_SOURCE_BYTES:
            log.warning("the engine's package holds more than %d files or %d bytes; engineCodeHash covers the"
                        " first %d", MAX_SOURCE_FILES, MAX_SOURCE_BYTES, count)
            break
        digest.update(f"{name}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return digest.hexdigest()


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
