#!/bin/sh
# Install the eBPF toolkit the node agent's workload-side sub-health signals use (Debian's bpftrace).
# Idempotent; needs root (apt-get). Used by `make ebpf-tools`; the agent falls back to interceptor
# timing when bpftrace is missing or the kernel refuses to load programs (docs/operations.md).
set -eu
if command -v bpftrace >/dev/null 2>&1; then
    echo "bpftrace already installed: $(bpftrace --version)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-ebpf-tools: needs root to run apt-get (bpftrace)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends bpftrace
bpftrace --version
