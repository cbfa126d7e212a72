# HCS developer entry points. `make dev` then `make test` works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev c-build proto test test-stress test-unit lint e2e bench clean chart-crds image e2e-chart e2e-checkpoint ebpf-tools

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
	$(BIN)/pytest -q -m "not stress"

# The full-size over-commit proof (tests/allocator/test_allocator_live_stress.py: 1,000 binds, 100 SIGKILLs,
# 100 watch cuts; ~2.5 min on a quiet machine, much longer under load)
test-stress: dev
	$(BIN)/pytest -q -m stress

test-unit: dev
	$(BIN)/pytest -q -m "not cluster and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check hcs tests bench
	$(BIN)/mypy hcs

e2e: dev
	$(BIN)/pytest -q -m e2e

# Container images built here without a Docker daemon (buildah + a Debian base made by mmdebstrap):
# OCI archives under build/images/ (e2e/image/README.md).
image:
	e2e/image/build

# The installed chart on the multi-node local cluster: images, `up --workers 3`, helm install, tests/e2e
# with HCS_E2E_TARGET=chart, helm uninstall (e2e/chart/README.md). Not part of `make test`.
e2e-chart: dev
	e2e/chart/run

# Checkpoint recovery (issue 21) on its own 2-node cluster with containerd 2.3 + CRIU 4.1 (root; builds containerd
# and the CRIU root on first use): e2e/checkpoint/README.md. Not part of `make test`.
e2e-checkpoint: dev
	e2e/checkpoint/criu-setup --self-test
	$(BIN)/python e2e/checkpoint/cluster.py up
	$(BIN)/pytest -q -m checkpoint tests/checkpoint

# Debian's bpftrace for the agent's workload-side sub-health signals (eBPF uprobes); needs root.
ebpf-tools:
	scripts/install-ebpf-tools.sh

# The chart ships byte-identical copies of hcs/node/crds (tests/helm checks they match).
chart-crds:
	cp hcs/node/crds/*.yaml helm/hcs/files/crds/

clean:
	rm -rf $(VENV) driver/build interceptor/build
