"""The code's layout is its architecture: each room of ``app/`` imports only from rooms below it (or
from itself), rooms on one floor do not import each other, and no two modules import each other.
Read from the modules' own import statements (those inside functions too: a lazy import is a
dependency all the same)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from harness.servers import ROOT

APP = ROOT / "app"
# Floors, lowest first: a module may import from its own room and from any room on a lower floor.
FLOORS = [
    # What every room shares: settings, errors, models, text, clock, keys and scopes, logs, metrics,
    # the schemas of what clients send, and Ed25519 keys.
    {"shared"},
    {"serving"},  # the gunicorn worker, and the bridge between greenlets and native threads
    {"registry", "engine"},  # storage behind one protocol; engines behind one interface
    {"evidence"},  # what a done run becomes: replays, CSV, packs, signatures, diffs, their service
    {"runs"},  # a run's life, its verification, the operations view
    {"api", "openapi"},  # HTTP: the blueprints and their document
    {"factory", "worker", "cli"},  # the entry points: the app, the RQ worker, the command line
]
TOP_LEVEL_ROOMS = {"factory": "factory", "worker": "worker"}  # top-level modules that are rooms of their own


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in TOP_LEVEL_ROOMS:
        return TOP_LEVEL_ROOMS[parts[1]]
    if len(parts) >= 2 and (APP / parts[1]).is_dir() and parts[1] != "config":  # settings are shared
        return parts[1]
    return "shared"


def floor(module: str) -> int:
    return next(index for index, rooms in enumerate(FLOORS) if room(module) in rooms)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The app modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("app.") and name != "app":
                found.add(name)
    return found


def test_every_room_imports_only_from_its_own_floor_or_below_and_not_its_neighbours():
    known = modules()
    upward, sideways = [], []
    for module, path in known.items():
        if module == "app":
            continue
        for imported in imports(path, known) - {module}:
            if imported == "app":
                continue
            if floor(imported) > floor(module):
                upward.append(f"{module} -> {imported}")
            elif floor(imported) == floor(module) and room(imported) != room(module) and room(module) != "shared":
                sideways.append(f"{module} -> {imported}")
    assert upward == [], "imports up a floor"
    assert sideways == [], "imports between rooms of one floor"


def test_no_two_modules_import_each_other_and_there_is_no_cycle():
    known = modules()
    graph = {module: imports(path, known) - {module} for module, path in known.items()}
    mutual = [(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in graph[a] and a in graph[b]]
    assert mutual == []
    # A cycle through more than two modules: every module's imports, followed, never lead back to it.
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through others"
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))


def test_the_top_level_holds_only_what_every_room_shares_and_the_entry_points():
    top = sorted(path.stem for path in APP.glob("*.py"))
    assert len(top) <= 15, top
    assert {"factory", "worker"} <= set(top)
