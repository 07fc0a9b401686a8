# Two commands for a fresh machine: `make run` and `make test`. Each sets itself up, with what it
# needs: `make run` the service's runtime (requirements.txt and the run-registry command), `make
# test` and `make lint` the test and lint tools on top (requirements-dev.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# uv installs the pinned requirements, into the venv that pip (which the venv comes with) put it in.
# Measured on a fresh clone of a 2-core box with warm caches: the runtime in 13 s (the venv and uv
# included) and the tools in 1 s, where pip took 26 s and 22 s; CI makes a fresh venv every run. Like pip's --no-compile, uv leaves modules to be
# compiled when first imported: the few the service imports, not every module of every package.
UV_VERSION := 0.13.10
# --system-certs: trust the machine's certificate store (as curl and apt do), not only uv's own
# bundle, so a proxy that the machine trusts is trusted here too.
INSTALL := $(BIN)/uv pip install --quiet --system-certs --python $(BIN)/python

.PHONY: run run-redis test test-fast lint bench soak clean
REDIS_PORT ?= 6390

run: $(RUN_STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# The fleet on one machine: a private redis-server (nothing kept on disk) that requires a password
# (made once, kept in .redis-$(REDIS_PORT).conf, readable by you alone), the fleet's evidence signing
# key (made once, beside it in .signing-key-$(REDIS_PORT).pem, mode 0600), WORKERS workers executing the
# runs from the job queue (default 1: `make run-redis WORKERS=4`), and gunicorn with WEB_CONCURRENCY
# web workers (default: two per core) on http://127.0.0.1:3001; Ctrl-C stops them all, quietly.
REDIS_CONF := $(CURDIR)/.redis-$(REDIS_PORT).conf
SIGNING_KEY := $(CURDIR)/.signing-key-$(REDIS_PORT).pem
WORKERS ?= 1
run-redis: $(RUN_STAMP)
	test -s $(REDIS_CONF) || (umask 077; printf 'requirepass %s\n' \
		"$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')" > $(REDIS_CONF))
	test -s $(SIGNING_KEY) || $(BIN)/run-registry new-signing-key $(SIGNING_KEY) > /dev/null
	redis-server $(REDIS_CONF) --port $(REDIS_PORT) --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
		--pidfile $(CURDIR)/.redis-$(REDIS_PORT).pid --logfile $(CURDIR)/.redis-$(REDIS_PORT).log
	for try in $$(seq 100); do redis-cli -p $(REDIS_PORT) ping 2>&1 | grep -q -e PONG -e NOAUTH && break; sleep 0.05; done
	export RUN_REGISTRY_URL="redis://:$$(sed -n 's/^requirepass //p' $(REDIS_CONF))@127.0.0.1:$(REDIS_PORT)/0" \
		RUN_REGISTRY_EXECUTION=queue RUN_REGISTRY_SIGNING_KEY=$${RUN_REGISTRY_SIGNING_KEY:-$(SIGNING_KEY)}; \
		workers=""; for n in $$(seq $(WORKERS)); do $(BIN)/python -m app.worker & workers="$$workers $$!"; done; \
		trap 'kill -TERM $$workers 2>/dev/null; wait $$workers 2>/dev/null; \
		      redis=$$(cat $(CURDIR)/.redis-$(REDIS_PORT).pid); kill $$redis 2>/dev/null; \
		      while kill -0 $$redis 2>/dev/null; do sleep 0.05; done; true' EXIT; \
		trap 'exit 0' INT TERM; \
		$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Everything CI runs: units, in-process tests, and real gunicorn, redis-server, nginx, Chromium.
# TEST_PROCESSES pytest processes (pytest-xdist), each taking whole files, so a file's shared
# servers start once; `make test TEST_PROCESSES=0` runs everything in this one process.
TEST_PROCESSES ?= 2
test: $(DEV_STAMP)
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# The fast loop while working: units and in-process tests, no servers (about 35 s).
test-fast: $(DEV_STAMP)
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile -m "not server" $(PYTEST_ARGS)

# The benchmark (about fifteen minutes): the service against its floor, written to docs/benchmarks.md.
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run --markdown docs/benchmarks.md

# The reliability scenarios at length (about fifteen minutes); the short versions are in `make test`.
soak: $(DEV_STAMP)
	$(BIN)/python -m soak.run

lint: $(DEV_STAMP)
	$(BIN)/ruff check app tests harness bench soak wsgi.py gunicorn.conf.py
	$(BIN)/mypy

# The runtime alone: the service and the run-registry command.
$(RUN_STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(INSTALL) -r requirements.txt
	$(INSTALL) --no-deps -e .  # the run-registry command
	touch $(RUN_STAMP)

# The test, lint, bench and soak tools on top of the runtime (pytest, playwright, schemathesis,
# mypy, ...): a venv made by `make run` gets them at its first `make test`.
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(INSTALL) -r requirements-dev.txt
	touch $(DEV_STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
