# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test lint bench clean lock floors

PIP_VERSION       := 26.3
PIP_TOOLS_VERSION := 7.7.0

# Re-install whenever pyproject.toml or the lock changes, so a pull that adds a dependency just works.
# Every package comes from requirements.lock, exact versions with their hashes; lambdalite itself goes
# in last, editable, with nothing more resolved (--no-deps) and no build environment of its own.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lambdalite needs Python 3.11 or newer")'
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Renew requirements.lock from pyproject.toml (newest versions its ranges allow), in a throwaway venv.
# `make lock LOCK_FLAGS=` keeps every locked version and only adds what pyproject.toml newly asks for.
LOCK_FLAGS ?= --upgrade
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	.venv-lock/bin/pip-compile --quiet $(LOCK_FLAGS) --generate-hashes --allow-unsafe --strip-extras --extra dev --extra bench \
		--output-file requirements.lock pyproject.toml
	rm -rf .venv-lock

# One stack per folder: a second `make run` beside a running one says so in one line and starts nothing.
run: $(STAMP)
	@$(VENV)/bin/python -m broker.stacklock
	$(VENV)/bin/honcho start

# The whole suite in two passes: on TEST_WORKERS workers (pytest-xdist, a file at a time each), then
# the tests whose promise is a wall-clock bound (marked serial) alone. With PYTEST_ARGS, just those.
TEST_WORKERS ?= 2
test: $(STAMP)
ifeq ($(strip $(PYTEST_ARGS)),)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(VENV)/bin/python -m pytest -q -m serial
else
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
endif

# The floors in pyproject.toml, seen to work: runtime dependencies held at their lowest versions
# (tests/floors.py), a smoke subset of the tests on them.
FLOOR_TESTS ?= tests/test_broker.py tests/test_stack_e2e.py tests/test_http_e2e.py tests/test_files_e2e.py \
	tests/test_sqlite_stack.py
floors:
	rm -rf .venv-floors && $(PYTHON) -m venv .venv-floors
	.venv-floors/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	$(PYTHON) tests/floors.py > .venv-floors/floors.txt
	.venv-floors/bin/python -m pip install --quiet -c .venv-floors/floors.txt -e '.[dev]'
	PATH=$(abspath .venv-floors)/bin:$$PATH .venv-floors/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# The benches that write the performance page's scale curves and its comparison with other task queues
# (bench/curves.py, bench/peers.py: about an hour on a 2-core machine); the others run one by one.
bench: $(STAMP)
	nice -n 10 $(VENV)/bin/python bench/curves.py --write
	nice -n 10 $(VENV)/bin/python bench/peers.py --write

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy broker workers sources

clean:
	rm -rf var/ .pytest_cache
