"""The warden: stops the engine process groups of a process that ended without stopping them.

    python -I -S warden.py <owner pid>     (started by app.engine.children.Warden, its input a pipe)

Its owner writes "+<pgid>" when it starts an engine's process group and "-<pgid>" once the group
is gone. The pipe's end is the owner's end, whatever killed it (SIGKILL, the OOM killer): then
each group still listed gets SIGTERM, and SIGKILL 5 s later if any of it still runs. The standard
library alone (it starts with -S, without site-packages), in a process group of its own, so a
terminal's Ctrl-C for the service does not take it before it has done its job.
"""

import json
import os
import signal
import sys
import time

GRACE_S = 5.0


def main() -> None:
    owner = sys.argv[1] if len(sys.argv) > 1 else "?"
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip().decode("ascii", "replace")
        if text[1:].isdigit() and text[0] in "+-":
            (groups.add if text[0] == "+" else groups.discard)(int(text[1:]))
    alive = [group for group in groups if _signal(group, signal.SIGTERM)]
    if not alive:
        return
    _say(f"run-registry warden: process {owner} ended without stopping engine process groups"
         f" {', '.join(map(str, sorted(alive)))}; stopped them")
    until = time.monotonic() + GRACE_S
    while alive and time.monotonic() < until:
        time.sleep(0.05)
        alive = [group for group in alive if _signal(group, 0)]
    for group in alive:
        _signal(group, signal.SIGKILL)


def _signal(group: int, number: int) -> bool:
    try:
        os.killpg(group, number)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _say(message: str) -> None:
    line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "level": "WARNING",
            "logger": "app.engine.warden", "message": message}
    os.write(1, (json.dumps(line) + "\n").encode())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its owner's terminal is not its business
    main()
