# Two commands on a fresh machine:  `make run` (the proxy on its defaults) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell scripts/find-python)

.PHONY: run test check deps lint typecheck bench bench-dragonfly clean

run: $(VENV)/.installed
	$(BIN)/shim run $(ARGS)

test: check deps
	$(BIN)/pytest

# Real components the integration tests run, cached outside the repo (idempotent).
deps:
	scripts/install-torchserve
	scripts/build-dragonfly

check: lint typecheck

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy shim tests/support bench

bench: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	$(BIN)/python -m bench.bench_s3 $(ARGS)

bench-dragonfly: $(VENV)/.dev-installed tests/servers/node_modules/.installed deps
	$(BIN)/python -m bench.bench_dragonfly $(ARGS)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed tests/servers/node_modules/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

tests/servers/node_modules/.installed: tests/servers/package-lock.json
	npm ci --prefix tests/servers --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) tests/servers/node_modules
