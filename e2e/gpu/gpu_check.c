/*
 * gpu_check - CUDA driver-API checks of libhcs_interceptor.so on a real GPU (e2e/gpu/check.sh).
 * Needs no CUDA toolkit: libcuda.so.1 is dlopen'ed and every entry point is looked up with dlsym,
 * the way the CUDA runtime does, so the interceptor's dlsym and cuGetProcAddress paths are used.
 *
 *   gpu_check limits <quota>     boundary: quota-256MiB ok, +512MiB refused (2), +256MiB ok, +1 refused
 *   gpu_check getproc <quota>    cuMemAlloc from cuGetProcAddress is limited too
 *   gpu_check hold <bytes>       allocate, print "ready", wait for stdin to close
 *   gpu_check alloc <bytes>      allocate, print {"rc":..,"free":..,"total":..}
 *   gpu_check loop <n> <bytes>   n cuMemAlloc/cuMemFree pairs, print {"ns_per_pair":..}
 * Every mode prints one JSON line on stdout.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hcs_vendor_abi.h"

#define MIB (1ULL << 20)

static CUresult (*p_cuInit)(unsigned int);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemGetInfo)(size_t *, size_t *);
static CUresult (*p_cuGetProcAddress)(const char *, void **, int, cuuint64_t);

#define LOAD(lib, var, name)                                                                             \
    do {                                                                                                 \
        *(void **)(&var) = dlsym(lib, name);                                                             \
        if (var == NULL) {                                                                               \
            printf("{\"error\": \"libcuda.so.1 has no %s\"}\n", name);                                  \
            exit(2);                                                                                     \
        }                                                                                                \
    } while (0)

static void setup(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("{\"error\": \"dlopen libcuda.so.1: %s\"}\n", dlerror());
        exit(2);
    }
    LOAD(lib, p_cuInit, "cuInit");
    LOAD(lib, p_cuDeviceGet, "cuDeviceGet");
    LOAD(lib, p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    LOAD(lib, p_cuCtxSetCurrent, "cuCtxSetCurrent");
    LOAD(lib, p_cuMemAlloc, "cuMemAlloc_v2");
    LOAD(lib, p_cuMemFree, "cuMemFree_v2");
    LOAD(lib, p_cuMemGetInfo, "cuMemGetInfo_v2");
    LOAD(lib, p_cuGetProcAddress, "cuGetProcAddress");
    CUdevice d;
    CUcontext c;
    CUresult rc = p_cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = p_cuDeviceGet(&d, 0);
    if (rc == CUDA_SUCCESS)
        rc = p_cuDevicePrimaryCtxRetain(&c, d);
    if (rc == CUDA_SUCCESS)
        rc = p_cuCtxSetCurrent(c);
    if (rc != CUDA_SUCCESS) {
        printf("{\"error\": \"CUDA setup failed with %d\"}\n", rc);
        exit(2);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int limits(unsigned long long q, CUresult (*alloc)(CUdeviceptr *, size_t), const char *mode) {
    size_t f0 = 0, t0 = 0, f1 = 0, t1 = 0;
    CUresult info0 = p_cuMemGetInfo(&f0, &t0);
    CUdeviceptr a = 0, b = 0, c = 0, x = 0;
    CUresult r_a = alloc(&a, q - 256 * MIB);
    CUresult r_over = alloc(&x, 512 * MIB);
    if (r_over == CUDA_SUCCESS)
        p_cuMemFree(x);
    CUresult r_rest = alloc(&b, 256 * MIB);
    CUresult r_one = alloc(&c, 1);
    if (r_one == CUDA_SUCCESS)
        p_cuMemFree(c);
    CUresult info1 = p_cuMemGetInfo(&f1, &t1);
    if (r_a == CUDA_SUCCESS)
        p_cuMemFree(a);
    if (r_rest == CUDA_SUCCESS)
        p_cuMemFree(b);
    int pass = info0 == CUDA_SUCCESS && t0 == q && r_a == CUDA_SUCCESS && r_over == CUDA_ERROR_OUT_OF_MEMORY &&
               r_rest == CUDA_SUCCESS && r_one == CUDA_ERROR_OUT_OF_MEMORY && info1 == CUDA_SUCCESS && f1 == 0 &&
               t1 == q;
    printf("{\"mode\": \"%s\", \"pass\": %s, \"total_reported\": %zu, \"free_reported\": %zu, "
           "\"alloc_quota_minus_256MiB\": %d, \"alloc_512MiB_over\": %d, \"alloc_exact_rest\": %d, "
           "\"alloc_one_more_byte\": %d, \"free_when_full\": %zu}\n",
           mode, pass ? "true" : "false", t0, f0, r_a, r_over, r_rest, r_one, f1);
    return pass ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: gpu_check limits|getproc|hold|alloc <bytes> | loop <n> <bytes>\n");
        return 2;
    }
    setup();
    unsigned long long v = strtoull(argv[2], NULL, 10);
    if (strcmp(argv[1], "limits") == 0)
        return limits(v, p_cuMemAlloc, "dlsym");
    if (strcmp(argv[1], "getproc") == 0) {
        void *fa = NULL;
        CUresult rc = p_cuGetProcAddress("cuMemAlloc", &fa, 12000, 0);
        if (rc != CUDA_SUCCESS || fa == NULL) {
            printf("{\"mode\": \"getproc\", \"pass\": false, \"error\": \"cuGetProcAddress: %d\"}\n", rc);
            return 1;
        }
        return limits(v, (CUresult(*)(CUdeviceptr *, size_t))fa, "cuGetProcAddress");
    }
    if (strcmp(argv[1], "alloc") == 0 || strcmp(argv[1], "hold") == 0) {
        CUdeviceptr p = 0;
        CUresult rc = p_cuMemAlloc(&p, v);
        size_t f = 0, t = 0;
        (void)p_cuMemGetInfo(&f, &t);
        printf("{\"rc\": %d, \"free\": %zu, \"total\": %zu}\n", rc, f, t);
        fflush(stdout);
        if (strcmp(argv[1], "hold") == 0) {
            char buf[64];
            while (read(0, buf, sizeof buf) > 0) {
            }
        }
        if (rc == CUDA_SUCCESS)
            p_cuMemFree(p);
        return 0;
    }
    if (strcmp(argv[1], "loop") == 0 && argc > 3) {
        long n = atol(argv[2]);
        size_t bytes = (size_t)strtoull(argv[3], NULL, 10);
        CUdeviceptr p;
        for (int i = 0; i < 100; i++) { /* warm-up */
            if (p_cuMemAlloc(&p, bytes) == CUDA_SUCCESS)
                p_cuMemFree(p);
        }
        long errors = 0;
        double t0 = now();
        for (long i = 0; i < n; i++) {
            if (p_cuMemAlloc(&p, bytes) != CUDA_SUCCESS || p_cuMemFree(p) != CUDA_SUCCESS)
                errors++;
        }
        double dt = now() - t0;
        printf("{\"pairs\": %ld, \"bytes\": %zu, \"ns_per_pair\": %.1f, \"errors\": %ld}\n", n, bytes,
               dt / (double)n * 1e9, errors);
        return errors ? 1 : 0;
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
