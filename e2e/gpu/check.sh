#!/usr/bin/env bash
# e2e/gpu/check.sh - libhcs_interceptor.so on a real NVIDIA GPU (written for a lent H200).
#
# Builds the interceptor on this machine, builds the CUDA test programs (driver API with gcc and a
# minimal header of our own - no CUDA toolkit needed; the CUDA runtime program only when nvcc
# exists), and runs e2e/gpu/run_checks.py under a 4 GiB quota: allocation past it fails, memory
# queries (driver, runtime, torch.cuda.mem_get_info) report it, a second process shares it, and the
# overhead of alloc/free loops and a small training step is measured against native; compute shares
# (25/75, 4x25, 30% alone) are measured from a fixed PTX kernel loop's throughput (compute_check.c).
# Also compares the NVLink islands hcs inspect reads with nvidia-smi topo -m (topology_check.py).
# Issue 22: VMM and stream-ordered pool checks, PyTorch with expandable_segments / cudaMallocAsync,
# a CUDA graph, nvidia-smi inside. Results: one JSON object in $OUT/gpu-check.json (or
# ./gpu-check.json). Runs within 10 min on one GPU.
# Exit 0 when every functional check passed.
set -u
START_DIR=$(pwd)
cd "$(dirname "$0")/../.."
OUTDIR=${OUT:-$START_DIR}
RESULT="$OUTDIR/gpu-check.json"
export HCS_GPU_WORK
HCS_GPU_WORK=$(mktemp -d /tmp/hcs-gpu-XXXXXX)
trap 'rm -rf "$HCS_GPU_WORK"' EXIT

fail() { # write a JSON error result and stop
    printf '{"error": "%s", "all_functional_checks_pass": false}\n' "$1" | tee "$RESULT"
    exit 1
}

CC=${CC:-cc}
command -v "$CC" >/dev/null 2>&1 || CC=gcc
command -v "$CC" >/dev/null 2>&1 || fail "no C compiler (cc/gcc) on this machine"
command -v python3 >/dev/null 2>&1 || fail "no python3 on this machine"

make -s -C interceptor CC="$CC" >"$HCS_GPU_WORK/build.log" 2>&1 ||
    make -s -C interceptor CC="$CC" LTO= >"$HCS_GPU_WORK/build.log" 2>&1 || fail "make -C interceptor failed: $(tail -3 "$HCS_GPU_WORK/build.log" | tr '"\n' "' ")"
"$CC" -std=c11 -O2 -Wall -Wextra -Werror -Iinterceptor/include -o "$HCS_GPU_WORK/gpu_check" e2e/gpu/gpu_check.c -ldl \
    >"$HCS_GPU_WORK/cc.log" 2>&1 || fail "building gpu_check failed: $(tail -3 "$HCS_GPU_WORK/cc.log" | tr '"\n' "' ")"
"$CC" -std=c11 -O2 -Wall -Wextra -Werror -Iinterceptor/include -o "$HCS_GPU_WORK/compute_check" e2e/gpu/compute_check.c -ldl \
    >"$HCS_GPU_WORK/cc.log" 2>&1 || fail "building compute_check failed: $(tail -3 "$HCS_GPU_WORK/cc.log" | tr '"\n' "' ")"

NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -n "$NVCC" ]; then
    # the runtime is linked statically by default; use the shared one so its driver calls go
    # through dlsym/cuGetProcAddress exactly as for every framework
    timeout 60 "$NVCC" -O2 -cudart shared -o "$HCS_GPU_WORK/rt_check" e2e/gpu/rt_check.cu \
        >"$HCS_GPU_WORK/nvcc.log" 2>&1 || echo "nvcc build failed; CUDA runtime checks skipped" >&2
fi

# run_checks.py stops starting new steps after 420 s; builds above take at most ~70 s (< 10 min)
timeout 480 python3 e2e/gpu/run_checks.py "$RESULT" || {
    rc=$?
    [ -s "$RESULT" ] || fail "run_checks.py ended with status $rc before writing its result"
    exit "$rc"
}
