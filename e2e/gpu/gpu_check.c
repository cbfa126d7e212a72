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
 *   gpu_check vmm <quota>        VMM (cuMemCreate/cuMemMap, as PyTorch expandable segments and vLLM):
 *                                physical handles up to the quota ok, one granule more refused (2),
 *                                reservations free, released-while-mapped stays charged until unmap
 *   gpu_check pool <quota>       stream-ordered pools (cuMemAllocFromPoolAsync, CUDA graphs / NCCL):
 *                                a pool holding cached memory stays charged, other pools and the
 *                                default pool are refused past the quota, trimming gives it back
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
static CUresult (*p_cuMemGetAllocationGranularity)(size_t *, const CUmemAllocationProp *,
                                                    CUmemAllocationGranularity_flags);
static CUresult (*p_cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                                  unsigned long long);
static CUresult (*p_cuMemRelease)(CUmemGenericAllocationHandle);
static CUresult (*p_cuMemAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
static CUresult (*p_cuMemAddressFree)(CUdeviceptr, size_t);
static CUresult (*p_cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
static CUresult (*p_cuMemUnmap)(CUdeviceptr, size_t);
static CUresult (*p_cuMemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
static CUresult (*p_cuMemPoolCreate)(CUmemoryPool *, const CUmemPoolProps *);
static CUresult (*p_cuMemPoolDestroy)(CUmemoryPool);
static CUresult (*p_cuMemPoolTrimTo)(CUmemoryPool, size_t);
static CUresult (*p_cuMemPoolSetAttribute)(CUmemoryPool, CUmemPool_attribute, void *);
static CUresult (*p_cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
static CUresult (*p_cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
static CUresult (*p_cuMemFreeAsync)(CUdeviceptr, CUstream);
static CUresult (*p_cuStreamCreate)(CUstream *, unsigned int);
static CUresult (*p_cuStreamSynchronize)(CUstream);

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
    LOAD(lib, p_cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity");
    LOAD(lib, p_cuMemCreate, "cuMemCreate");
    LOAD(lib, p_cuMemRelease, "cuMemRelease");
    LOAD(lib, p_cuMemAddressReserve, "cuMemAddressReserve");
    LOAD(lib, p_cuMemAddressFree, "cuMemAddressFree");
    LOAD(lib, p_cuMemMap, "cuMemMap");
    LOAD(lib, p_cuMemUnmap, "cuMemUnmap");
    LOAD(lib, p_cuMemSetAccess, "cuMemSetAccess");
    LOAD(lib, p_cuMemPoolCreate, "cuMemPoolCreate");
    LOAD(lib, p_cuMemPoolDestroy, "cuMemPoolDestroy");
    LOAD(lib, p_cuMemPoolTrimTo, "cuMemPoolTrimTo");
    LOAD(lib, p_cuMemPoolSetAttribute, "cuMemPoolSetAttribute");
    LOAD(lib, p_cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync");
    LOAD(lib, p_cuMemAllocAsync, "cuMemAllocAsync");
    LOAD(lib, p_cuMemFreeAsync, "cuMemFreeAsync");
    LOAD(lib, p_cuStreamCreate, "cuStreamCreate");
    LOAD(lib, p_cuStreamSynchronize, "cuStreamSynchronize");
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

static size_t info_free(size_t *total) {
    size_t f = 0, t = 0;
    if (p_cuMemGetInfo(&f, &t) != CUDA_SUCCESS)
        return (size_t)-1;
    if (total != NULL)
        *total = t;
    return f;
}

#define MAX_HANDLES 4096

/* VMM the way PyTorch's expandable segments grow a segment: one reserved range, physical chunks of
 * a multiple of the granularity mapped into it */
static int vmm(unsigned long long q) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    size_t g = 0;
    CUresult r_gran = p_cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r_gran != CUDA_SUCCESS || g == 0 || q % g != 0) {
        printf("{\"mode\": \"vmm\", \"pass\": false, \"error\": \"granularity %d: %zu\"}\n", r_gran, g);
        return 1;
    }
    size_t chunk = g;
    while (chunk < 64 * MIB && q % (chunk * 2) == 0)
        chunk *= 2; /* 64 MiB chunks when the quota allows: fewer calls, same boundary */
    size_t n = (size_t)(q / chunk);
    if (n > MAX_HANDLES) {
        printf("{\"mode\": \"vmm\", \"pass\": false, \"error\": \"quota too large for the check\"}\n");
        return 1;
    }
    static CUmemGenericAllocationHandle h[MAX_HANDLES];
    CUdeviceptr va = 0;
    CUresult r_res = p_cuMemAddressReserve(&va, 2 * q, 0, 0, 0); /* twice the quota: address space only */
    size_t created = 0, mapped = 0;
    CUresult r_create = CUDA_SUCCESS, r_map = CUDA_SUCCESS;
    for (; created < n && r_create == CUDA_SUCCESS; created++)
        r_create = p_cuMemCreate(&h[created], chunk, &prop, 0);
    if (r_create != CUDA_SUCCESS)
        created--;
    CUmemGenericAllocationHandle extra;
    CUresult r_granule_more = p_cuMemCreate(&extra, g, &prop, 0);
    if (r_granule_more == CUDA_SUCCESS)
        p_cuMemRelease(extra);
    CUmemAccessDesc acc = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    for (; r_res == CUDA_SUCCESS && mapped < created && r_map == CUDA_SUCCESS; mapped++) {
        r_map = p_cuMemMap(va + mapped * chunk, chunk, 0, h[mapped], 0);
        if (r_map == CUDA_SUCCESS)
            r_map = p_cuMemSetAccess(va + mapped * chunk, chunk, &acc, 1);
    }
    if (r_map != CUDA_SUCCESS)
        mapped--;
    /* release every handle while mapped (what vLLM's allocator does): the memory stays, charged */
    for (size_t i = 0; i < created; i++)
        p_cuMemRelease(h[i]);
    size_t free_mapped = info_free(NULL);
    CUresult r_after_release = p_cuMemCreate(&extra, g, &prop, 0);
    if (r_after_release == CUDA_SUCCESS)
        p_cuMemRelease(extra);
    CUresult r_unmap = mapped ? p_cuMemUnmap(va, mapped * chunk) : CUDA_SUCCESS;
    size_t total = 0;
    size_t free_end = info_free(&total);
    if (r_res == CUDA_SUCCESS)
        p_cuMemAddressFree(va, 2 * q);
    int pass = r_res == CUDA_SUCCESS && created == n && r_granule_more == CUDA_ERROR_OUT_OF_MEMORY &&
               mapped == created && free_mapped == 0 && r_after_release == CUDA_ERROR_OUT_OF_MEMORY &&
               r_unmap == CUDA_SUCCESS && free_end == q && total == q;
    printf("{\"mode\": \"vmm\", \"pass\": %s, \"granularity\": %zu, \"chunk\": %zu, \"handles_created\": %zu, "
           "\"handles_wanted\": %zu, \"one_granule_more\": %d, \"reserve_2x_quota\": %d, \"mapped\": %zu, "
           "\"free_released_but_mapped\": %zu, \"create_after_release\": %d, \"unmap\": %d, "
           "\"free_after_unmap\": %zu, \"total_reported\": %zu}\n",
           pass ? "true" : "false", g, chunk, created, n, r_granule_more, r_res, mapped, free_mapped, r_after_release,
           r_unmap, free_end, total);
    return pass ? 0 : 1;
}

/* stream-ordered pools (CUDA graphs, NCCL, PyTorch's cudaMallocAsync backend) */
static int pool(unsigned long long q) {
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool keep = NULL, other = NULL;
    CUstream s = NULL;
    CUresult r_create = p_cuMemPoolCreate(&keep, &props);
    if (r_create == CUDA_SUCCESS)
        r_create = p_cuMemPoolCreate(&other, &props);
    if (r_create == CUDA_SUCCESS)
        r_create = p_cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    if (r_create != CUDA_SUCCESS) {
        printf("{\"mode\": \"pool\", \"pass\": false, \"error\": \"setup %d\"}\n", r_create);
        return 1;
    }
    cuuint64_t max = ~0ULL;
    p_cuMemPoolSetAttribute(keep, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &max); /* keep everything cached */
    CUdeviceptr a = 0, x = 0;
    CUresult r_big = p_cuMemAllocFromPoolAsync(&a, q - 256 * MIB, keep, s);
    CUresult r_over = p_cuMemAllocFromPoolAsync(&x, 512 * MIB, keep, s);
    if (r_over == CUDA_SUCCESS)
        p_cuMemFreeAsync(x, s);
    if (r_big == CUDA_SUCCESS)
        p_cuMemFreeAsync(a, s);
    p_cuStreamSynchronize(s);
    size_t free_cached = info_free(NULL); /* the pool still holds it */
    CUresult r_other = p_cuMemAllocFromPoolAsync(&x, 512 * MIB, other, s);
    if (r_other == CUDA_SUCCESS)
        p_cuMemFreeAsync(x, s);
    CUresult r_default = p_cuMemAllocAsync(&x, 512 * MIB, s);
    if (r_default == CUDA_SUCCESS)
        p_cuMemFreeAsync(x, s);
    CUresult r_reuse = p_cuMemAllocFromPoolAsync(&a, q - 256 * MIB, keep, s); /* from its cache */
    if (r_reuse == CUDA_SUCCESS)
        p_cuMemFreeAsync(a, s);
    p_cuStreamSynchronize(s);
    CUresult r_trim = p_cuMemPoolTrimTo(keep, 0);
    size_t total = 0;
    size_t free_trimmed = info_free(&total);
    CUresult r_after = p_cuMemAllocFromPoolAsync(&x, q - 256 * MIB, other, s);
    if (r_after == CUDA_SUCCESS)
        p_cuMemFreeAsync(x, s);
    p_cuStreamSynchronize(s);
    p_cuMemPoolDestroy(keep);
    p_cuMemPoolDestroy(other);
    int pass = r_big == CUDA_SUCCESS && r_over == CUDA_ERROR_OUT_OF_MEMORY && free_cached <= 256 * MIB &&
               r_other == CUDA_ERROR_OUT_OF_MEMORY && r_default == CUDA_ERROR_OUT_OF_MEMORY &&
               r_reuse == CUDA_SUCCESS && r_trim == CUDA_SUCCESS && free_trimmed == q && total == q &&
               r_after == CUDA_SUCCESS;
    printf("{\"mode\": \"pool\", \"pass\": %s, \"alloc_quota_minus_256MiB\": %d, \"alloc_512MiB_over\": %d, "
           "\"free_while_pool_caches\": %zu, \"other_pool_512MiB\": %d, \"default_pool_512MiB\": %d, "
           "\"reuse_from_cache\": %d, \"trim\": %d, \"free_after_trim\": %zu, \"total_reported\": %zu, "
           "\"other_pool_after_trim\": %d}\n",
           pass ? "true" : "false", r_big, r_over, free_cached, r_other, r_default, r_reuse, r_trim, free_trimmed,
           total, r_after);
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
    if (strcmp(argv[1], "vmm") == 0)
        return vmm(v);
    if (strcmp(argv[1], "pool") == 0)
        return pool(v);
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
