"""engineCodeHash: which engine code produced a run (docs/engines.md, "engineCodeHash").

An engine's identity is its content, as Bazel keys an action by its tool's digest: its name and
version, a digest of what it runs (a Python engine's source files wherever it is installed, a
process engine's executable and the files under its root, what a remote engine publishes), and
the deployed commit. A name and version alone would let an edited engine (a version not bumped)
be served the old engine's runs; this repository's commit alone says nothing of an engine kept
outside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

from app.config import Settings
from app.engine.base import Identity
from app.engine.children import capture

log = logging.getLogger(__name__)
CHECKOUT = Path(__file__).resolve().parent.parent.parent
# An engine's package is a few files; past these bounds it is something else (a whole
# environment on the path), and the digest covers what it has read so far, with a warning.
MAX_SOURCE_FILES = 10_000
MAX_SOURCE_BYTES = 256 * 2**20
# Not the engine's content: compiled files and version control's own records (which change with
# every fetch, not with the engine).
_SKIPPED_DIRECTORIES = frozenset({"__pycache__", ".git", ".hg", ".svn"})


class CodeHash:
    """engineCodeHash for an engine's identity, computed once per identity (its commit part, a
    git HEAD perhaps, looked up once): lookup hits ask for it on every request."""

    def __init__(self, settings: Settings, checkout: Path = CHECKOUT) -> None:
        self._override = settings.engine_code_hash
        self._commit = settings.engine_commit or ("" if self._override else _git_head(checkout) or "")
        self._last: tuple[Identity, str] | None = None

    def of(self, identity: Identity) -> str:
        last = self._last
        if last is not None and last[0] is identity:
            return last[1]
        code_hash = self._override or engine_code_hash(identity, self._commit)
        self._last = (identity, code_hash)
        return code_hash


def engine_code_hash(identity: Identity, commit: str) -> str:
    """sha256 of the engine's name, version and digest, and the deployed commit (the first commit
    variable set, else this checkout's git HEAD, else none)."""
    material = f"{identity.name}\n{identity.version}\n{identity.digest}\n{commit}"
    return hashlib.sha256(material.encode()).hexdigest()


def python_source_digest(engine: object) -> str:
    """``source:`` and the sha256 of a Python engine's own files: the top-level package its class
    is defined in (every file of it but compiled ones), or its module's file when it is no package.

    The top-level package, not the module alone: an engine's helpers (its tables, its numerics)
    shape its output as much as the module that yields the events.
    """
    module_name = type(engine).__module__
    top = sys.modules.get(module_name.partition(".")[0])
    roots = [Path(path) for path in getattr(top, "__path__", ()) or ()]
    if not roots:
        module_file = getattr(sys.modules.get(module_name), "__file__", None)
        if module_file is None:  # built without a source file: its qualified name is all there is
            log.warning("engine %s has no source file; engineCodeHash covers only its name and version",
                        getattr(engine, "name", "?"))
            return type(engine).__qualname__
        return "source:" + _digest_of_files([(Path(module_file).name, Path(module_file))])
    files = [
        (f"{index}/{path.relative_to(root).as_posix()}", path)
        for index, root in enumerate(sorted(roots)) for path in _source_files(root)
    ]
    return "source:" + _digest_of_files(sorted(files))


def tree_digest(root: Path) -> str:
    """sha256 over every file under ``root`` (names relative to it, and contents), as a Python
    engine's package is digested: a process engine's script, its modules, its data files."""
    return _digest_of_files(sorted((path.relative_to(root).as_posix(), path) for path in _source_files(root)))


def file_digest(path: Path) -> str:
    """sha256 of one file's bytes (an engine's executable: its interpreter, say), read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while piece := file.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _source_files(root: Path) -> list[Path]:
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name not in _SKIPPED_DIRECTORIES)
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
    # Not subprocess: under the gevent worker it is gevent's, whose child watcher would leave the
    # process reaping every child (app/engine/children.py), process engines' included.
    code, output = capture(["git", "-C", str(checkout), "rev-parse", "--verify", "--quiet", "HEAD"], timeout_s=5)
    head = output.decode(errors="replace").strip()
    return head if code == 0 and head else None
