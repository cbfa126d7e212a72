/*
 * t_sync - cost of a cuStreamSynchronize on an idle stream, with or without LD_PRELOAD (and with or
 * without the interceptor's synchronise timing, HCS_COMPUTE_DIR). Used by bench/synctime.py.
 *   t_sync <calls>
 * Prints one JSON line: {"calls": n, "ns_per_sync": wall/n, "errors": e}.
 */
#include <time.h>

#include "hcs_vendor_abi.h"
#include "t_common.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: t_sync <calls>\n");
        return 2;
    }
    long calls = atol(argv[1]);
    CUcontext c;
    if (calls < 1 || cuInit(0) != CUDA_SUCCESS || cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS ||
        cuCtxSetCurrent(c) != CUDA_SUCCESS) {
        fprintf(stderr, "setup failed\n");
        return 2;
    }
    int errors = 0;
    for (int i = 0; i < 1000; i++) /* warm-up: lazy symbols, the ring's first open */
        errors += cuStreamSynchronize(NULL) != CUDA_SUCCESS;
    double t0 = now();
    for (long i = 0; i < calls; i++)
        errors += cuStreamSynchronize(NULL) != CUDA_SUCCESS;
    double dt = now() - t0;
    printf("{\"calls\": %ld, \"ns_per_sync\": %.2f, \"errors\": %d}\n", calls, dt / (double)calls, errors);
    return errors ? 1 : 0;
}
