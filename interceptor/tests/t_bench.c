/*
 * t_bench - cost of a cuMemAlloc_v2 + cuMemFree_v2 pair, with or without LD_PRELOAD.
 *   t_bench <pairs> <bytes> <threads>
 * Prints one JSON line: {"pairs": total, "seconds": wall, "ns_per_pair": wall/pairs*threads,
 * "pairs_per_s": total/wall}. Used by bench/interceptor.py (also under valgrind --tool=callgrind).
 */
#include <pthread.h>
#include <time.h>

#include "hcs_vendor_abi.h"
#include "t_common.h"

struct targs {
    long pairs;
    size_t bytes;
    int errors;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *loop(void *p) {
    struct targs *a = p;
    CUcontext c;
    if (cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS || cuCtxSetCurrent(c) != CUDA_SUCCESS) {
        a->errors++;
        return NULL;
    }
    for (long i = 0; i < a->pairs; i++) {
        CUdeviceptr d;
        if (cuMemAlloc_v2(&d, a->bytes) != CUDA_SUCCESS || cuMemFree_v2(d) != CUDA_SUCCESS)
            a->errors++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: t_bench <pairs> <bytes> <threads>\n");
        return 2;
    }
    long pairs = atol(argv[1]);
    size_t bytes = (size_t)strtoull(argv[2], NULL, 10);
    int threads = atoi(argv[3]);
    if (threads < 1 || threads > 64 || cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "setup failed\n");
        return 2;
    }
    struct targs a[64];
    pthread_t th[64];
    /* warm-up: resolves lazy symbols and attaches the region outside the timed part */
    a[0] = (struct targs){.pairs = 1000, .bytes = bytes};
    loop(&a[0]);
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        a[i] = (struct targs){.pairs = pairs, .bytes = bytes};
        pthread_create(&th[i], NULL, loop, &a[i]);
    }
    int errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        errors += a[i].errors;
    }
    double dt = now() - t0;
    double total = (double)pairs * threads;
    printf("{\"pairs\": %.0f, \"seconds\": %.6f, \"ns_per_pair\": %.2f, \"pairs_per_s\": %.0f, \"errors\": %d}\n",
           total, dt, dt / (double)pairs * 1e9, total / dt, errors);
    return errors ? 1 : 0;
}
