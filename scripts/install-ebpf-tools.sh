#!/bin/sh
# Install the eBPF toolkit the node agent's workload-side sub-health signals use (Debian's bpftrace),
# and libfuse3-dev + fuse3 for the simulated driver's device nodes (driver/runtime/simdrv.c: the
# driver ioctl path the syscall tracepoints time; rebuilt by `make -C driver` once present).
# Idempotent; needs root (apt-get). Used by `make ebpf-tools`; the agent falls back to interceptor
# timing when bpftrace is missing or the kernel refuses to load programs (docs/operations.md).
set -eu
missing=""
command -v bpftrace >/dev/null 2>&1 || missing="$missing bpftrace"
pkg-config --exists fuse3 2>/dev/null || missing="$missing libfuse3-dev pkg-config"
command -v fusermount3 >/dev/null 2>&1 || missing="$missing fuse3"
if [ -z "$missing" ]; then
    echo "bpftrace already installed: $(bpftrace --version); libfuse3 $(pkg-config --modversion fuse3)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-ebpf-tools: needs root to run apt-get ($missing)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
bpftrace --version
