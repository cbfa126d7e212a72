# HCS developer entry points. `make dev` then `make test` works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev c-build proto test test-unit lint e2e bench clean chart-crds

dev: $(STAMP) c-build

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

c-build:
	@if [ -f driver/Makefile ]; then $(MAKE) -s -C driver; fi
	@if [ -f interceptor/Makefile ]; then $(MAKE) -s -C interceptor; fi

proto: $(STAMP)
	$(BIN)/python proto/generate.py

test: dev
	$(BIN)/pytest -q

test-unit: dev
	$(BIN)/pytest -q -m "not cluster and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check hcs tests bench
	$(BIN)/mypy hcs

e2e: dev
	$(BIN)/pytest -q -m e2e

# The chart ships byte-identical copies of hcs/node/crds (tests/helm checks they match).
chart-crds:
	cp hcs/node/crds/*.yaml helm/hcs/files/crds/

clean:
	rm -rf $(VENV) driver/build interceptor/build
