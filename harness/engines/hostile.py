"""A process engine (``run-registry-engine/1``) that behaves, or misbehaves, as its first argument says.

    command:<python> -I -S harness/engines/hostile.py <behaviour> [<argument>]
    command:<python> -I -S harness/engines/hostile.py by-scenario   (the scenarioId's first word says)

The standard library alone, started with -I -S (no site-packages: it starts in ~15 ms). Each
behaviour is one way an engine in the field goes wrong; the tests hold the service to what it
promises for each (a failure that says why, a service that keeps answering, nothing left running).
"""

import json
import os
import signal
import subprocess
import sys
import time

# A child of the engine's own, sleeping; its command line names this file, so a test finds it too.
SLEEPER = [sys.executable, "-I", "-S", "-c", "import time; time.sleep(3600)", __file__]


def emit(event_type, data):
    sys.stdout.write(json.dumps({"type": event_type, "data": data}) + "\n")
    sys.stdout.flush()


def story(scenario_id, seed, tokens=3, pause_s=0.0):
    emit("start", {"scenarioId": scenario_id, "seed": seed})
    for index in range(1, tokens + 1):
        time.sleep(pause_s)
        emit("token", {"text": f" word{(seed + index) % 97}", "tokenIndex": index})
    emit("report", {"score": seed % 11, "scenario": scenario_id})
    emit("done", {"totalTokens": tokens})


def main():
    behaviour = sys.argv[1] if len(sys.argv) > 1 else "steady"
    argument = sys.argv[2] if len(sys.argv) > 2 else ""
    request = json.loads(sys.stdin.readline())
    if request.get("op") == "describe":
        if behaviour == "describe-fails":
            print("no describing today", file=sys.stderr)
            sys.exit(4)
        if behaviour == "describe-garbles":
            print("hello")
            return
        emit_description = {"name": f"hostile-{behaviour}", "version": argument or "1"}
        print(json.dumps(emit_description))
        return
    scenario_id, seed = request["scenarioId"], request["seed"]
    if behaviour == "by-scenario":  # one engine for many tests: "crash-1" crashes, "steady-x" is steady
        behaviour = scenario_id.split("-")[0]
    if behaviour == "steady":
        story(scenario_id, seed)
    elif behaviour == "paced":  # <ms between tokens>:<tokens>
        pause_ms, tokens = (int(part) for part in (argument or "20:5").split(":"))
        story(scenario_id, seed, tokens=tokens, pause_s=pause_ms / 1000)
    elif behaviour == "crash":
        emit("start", {"seed": seed})
        print("Traceback (most recent call last):\n  File engine.js\nValueError: the model blew up \x1b[2J",
              file=sys.stderr, flush=True)
        sys.exit(3)
    elif behaviour == "signal":
        emit("start", {"seed": seed})
        os.kill(os.getpid(), signal.SIGKILL)
    elif behaviour == "garble":
        emit("start", {"seed": seed})
        emit("token", {"text": "fine", "tokenIndex": 1})
        sys.stdout.write("this is not JSON\n")
        sys.stdout.flush()
        time.sleep(30)  # stopped by the service, not by its own end
    elif behaviour == "error-event":
        emit("start", {"seed": seed})
        emit("error", {})
    elif behaviour == "nothing":
        print("nothing to say", file=sys.stderr)
    elif behaviour == "flood":  # stderr lines, then the story: the log keeps a bounded number of them
        for line in range(int(argument or "5000")):
            sys.stderr.write(f"progress line {line} " + "x" * 100 + "\n")
        sys.stderr.flush()
        story(scenario_id, seed)
    elif behaviour == "huge":  # more than 32 MiB of well-formed events
        emit("start", {"seed": seed})
        chunk = json.dumps({"type": "token", "data": {"text": "y" * 1_000_000, "tokenIndex": 1}}) + "\n"
        for _ in range(40):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        emit("done", {})
    elif behaviour == "hang":  # a child of its own, then nothing, for ever (until it is stopped)
        child = subprocess.Popen(SLEEPER)
        emit("start", {"seed": seed, "child": child.pid})
        print(f"waiting for ever; my child is {child.pid}", file=sys.stderr, flush=True)
        time.sleep(3600)
    elif behaviour == "stubborn":  # ignores SIGTERM: only SIGKILL ends it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        emit("start", {"seed": seed})
        time.sleep(3600)
    elif behaviour == "leaves-a-child":  # a well-formed run, and a child left running behind it
        child = subprocess.Popen(SLEEPER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        emit("start", {"seed": seed})
        emit("report", {"leftBehind": child.pid})
        emit("done", {"totalTokens": 0})
    elif behaviour == "environment":  # what it was given, as its report
        emit("start", {"seed": seed})
        emit("report", {"environment": dict(sorted(os.environ.items()))})
        emit("done", {"totalTokens": 0})
    elif behaviour == "seed-from-clock":  # not deterministic
        emit("start", {"seed": seed, "at": time.time_ns()})
        emit("done", {})
    else:
        print(f"unknown behaviour {behaviour}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
