# Two commands on a fresh machine:  `make run` (the proxy on its defaults) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell scripts/find-python)

.PHONY: run test check deps lint typecheck bench bench-dragonfly bench-cluster bench-load bench-faults bench-signing bench-revalidate bench-integrity bench-paths bench-s3api mutate fuzz lock clean

run: $(VENV)/.installed
	$(BIN)/shim run $(ARGS)

# `make test` requires every real component, as CI does: a missing TorchServe venv, Dragonfly
# binary or root for the network namespaces fails the run instead of skipping those tests.
# Opt out, e.g. as a developer without root: `make test SHIM_REQUIRE=0` (all of them), or one at a
# time from the environment (`SHIM_REQUIRE_NETNS=0 make test`).
SHIM_REQUIRE ?= 1
test: export SHIM_REQUIRE_TORCHSERVE ?= $(SHIM_REQUIRE)
test: export SHIM_REQUIRE_NETNS ?= $(SHIM_REQUIRE)
test: export SHIM_REQUIRE_DRAGONFLY ?= $(SHIM_REQUIRE)
test: export SHIM_REQUIRE_S3_CLIENTS ?= $(SHIM_REQUIRE)
test: check deps
	$(BIN)/pytest

# Real components the integration tests run, cached outside the repo (idempotent).
deps:
	scripts/install-torchserve
	scripts/build-dragonfly
	scripts/install-s3-clients

check: lint typecheck

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy shim tests/support bench

# Throughput and peak memory (RSS against 150 MB) through shim, plain HTTP and HTTPS, misses and
# hits of 1 and 8 GiB objects with 2 busy loops on the cores (about 11 min, 17 GB free in
# /var/tmp); ARGS="--sizes-gib 0.125 --cpu-load 0" for a quick look.
bench: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	$(BIN)/python -m bench.bench_s3 $(ARGS)

# 200 small-object clients and 2 large downloads through one shim for 60 s (ARGS=--quick: 10 s).
bench-load: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	$(BIN)/python -m bench.bench_load $(ARGS)

bench-dragonfly: $(VENV)/.dev-installed tests/servers/node_modules/.installed deps
	$(BIN)/python -m bench.bench_dragonfly $(ARGS)

# 2, 4, 8 nodes (shim + Rust dfdaemon each) pull one 1 GiB model at once, 5 cold runs each, with
# and without the one-origin settings (about 30 min on 2 cores; ARGS="--size-mib 128 --nodes 2,4").
bench-cluster: $(VENV)/.dev-installed tests/servers/node_modules/.installed deps
	$(BIN)/python -m bench.bench_cluster $(ARGS)

# shim's main paths (through the dfdaemon, hits, HTTPS) against what they front, side by side.
bench-paths: $(VENV)/.dev-installed tests/servers/node_modules/.installed deps
	$(BIN)/python -m bench.bench_paths $(ARGS)

# Streamer-shaped reads through the S3 API: N concurrent ranged readers (boto3, and the Run:ai
# streamer) of one 2 GiB object, through shim cold and warm against the rate-limited origin
# directly (about 10 min; ARGS="--size-mib 256" for a quick look).
bench-s3api: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	scripts/install-s3-clients
	$(BIN)/python -m bench.bench_s3api $(ARGS)

# Every fault injected into a real shim, with what the client saw and the cache held; exits 1 if
# one breaks a promise (about 75 s; the full-disk rows mount a tmpfs: root).
bench-faults: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	$(BIN)/python -m bench.bench_faults $(ARGS)

# Signing overhead per request and provider, cold and cached (a few seconds, no network).
bench-signing: $(VENV)/.dev-installed
	$(BIN)/python -m bench.bench_signing $(ARGS)

bench-revalidate: $(VENV)/.dev-installed tests/servers/node_modules/.installed
	$(BIN)/python -m bench.bench_revalidate $(ARGS)

# Miss throughput with and without verification, per checksum kind (about a minute).
bench-integrity: $(VENV)/.dev-installed
	$(BIN)/python -m bench.bench_integrity $(ARGS)

# Mutation testing, outside CI (over an hour on 2 cores): mutmut mutates shim/cache,
# decide, access and the addon in a copy (mutants/) and runs their fast tests against each mutant.
# Incremental: a second run only retests what changed (`rm -rf mutants` starts afresh).
MUTATE_CHILDREN ?= 2
mutate: $(VENV)/.mutate-installed
	$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN) $(ARGS)
	$(BIN)/mutmut results

# The container image's dependency locks (deploy/*.lock, with hashes) from pyproject.toml: run
# after changing a dependency, and commit them (tests/test_deploy.py fails while they disagree).
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.12 --generate-hashes --custom-compile-command "make lock"
lock: $(VENV)/.dev-installed
	$(LOCK) pyproject.toml -o deploy/requirements.lock
	$(LOCK) deploy/build-requirements.in -o deploy/build-requirements.lock

# Coverage-guided fuzzing of request recognition and decision (atheris), outside CI.
FUZZ_RUNS ?= 200000
fuzz: $(VENV)/.fuzz-installed
	$(BIN)/python -m fuzz.fuzz_decide -runs=$(FUZZ_RUNS) $(ARGS)

$(VENV)/.fuzz-installed: $(VENV)/.dev-installed
	$(BIN)/pip install --quiet -e '.[dev,fuzz]'
	touch $@

$(VENV)/.mutate-installed: $(VENV)/.dev-installed
	$(BIN)/pip install --quiet -e '.[dev,mutate]'
	touch $@

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
