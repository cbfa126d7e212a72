/*
 * t_stress - concurrency check for the shared accounting.
 *   t_stress worker <threads> <iterations> <max_bytes> <seed>
 *       (run with LD_PRELOAD) each thread allocates and frees at random, holding up to 4 blocks;
 *       every result must be success or CUDA_ERROR_OUT_OF_MEMORY. Prints one JSON line.
 *   t_stress observer <shm_dir> <quota> <stop_file>
 *       (run WITHOUT the interceptor) an independent process that, under the ledger lock, sums
 *       every process's lease on device 0 from the kernel's lock table until <stop_file> exists.
 *       Prints one JSON line: samples, max, violations (samples above quota), final usage, errors.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include <stdbool.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "region.h"
#include "t_common.h"

struct wargs {
    int iters;
    uint64_t max_bytes;
    unsigned seed;
    long ok, oom, other;
};

static uint64_t rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static void *worker(void *p) {
    struct wargs *a = p;
    CUcontext c;
    if (cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS || cuCtxSetCurrent(c) != CUDA_SUCCESS) {
        a->other++;
        return NULL;
    }
    CUdeviceptr held[4] = {0};
    int kind[4] = {0};     /* 0 cuMemAlloc_v2, 1 cuMemAllocAsync (pool), 2 VMM mapping */
    uint64_t vsize[4] = {0};
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    const uint64_t gran = (uint64_t)2 << 20;
    for (int i = 0; i < a->iters; i++) {
        int slot = (int)(rnd(&a->seed) % 4);
        if (held[slot] != 0) {
            CUresult rc;
            bool async = false;
            if (kind[slot] == 2) { /* the handle was released at map time: unmapping frees it */
                rc = cuMemUnmap(held[slot], vsize[slot]);
                if (rc == CUDA_SUCCESS)
                    rc = cuMemAddressFree(held[slot], vsize[slot]);
            } else {
                async = (rnd(&a->seed) & 1) != 0;
                rc = async ? cuMemFreeAsync(held[slot], NULL) : cuMemFree_v2(held[slot]);
            }
            if (rc != CUDA_SUCCESS)
                a->other++;
            /* stream-ordered frees complete (and pools give memory back) at synchronisation */
            if (async && (rnd(&a->seed) & 3) == 0 && cuStreamSynchronize(NULL) != CUDA_SUCCESS)
                a->other++;
            held[slot] = 0;
        } else {
            uint64_t size = 1 + rnd(&a->seed) % a->max_bytes;
            int k = (int)(rnd(&a->seed) % 3);
            CUresult rc;
            if (k == 2) { /* VMM the way vLLM does it: create, map, release the handle at once */
                uint64_t vs = (size + gran - 1) / gran * gran;
                CUmemGenericAllocationHandle h;
                rc = cuMemCreate(&h, vs, &prop, 0);
                if (rc == CUDA_SUCCESS) {
                    CUdeviceptr va = 0;
                    if (cuMemAddressReserve(&va, vs, 0, 0, 0) != CUDA_SUCCESS ||
                        cuMemMap(va, vs, 0, h, 0) != CUDA_SUCCESS || cuMemRelease(h) != CUDA_SUCCESS)
                        a->other++;
                    held[slot] = va;
                    vsize[slot] = vs;
                }
            } else {
                rc = k == 0 ? cuMemAlloc_v2(&held[slot], size) : cuMemAllocAsync(&held[slot], size, NULL);
            }
            kind[slot] = k;
            if (rc == CUDA_SUCCESS)
                a->ok++;
            else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
                a->oom++;
                held[slot] = 0;
            } else {
                a->other++;
                held[slot] = 0;
            }
        }
        if ((i & 63) == 0)
            sched_yield();
    }
    for (int s = 0; s < 4; s++) {
        if (held[s] == 0)
            continue;
        CUresult rc = kind[s] == 2 ? cuMemUnmap(held[s], vsize[s]) : cuMemFree_v2(held[s]);
        if (rc == CUDA_SUCCESS && kind[s] == 2)
            rc = cuMemAddressFree(held[s], vsize[s]);
        if (rc != CUDA_SUCCESS)
            a->other++;
    }
    return NULL;
}

static int run_worker(int threads, int iters, uint64_t max_bytes, unsigned seed) {
    if (cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "cuInit failed\n");
        return 2;
    }
    pthread_t th[64];
    struct wargs args[64];
    if (threads > 64)
        threads = 64;
    for (int i = 0; i < threads; i++) {
        args[i] = (struct wargs){.iters = iters, .max_bytes = max_bytes, .seed = seed * 131u + (unsigned)i};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    long ok = 0, oom = 0, other = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
        oom += args[i].oom;
        other += args[i].other;
    }
    size_t f = 0, t = 0;
    CUresult rc = cuMemGetInfo_v2(&f, &t);
    printf("{\"ok\": %ld, \"oom\": %ld, \"other\": %ld, \"meminfo_rc\": %d, \"free\": %zu, \"total\": %zu}\n", ok,
           oom, other, rc, f, t);
    return other == 0 ? 0 : 1;
}

static int run_observer(const char *dir, uint64_t quota, const char *stop) {
    struct hcs_region r;
    char err[512];
    /* the workers create the ledger file; wait for it */
    for (int i = 0; i < 2000; i++) {
        if (hcs_region_open(&r, dir, false, err, sizeof err) == 0)
            break;
        if (i == 1999) {
            fprintf(stderr, "observer: %s\n", err);
            return 2;
        }
        usleep(5000);
    }
    long samples = 0, violations = 0, errors = 0;
    uint64_t max = 0;
    for (;;) {
        int stopping = access(stop, F_OK) == 0;
        uint64_t u = 0;
        /* under the ledger lock: every process's lease, read from the kernel's lock table */
        if (hcs_region_observe(&r, 0, &u) != 0)
            errors++;
        samples++;
        if (u > quota)
            violations++;
        if (u > max)
            max = u;
        if (stopping)
            break;
        sched_yield();
    }
    /* after every worker has exited: the kernel dropped their leases, nothing is left */
    uint64_t final_used = 0;
    if (hcs_region_observe(&r, 0, &final_used) != 0)
        errors++;
    printf("{\"samples\": %ld, \"max\": %llu, \"violations\": %ld, \"final\": %llu, \"errors\": %ld}\n",
           samples, (unsigned long long)max, violations, (unsigned long long)final_used, errors);
    hcs_region_close(&r);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 6 && strcmp(argv[1], "worker") == 0)
        return run_worker(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 10), (unsigned)atoi(argv[5]));
    if (argc >= 5 && strcmp(argv[1], "observer") == 0)
        return run_observer(argv[2], strtoull(argv[3], NULL, 10), argv[4]);
    fprintf(stderr, "usage: t_stress worker <threads> <iters> <max_bytes> <seed> | observer <dir> <quota> <stop>\n");
    return 2;
}
