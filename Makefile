# OutRelay developer entry points. `make test` and `make demo` work on a
# fresh machine with Python 3.11, gcc and pip: they build .venv themselves.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: help venv build proto lint test test-fast bench wheel demo image clean

help:
	@echo "make test     - venv, build extensions, ruff + mypy, full suite (compiled, then data plane pure)"
	@echo "make demo     - run controller, relay and two agents locally and show traffic flowing"
	@echo "make bench    - codec/FSM/ring benchmarks, compiled vs pure, with a speedup table"
	@echo "make proto    - regenerate src/outrelay/proto from proto/"
	@echo "make wheel    - build a manylinux wheel into wheels/"
	@echo "make test-fast - suite without slow/e2e/wheel tests"
	@echo "make image    - container image outrelay:dev (needs a Docker engine)"

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

proto: $(STAMP)
	$(PY) proto/generate.py src

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: build lint
	OUTRELAY_REQUIRE_EXTENSIONS=1 $(PY) -m pytest
	OUTRELAY_NO_EXTENSIONS=1 $(PY) -m pytest -m dataplane

test-fast: build
	OUTRELAY_REQUIRE_EXTENSIONS=1 $(PY) -m pytest -m 'not slow and not e2e and not wheel'

bench: build
	$(PY) bench/run.py

wheel: $(STAMP)
	rm -rf build/wheel-dist
	$(PY) -m build --wheel --outdir build/wheel-dist .
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair --wheel-dir wheels build/wheel-dist/*.whl
	@ls -l wheels/

demo: build
	$(PY) -m outrelay.demo

clean:
	rm -rf build dist wheels/*.whl .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
	find src/outrelay/_fast -name '*.c' -delete

image:
	docker build -f deployments/Dockerfile -t outrelay:dev .
