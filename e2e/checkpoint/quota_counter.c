/*
 * quota_counter - the checkpoint tests' workload WITH the VRAM interceptor: vram_counter.c's counter, but its
 * "VRAM" is allocated through the (simulated) CUDA driver API, so libhcs_interceptor.so accounts it in the
 * container's ledger and enforces the container's quota.
 *
 * It allocates VRAM_MIB MiB with cuMemAlloc_v2 (simulated device memory is host memory of the process),
 * fills it with a pattern, and every 100 ms advances one step, checks one MiB, and probes the quota at its
 * exact boundary: cuMemGetInfo_v2 gives (free, total) as the interceptor reports them (total = the quota,
 * free = quota - what the container uses); an allocation of free + 1 bytes must fail and one of free bytes
 * must succeed (and is freed again). One line per step:
 *
 *   step=<n> t=<unix s.ms> vram_mib=<m> ok=<1|0> device=<$HCS_DEVICE_FILE> total=<b> free=<b> exact=<1|0>
 *   cuda_uuid=<the UUID the runtime reports for ordinal 0>
 *
 * Dynamic (glibc, libcuda.so.1 of driver/runtime from the node's /opt/hcs, the interceptor preloaded).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct {
    char bytes[16];
} CUuuid;

CUresult cuInit(unsigned int flags);
CUresult cuDeviceGet(CUdevice *dev, int ordinal);
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes);
CUresult cuMemFree_v2(CUdeviceptr p);
CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b);
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);

#define MIB (1024UL * 1024UL)

static uint64_t pattern(uint64_t word) { return word * 0x9E3779B97F4A7C15ULL; }

static void read_device(const char *path, char *out, size_t n) {
    snprintf(out, n, "-");
    if (!path)
        return;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fgets(out, (int)n, f))
        out[strcspn(out, "\n")] = 0;
    else
        snprintf(out, n, "-");
    fclose(f);
}

static void cuda_uuid(char *out, size_t n) {
    CUuuid u;
    CUdevice d;
    if (cuDeviceGet(&d, 0) != 0 || cuDeviceGetUuid(&u, d) != 0) {
        snprintf(out, n, "-");
        return;
    }
    const unsigned char *b = (const unsigned char *)u.bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int main(int argc, char **argv) {
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    const char *devfile = getenv("HCS_DEVICE_FILE");
    CUdevice dev;
    CUcontext ctx;
    CUdeviceptr dptr;
    if (cuInit(0) != 0 || cuDeviceGet(&dev, 0) != 0 || cuDevicePrimaryCtxRetain(&ctx, dev) != 0 ||
        cuCtxSetCurrent(ctx) != 0) {
        fprintf(stderr, "quota_counter: no CUDA device (HCS_SIM_PROFILE, LD_LIBRARY_PATH?)\n");
        return 1;
    }
    CUresult rc = cuMemAlloc_v2(&dptr, mib * MIB);
    if (rc != 0) {
        fprintf(stderr, "quota_counter: cuMemAlloc_v2(%lu MiB) = %d\n", mib, rc);
        return 1;
    }
    uint64_t *buf = (uint64_t *)(uintptr_t)dptr; /* simulated device memory is host memory */
    size_t words_per_mib = MIB / sizeof(uint64_t);
    for (size_t i = 0; i < mib * words_per_mib; i++)
        buf[i] = pattern(i);
    uint64_t step = 0;
    char devname[128], uuid[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        step++;
        for (size_t m = 0; m < mib; m++)
            buf[m * words_per_mib] += step;
        uint64_t sum = step * (step + 1) / 2;
        size_t m = step % (mib ? mib : 1);
        int ok = 1;
        for (size_t i = 0; i < words_per_mib && mib; i++) {
            size_t w = m * words_per_mib + i;
            if (buf[w] != pattern(w) + (i == 0 ? sum : 0)) {
                ok = 0;
                break;
            }
        }
        size_t free_b = 0, total_b = 0;
        int exact = cuMemGetInfo_v2(&free_b, &total_b) == 0;
        CUdeviceptr probe;
        if (exact) {
            CUresult over = cuMemAlloc_v2(&probe, free_b + 1);
            if (over == 0) {
                (void)cuMemFree_v2(probe);
                exact = 0;
            }
            if (free_b > 0) {
                if (cuMemAlloc_v2(&probe, free_b) == 0)
                    (void)cuMemFree_v2(probe);
                else
                    exact = 0;
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        read_device(devfile, devname, sizeof devname);
        cuda_uuid(uuid, sizeof uuid);
        printf("step=%llu t=%lld.%03ld vram_mib=%lu ok=%d device=%s total=%zu free=%zu exact=%d cuda_uuid=%s\n",
               (unsigned long long)step, (long long)ts.tv_sec, ts.tv_nsec / 1000000, mib, ok, devname, total_b, free_b,
               exact, uuid);
        struct timespec d = {0, 100 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
}
