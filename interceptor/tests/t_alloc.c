/*
 * t_alloc - one allocation API at a time against libhcs_interceptor.so (issue 22), linked against
 * every simulated runtime. Usage:
 *   t_alloc <api> edge <room>   exactly <room> bytes are left to this process (the rest of the quota
 *                               is held by another process, or nothing): room + unit is refused with
 *                               the vendor OOM code, room is granted, then one unit more is refused;
 *                               freeing gives it back (stream-ordered frees at synchronisation)
 *   t_alloc <api> hold <bytes>  allocate, print "ready", wait to be killed
 *   t_alloc <api> returns       API-specific: what gives memory back and what does not
 * Quota of device 0: HCS_TEST_QUOTA. Prints "ok <api> <mode>" or FAIL lines (exit 1).
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdbool.h>
#include <unistd.h>

#include "hcs_vendor_abi.h"
#include "hooks_extra.h"
#include "t_common.h"

#define GRANULE ((uint64_t)2 << 20)

struct api {
    const char *name;
    const char *vendor; /* cuda, hip, acl, cnrt */
    uint64_t unit;      /* the allocation step: 1 byte, one pitch row, one VMM granule ... */
    int (*alloc)(uint64_t n, void **h);
    int (*free_)(void *h);
};

static int oom_of(const char *vendor) {
    if (strcmp(vendor, "cuda") == 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (strcmp(vendor, "hip") == 0)
        return hipErrorOutOfMemory;
    if (strcmp(vendor, "acl") == 0)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    return cnrtErrorNoMem;
}

static uint64_t info_free(const char *vendor) {
    size_t f = 0, t = 0;
    int rc;
    if (strcmp(vendor, "cuda") == 0)
        rc = cuMemGetInfo_v2(&f, &t);
    else if (strcmp(vendor, "hip") == 0)
        rc = hipMemGetInfo(&f, &t);
    else if (strcmp(vendor, "acl") == 0)
        rc = aclrtGetMemInfo(ACL_HBM_MEM, &f, &t);
    else
        rc = cnrtMemGetInfo(&f, &t);
    CHECK_EQ(rc, 0);
    return f;
}

/* ---- CUDA */

static int cu_v1_alloc(uint64_t n, void **h) {
    CUdeviceptr_v1 p = 0;
    if (n > UINT32_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    int rc = cuMemAlloc(&p, (unsigned int)n);
    *h = (void *)(uintptr_t)p;
    return rc;
}
static int cu_v1_free(void *h) { return cuMemFree((CUdeviceptr_v1)(uintptr_t)h); }

static int cu_free(void *h) { return cuMemFree_v2((CUdeviceptr)(uintptr_t)h); }

static int cu_managed_alloc(uint64_t n, void **h) {
    CUdeviceptr p = 0;
    int rc = cuMemAllocManaged(&p, n, 1 /* CU_MEM_ATTACH_GLOBAL */);
    *h = (void *)(uintptr_t)p;
    return rc;
}

/* n = rows of 512 bytes (width 500 -> the driver's 512-byte pitch) */
static int cu_pitch_alloc(uint64_t n, void **h) {
    CUdeviceptr p = 0;
    size_t pitch = 0;
    int rc = cuMemAllocPitch_v2(&p, &pitch, 500, n / 512, 4);
    if (rc == CUDA_SUCCESS)
        CHECK_EQ(pitch, 512);
    *h = (void *)(uintptr_t)p;
    return rc;
}

/* stream-ordered: the block's memory is the pool's until the free completes at synchronisation */
static int cu_async_alloc(uint64_t n, void **h) {
    CUdeviceptr p = 0;
    int rc = cuMemAllocAsync(&p, n, NULL);
    *h = (void *)(uintptr_t)p;
    return rc;
}
static int cu_async_free(void *h) {
    int rc = cuMemFreeAsync((CUdeviceptr)(uintptr_t)h, NULL);
    return rc != CUDA_SUCCESS ? rc : cuStreamSynchronize(NULL);
}

static CUmemoryPool own_pool;
static CUstream own_stream;

static CUmemoryPool make_pool(uint64_t threshold) {
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool p = NULL;
    CHECK_EQ(cuMemPoolCreate(&p, &props), CUDA_SUCCESS);
    cuuint64_t t = threshold;
    CHECK_EQ(cuMemPoolSetAttribute(p, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &t), CUDA_SUCCESS);
    return p;
}

static int cu_pool_alloc(uint64_t n, void **h) {
    if (own_pool == NULL) {
        own_pool = make_pool(0);
        CHECK_EQ(cuStreamCreate(&own_stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    }
    CUdeviceptr p = 0;
    int rc = cuMemAllocFromPoolAsync(&p, n, own_pool, own_stream);
    *h = (void *)(uintptr_t)p;
    return rc;
}
static int cu_pool_free(void *h) {
    int rc = cuMemFreeAsync((CUdeviceptr)(uintptr_t)h, own_stream);
    return rc != CUDA_SUCCESS ? rc : cuStreamSynchronize(own_stream);
}

/* VMM: physical handle + reserved range + mapping + access, as PyTorch's expandable segments do */
struct vmm_alloc {
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    uint64_t size;
};

static CUmemAllocationProp dev_prop(void) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    return prop;
}

static int cu_vmm_alloc(uint64_t n, void **out) {
    CUmemAllocationProp prop = dev_prop();
    size_t g = 0;
    CHECK_EQ(cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
    CHECK_U64(g, GRANULE);
    struct vmm_alloc *a = calloc(1, sizeof *a);
    int rc = cuMemCreate(&a->h, n, &prop, 0);
    if (rc != CUDA_SUCCESS) {
        free(a);
        return rc;
    }
    a->size = n;
    CHECK_EQ(cuMemAddressReserve(&a->va, n, 0, 0, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(a->va, n, 0, a->h, 0), CUDA_SUCCESS);
    CUmemAccessDesc acc = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CHECK_EQ(cuMemSetAccess(a->va, n, &acc, 1), CUDA_SUCCESS);
    *out = a;
    return rc;
}
static int cu_vmm_free(void *p) {
    struct vmm_alloc *a = p;
    int rc = cuMemUnmap(a->va, a->size);
    if (rc == CUDA_SUCCESS)
        rc = cuMemRelease(a->h);
    if (rc == CUDA_SUCCESS)
        rc = cuMemAddressFree(a->va, a->size);
    free(a);
    return rc;
}

/* arrays of 8-bit texels, width 512: n / 512 rows */
static int cu_array_alloc(uint64_t n, void **h) {
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 512, .Height = n / 512, .Format = CU_AD_FORMAT_UNSIGNED_INT8, .NumChannels = 1};
    CUarray a = NULL;
    int rc = cuArrayCreate_v2(&a, &d);
    *h = a;
    return rc;
}
static int cu_array3d_alloc(uint64_t n, void **h) {
    /* float4 texels (16 bytes), 32 wide = one 512-byte row; depth n / 1024, 2 rows */
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 32, .Height = 2, .Depth = n / 1024, .Format = CU_AD_FORMAT_FLOAT,
                                 .NumChannels = 4};
    CUarray a = NULL;
    int rc = cuArray3DCreate_v2(&a, &d);
    *h = a;
    return rc;
}
static int cu_array_free(void *h) { return cuArrayDestroy(h); }
/* two levels, 8-bit, width 512, height 2m: 512 * 2m + 512 * m = 1536 m bytes */
static int cu_mipmap_alloc(uint64_t n, void **h) {
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 512, .Height = 2 * (n / 1536), .Depth = 0,
                                 .Format = CU_AD_FORMAT_UNSIGNED_INT8, .NumChannels = 1};
    CUmipmappedArray m = NULL;
    int rc = cuMipmappedArrayCreate(&m, &d, 2);
    *h = m;
    return rc;
}
static int cu_mipmap_free(void *h) { return cuMipmappedArrayDestroy(h); }

/* ---- HIP */

static int hip_async_alloc(uint64_t n, void **h) { return hipMallocAsync(h, n, NULL); }
static int hip_async_free(void *h) { return hipFreeAsync(h, NULL); }
static int hip_managed_alloc(uint64_t n, void **h) { return hipMallocManaged(h, n, 1); }
static int hip_ext_alloc(uint64_t n, void **h) { return hipExtMallocWithFlags(h, n, hipDeviceMallocFinegrained); }
static int hip_free_(void *h) { return hipFree(h); }

struct hvmm {
    hipMemGenericAllocationHandle_t h;
    void *va;
    uint64_t size;
};
static int hip_vmm_alloc(uint64_t n, void **out) {
    hipMemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = hipMemAllocationTypePinned;
    prop.location.type = hipMemLocationTypeDevice;
    prop.location.id = 0;
    size_t g = 0;
    CHECK_EQ(hipMemGetAllocationGranularity(&g, &prop, hipMemAllocationGranularityMinimum), hipSuccess);
    CHECK_U64(g, GRANULE);
    struct hvmm *a = calloc(1, sizeof *a);
    int rc = hipMemCreate(&a->h, n, &prop, 0);
    if (rc != hipSuccess) {
        free(a);
        return rc;
    }
    a->size = n;
    CHECK_EQ(hipMemAddressReserve(&a->va, n, 0, NULL, 0), hipSuccess);
    CHECK_EQ(hipMemMap(a->va, n, 0, a->h, 0), hipSuccess);
    hipMemAccessDesc acc = {.location = prop.location, .flags = 3};
    CHECK_EQ(hipMemSetAccess(a->va, n, &acc, 1), hipSuccess);
    *out = a;
    return rc;
}
static int hip_vmm_free(void *p) {
    struct hvmm *a = p;
    int rc = hipMemUnmap(a->va, a->size);
    if (rc == hipSuccess)
        rc = hipMemRelease(a->h);
    if (rc == hipSuccess)
        rc = hipMemAddressFree(a->va, a->size);
    free(a);
    return rc;
}

/* ---- ACL */

static int acl_cached_alloc(uint64_t n, void **h) { return aclrtMallocCached(h, n, 0); }
static int acl_align32_alloc(uint64_t n, void **h) { return aclrtMallocAlign32(h, n, 0); }
static int acl_free_(void *h) { return aclrtFree(h); }

struct avmm {
    aclrtDrvMemHandle h;
    void *va;
};
static int acl_vmm_alloc(uint64_t n, void **out) {
    aclrtPhysicalMemProp prop;
    memset(&prop, 0, sizeof prop);
    prop.handleType = ACL_MEM_HANDLE_TYPE_NONE;
    prop.allocationType = ACL_MEM_ALLOCATION_TYPE_PINNED;
    prop.memAttr = ACL_HBM_MEM;
    prop.location.type = ACL_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    size_t g = 0;
    CHECK_EQ(aclrtMemGetAllocationGranularity(&prop, ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM, &g), ACL_SUCCESS);
    CHECK_U64(g, GRANULE);
    struct avmm *a = calloc(1, sizeof *a);
    int rc = aclrtMallocPhysical(&a->h, n, &prop, 0);
    if (rc != ACL_SUCCESS) {
        free(a);
        return rc;
    }
    CHECK_EQ(aclrtReserveMemAddress(&a->va, n, 0, NULL, 0), ACL_SUCCESS);
    CHECK_EQ(aclrtMapMem(a->va, n, 0, a->h, 0), ACL_SUCCESS);
    *out = a;
    return rc;
}
static int acl_vmm_free(void *p) {
    struct avmm *a = p;
    int rc = aclrtUnmapMem(a->va);
    if (rc == ACL_SUCCESS)
        rc = aclrtFreePhysical(a->h);
    if (rc == ACL_SUCCESS)
        rc = aclrtReleaseMemAddress(a->va);
    free(a);
    return rc;
}

/* ---- CNRT */

static int cnrt_const_alloc(uint64_t n, void **h) { return cnrtMallocConstant(h, n); }
static int cnrt_free_(void *h) { return cnrtFree(h); }

static const struct api apis[] = {
    {"cuMemAlloc_v1", "cuda", 1, cu_v1_alloc, cu_v1_free},
    {"cuMemAllocManaged", "cuda", 1, cu_managed_alloc, cu_free},
    {"cuMemAllocPitch", "cuda", 512, cu_pitch_alloc, cu_free},
    {"cuMemAllocAsync", "cuda", 1, cu_async_alloc, cu_async_free},
    {"cuMemAllocFromPoolAsync", "cuda", 1, cu_pool_alloc, cu_pool_free},
    {"cuMemCreate", "cuda", GRANULE, cu_vmm_alloc, cu_vmm_free},
    {"cuArrayCreate", "cuda", 512, cu_array_alloc, cu_array_free},
    {"cuArray3DCreate", "cuda", 1024, cu_array3d_alloc, cu_array_free},
    {"cuMipmappedArrayCreate", "cuda", 1536, cu_mipmap_alloc, cu_mipmap_free},
    {"hipMallocAsync", "hip", 1, hip_async_alloc, hip_async_free},
    {"hipMallocManaged", "hip", 1, hip_managed_alloc, hip_free_},
    {"hipExtMallocWithFlags", "hip", 1, hip_ext_alloc, hip_free_},
    {"hipMemCreate", "hip", GRANULE, hip_vmm_alloc, hip_vmm_free},
    {"aclrtMallocCached", "acl", 1, acl_cached_alloc, acl_free_},
    {"aclrtMallocAlign32", "acl", 32, acl_align32_alloc, acl_free_},
    {"aclrtMallocPhysical", "acl", GRANULE, acl_vmm_alloc, acl_vmm_free},
    {"cnrtMallocConstant", "cnrt", 1, cnrt_const_alloc, cnrt_free_},
};

static void setup(const char *vendor) {
    if (strcmp(vendor, "cuda") == 0) {
        CUcontext c;
        if (cuInit(0) != CUDA_SUCCESS || cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS ||
            cuCtxSetCurrent(c) != CUDA_SUCCESS)
            exit(2);
    } else if (strcmp(vendor, "hip") == 0) {
        if (hipSetDevice(0) != hipSuccess)
            exit(2);
    } else if (strcmp(vendor, "acl") == 0) {
        if (aclInit(NULL) != ACL_SUCCESS || aclrtSetDevice(0) != ACL_SUCCESS)
            exit(2);
    } else if (cnrtSetDevice(0) != cnrtSuccess) {
        exit(2);
    }
}

static void edge(const struct api *a, uint64_t room) {
    int oom = oom_of(a->vendor);
    void *h1 = NULL, *h2 = NULL;
    CHECK_U64(info_free(a->vendor), room);
    CHECK_EQ(a->alloc(room + a->unit, &h2), oom);
    CHECK_EQ(a->alloc(room, &h1), 0);
    CHECK_U64(info_free(a->vendor), 0);
    CHECK_EQ(a->alloc(a->unit, &h2), oom);
    CHECK_EQ(a->free_(h1), 0);
    CHECK_U64(info_free(a->vendor), room);
    CHECK_EQ(a->alloc(room, &h1), 0);
    CHECK_EQ(a->free_(h1), 0);
    CHECK_U64(info_free(a->vendor), room);
}

static __attribute__((noreturn)) void hold(const struct api *a, uint64_t bytes) {
    void *h = NULL;
    int rc = a->alloc(bytes, &h);
    printf("%s %d\n", rc == 0 ? "ready" : "failed", rc);
    fflush(stdout);
    for (;;)
        pause();
}

/* ---- API-specific: what gives memory back, and what must not */

static void returns_vmm(uint64_t q) {
    CUmemAllocationProp prop = dev_prop();
    CUmemGenericAllocationHandle h, h2;
    CUdeviceptr va;
    CHECK_EQ(cuMemCreate(&h, q, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemCreate(&h2, GRANULE + 1, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY); /* refused before the driver */
    CHECK_EQ(cuMemAddressReserve(&va, 2 * q, 0, 0, 0), CUDA_SUCCESS);          /* address space: free */
    CHECK_EQ(cuMemMap(va, q, 0, h, 0), CUDA_SUCCESS);
    /* released while mapped: the memory is still there and still charged */
    CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), 0);
    CUdeviceptr one;
    CHECK_EQ(cuMemAlloc_v2(&one, 1), CUDA_ERROR_OUT_OF_MEMORY);
    /* a retained reference keeps it after unmap, too */
    CUmemGenericAllocationHandle r;
    CHECK_EQ(cuMemRetainAllocationHandle(&r, (void *)(uintptr_t)va), CUDA_SUCCESS);
    CHECK(r == h);
    CHECK_EQ(cuMemUnmap(va, q), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), 0);
    CHECK_EQ(cuMemRelease(r), CUDA_SUCCESS); /* the last reference: now the memory is gone */
    CHECK_U64(info_free("cuda"), q);
    /* the same handle mapped twice: both mappings must go */
    CHECK_EQ(cuMemCreate(&h, q / 2, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(va, q / 2, 0, h, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(va + q, q / 2, 0, h, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    CHECK_EQ(cuMemUnmap(va, q / 2), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q - q / 2);
    CHECK_EQ(cuMemUnmap(va + q, q / 2), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    CHECK_EQ(cuMemAddressFree(va, 2 * q), CUDA_SUCCESS);
    /* granularity is the driver's: a size that is not a multiple is refused by it, not charged */
    CHECK_EQ(cuMemCreate(&h, GRANULE - 1, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_U64(info_free("cuda"), q);
    /* host locations are not device memory */
    prop.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    prop.location.id = 3;
    CHECK_EQ(cuMemCreate(&h, 2 * q, &prop, 0), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    /* unmapping a range of several contiguous mappings releases each */
    prop = dev_prop();
    CHECK_EQ(cuMemAddressReserve(&va, q, 0, 0, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemCreate(&h, GRANULE, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemCreate(&h2, GRANULE, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(va, GRANULE, 0, h, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(va + GRANULE, GRANULE, 0, h2, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    CHECK_EQ(cuMemRelease(h2), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q - 2 * GRANULE);
    CHECK_EQ(cuMemUnmap(va, 2 * GRANULE), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    CHECK_EQ(cuMemAddressFree(va, q), CUDA_SUCCESS);
}

static void returns_pool(uint64_t q) {
    /* a pool that keeps everything (threshold max): its cached memory stays charged */
    CUmemoryPool keep = make_pool(UINT64_MAX), other = make_pool(0);
    CUstream s;
    CHECK_EQ(cuStreamCreate(&s, 0), CUDA_SUCCESS);
    CUdeviceptr p = 0, p2 = 0;
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q, keep, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), 0); /* the pool holds q from the device */
    CHECK_EQ(cuMemAllocFromPoolAsync(&p2, 1, other, s), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAlloc_v2(&p2, 1), CUDA_ERROR_OUT_OF_MEMORY);
    /* the holding pool serves from its cache: no new quota needed */
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q, keep, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    /* trimming gives it back, down to what is asked to be kept */
    CHECK_EQ(cuMemPoolTrimTo(keep, q / 4), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q - q / 4);
    CHECK_EQ(cuMemPoolTrimTo(keep, 0), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    /* an async free is not complete before synchronisation: still charged */
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q, other, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&p2, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuCtxSynchronize(), CUDA_SUCCESS); /* threshold 0: all of it goes back */
    CHECK_U64(info_free("cuda"), q);
    /* the pool releases at an event synchronisation, which is not hooked: a refused allocation
     * re-reads the pools and is granted */
    CUevent ev;
    CHECK_EQ(cuEventCreate(&ev, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q, other, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_EQ(cuEventRecord(ev, s), CUDA_SUCCESS);
    CHECK_EQ(cuEventSynchronize(ev), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&p2, q), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(p2), CUDA_SUCCESS);
    CHECK_EQ(cuEventDestroy_v2(ev), CUDA_SUCCESS);
    /* cuMemFree of a pool block returns it at once */
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q, other, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    /* destroying a pool with a block outstanding: charged until the block is freed and synchronised */
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, q / 2, keep, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemPoolDestroy(keep), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q - q / 2);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q - q / 2);
    CHECK_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    CHECK_EQ(cuMemPoolDestroy(other), CUDA_SUCCESS);
    /* the device's current pool (cuMemAllocAsync) set to a pool of our own */
    CUmemoryPool mine = make_pool(UINT64_MAX);
    CHECK_EQ(cuDeviceSetMemPool(0, mine), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocAsync(&p, q, s), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), 0);
    CUmemoryPool def;
    CHECK_EQ(cuDeviceGetDefaultMemPool(&def, 0), CUDA_SUCCESS);
    CHECK_EQ(cuDeviceSetMemPool(0, def), CUDA_SUCCESS);
    CHECK_EQ(cuMemPoolDestroy(mine), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), q);
    CHECK_EQ(cuStreamDestroy_v2(s), CUDA_SUCCESS);
}

static void returns_acl_vmm(uint64_t q) {
    aclrtPhysicalMemProp prop;
    memset(&prop, 0, sizeof prop);
    prop.allocationType = ACL_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = ACL_MEM_LOCATION_TYPE_DEVICE;
    aclrtDrvMemHandle h;
    void *va;
    CHECK_EQ(aclrtReserveMemAddress(&va, 4 * q, 0, NULL, 0), ACL_SUCCESS); /* address space only */
    CHECK_EQ(aclrtMallocPhysical(&h, q, &prop, 0), ACL_SUCCESS);
    CHECK_EQ(aclrtMapMem(va, q, 0, h, 0), ACL_SUCCESS);
    CHECK_EQ(aclrtFreePhysical(h), ACL_SUCCESS); /* mapped: still there */
    CHECK_U64(info_free("acl"), 0);
    CHECK_EQ(aclrtUnmapMem(va), ACL_SUCCESS);
    CHECK_U64(info_free("acl"), q);
    CHECK_EQ(aclrtReleaseMemAddress(va), ACL_SUCCESS);
}

static void returns_hip_vmm(uint64_t q) {
    hipMemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = hipMemAllocationTypePinned;
    prop.location.type = hipMemLocationTypeDevice;
    hipMemGenericAllocationHandle_t h;
    void *va;
    CHECK_EQ(hipMemAddressReserve(&va, 4 * q, 0, NULL, 0), hipSuccess);
    CHECK_EQ(hipMemCreate(&h, q, &prop, 0), hipSuccess);
    CHECK_EQ(hipMemMap(va, q, 0, h, 0), hipSuccess);
    CHECK_EQ(hipMemRelease(h), hipSuccess);
    CHECK_U64(info_free("hip"), 0);
    CHECK_EQ(hipMemUnmap(va, q), hipSuccess);
    CHECK_U64(info_free("hip"), q);
    CHECK_EQ(hipMemAddressFree(va, 4 * q), hipSuccess);
}

static void returns_align32(uint64_t q) {
    void *a, *b;
    CHECK_EQ(aclrtMallocAlign32(&a, q - 31, 0), ACL_SUCCESS); /* rounded up: the whole quota */
    CHECK_U64(info_free("acl"), 0);
    CHECK_EQ(aclrtMallocAlign32(&b, 1, 0), ACL_ERROR_RT_MEMORY_ALLOCATION);
    CHECK_EQ(aclrtFree(a), ACL_SUCCESS);
    CHECK_U64(info_free("acl"), q);
}

static void returns_v1(uint64_t q) {
    /* the v1 function through cuGetProcAddress for a pre-3.2 version, as very old binaries ask */
    void *f = NULL, *g = NULL;
    CHECK_EQ(cuGetProcAddress("cuMemAlloc", &f, 3000, 0), CUDA_SUCCESS);
    CHECK_EQ(cuGetProcAddress("cuMemFree", &g, 3000, 0), CUDA_SUCCESS);
    CHECK(f == (void *)&cuMemAlloc);
    if (f != NULL && g != NULL) {
        CUdeviceptr_v1 p;
        CHECK_EQ(((CUresult(*)(CUdeviceptr_v1 *, unsigned int))f)(&p, (unsigned int)q + 1), CUDA_ERROR_OUT_OF_MEMORY);
        CHECK_EQ(((CUresult(*)(CUdeviceptr_v1 *, unsigned int))f)(&p, (unsigned int)q), CUDA_SUCCESS);
        CHECK_EQ(((CUresult(*)(CUdeviceptr_v1))g)(p), CUDA_SUCCESS);
    }
    CHECK_U64(info_free("cuda"), q);
}

/* ---- the management libraries (nvidia-smi, npu-smi, rocm-smi, cnmon) report the quota and the
 * container's own usage; the simulated libraries are dlopen'ed from HCS_TEST_DRIVER_LIB */

static void *smi_lib(const char *name) {
    const char *dir = getenv("HCS_TEST_DRIVER_LIB");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : ".", name);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        fprintf(stderr, "FAIL: dlopen %s: %s\n", path, dlerror());
    return h;
}

#define SYM(lib, type, name) __typeof__(type) name##_ = (__typeof__(type))dlsym(lib, #name)

static void smi(const struct api *a, uint64_t q) {
    void *h = NULL;
    const uint64_t chunk = 4 * GRANULE; /* 8 MiB: whole MiB for the MB-unit libraries */
    CHECK_EQ(a->alloc(chunk, &h), 0);
    if (strcmp(a->vendor, "cuda") == 0) {
        void *l = smi_lib("libnvidia-ml.so.1");
        if (l == NULL) {
            t_failures++;
            return;
        }
        SYM(l, nvmlReturn_t(*)(void), nvmlInit_v2);
        SYM(l, nvmlReturn_t(*)(unsigned int, nvmlDevice_t *), nvmlDeviceGetHandleByIndex_v2);
        SYM(l, nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_t *), nvmlDeviceGetMemoryInfo);
        SYM(l, nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_v2_t *), nvmlDeviceGetMemoryInfo_v2);
        nvmlDevice_t d;
        CHECK(nvmlInit_v2_ && nvmlDeviceGetHandleByIndex_v2_ && nvmlDeviceGetMemoryInfo_ &&
              nvmlDeviceGetMemoryInfo_v2_);
        if (nvmlInit_v2_ == NULL || nvmlDeviceGetHandleByIndex_v2_ == NULL || nvmlDeviceGetMemoryInfo_ == NULL ||
            nvmlDeviceGetMemoryInfo_v2_ == NULL)
            return;
        CHECK_EQ(nvmlInit_v2_(), NVML_SUCCESS);
        CHECK_EQ(nvmlDeviceGetHandleByIndex_v2_(0, &d), NVML_SUCCESS);
        nvmlMemory_t m1;
        CHECK_EQ(nvmlDeviceGetMemoryInfo_(d, &m1), NVML_SUCCESS);
        CHECK_U64(m1.total, q);
        CHECK_U64(m1.used, chunk);
        CHECK_U64(m1.free, q - chunk);
        nvmlMemory_v2_t m2;
        memset(&m2, 0, sizeof m2);
        m2.version = 0x02000028u; /* nvmlMemory_v2 */
        CHECK_EQ(nvmlDeviceGetMemoryInfo_v2_(d, &m2), NVML_SUCCESS);
        CHECK_U64(m2.total, q);
        CHECK_U64(m2.used, chunk);
        CHECK_U64(m2.reserved, 0);
        CHECK_U64(m2.free, q - chunk);
    } else if (strcmp(a->vendor, "acl") == 0) {
        void *l = smi_lib("libdcmi.so");
        if (l == NULL) {
            t_failures++;
            return;
        }
        SYM(l, int (*)(void), dcmi_init);
        SYM(l, int (*)(int, int, struct dcmi_get_memory_info_stru *), dcmi_get_device_memory_info_v3);
        SYM(l, int (*)(int, int, struct dcmi_hbm_info *), dcmi_get_device_hbm_info);
        CHECK(dcmi_init_ && dcmi_get_device_memory_info_v3_ && dcmi_get_device_hbm_info_);
        if (dcmi_init_ == NULL || dcmi_get_device_memory_info_v3_ == NULL || dcmi_get_device_hbm_info_ == NULL)
            return;
        CHECK_EQ(dcmi_init_(), 0);
        struct dcmi_get_memory_info_stru m;
        CHECK_EQ(dcmi_get_device_memory_info_v3_(0, 0, &m), 0);
        CHECK_U64(m.memory_size, q >> 20);
        CHECK_U64(m.memory_available, (q - chunk) >> 20);
        struct dcmi_hbm_info hb;
        CHECK_EQ(dcmi_get_device_hbm_info_(0, 0, &hb), 0);
        CHECK_U64(hb.memory_size, q >> 20);
        CHECK_U64(hb.memory_usage, chunk >> 20);
    } else if (strcmp(a->vendor, "hip") == 0) {
        void *l = smi_lib("librocm_smi64.so");
        if (l == NULL) {
            t_failures++;
            return;
        }
        SYM(l, rsmi_status_t(*)(uint64_t), rsmi_init);
        SYM(l, rsmi_status_t(*)(uint32_t, int, uint64_t *), rsmi_dev_memory_total_get);
        SYM(l, rsmi_status_t(*)(uint32_t, int, uint64_t *), rsmi_dev_memory_usage_get);
        CHECK(rsmi_init_ && rsmi_dev_memory_total_get_ && rsmi_dev_memory_usage_get_);
        if (rsmi_init_ == NULL || rsmi_dev_memory_total_get_ == NULL || rsmi_dev_memory_usage_get_ == NULL)
            return;
        CHECK_EQ(rsmi_init_(0), 0);
        uint64_t t = 0, u = 0;
        CHECK_EQ(rsmi_dev_memory_total_get_(0, RSMI_MEM_TYPE_VRAM, &t), 0);
        CHECK_EQ(rsmi_dev_memory_usage_get_(0, RSMI_MEM_TYPE_VRAM, &u), 0);
        CHECK_U64(t, q);
        CHECK_U64(u, chunk);
    } else {
        void *l = smi_lib("libcndev.so");
        if (l == NULL) {
            t_failures++;
            return;
        }
        SYM(l, cndevRet_t(*)(int32_t), cndevInit);
        SYM(l, cndevRet_t(*)(cndevMemoryInfoV2_t *, cndevDevice_t), cndevGetMemoryUsageV2);
        CHECK(cndevInit_ && cndevGetMemoryUsageV2_);
        if (cndevInit_ == NULL || cndevGetMemoryUsageV2_ == NULL)
            return;
        CHECK_EQ(cndevInit_(0), 0);
        cndevMemoryInfoV2_t m;
        CHECK_EQ(cndevGetMemoryUsageV2_(&m, 0), 0);
        CHECK_U64(m.physicalMemoryTotal, q >> 20);
        CHECK_U64(m.physicalMemoryUsed, chunk >> 20);
    }
    CHECK_EQ(a->free_(h), 0);
}

/* ---- the simulated runtimes' own semantics (run without the interceptor: the card's numbers) */

static void sim_cuda(void) {
    uint64_t base = info_free("cuda");
    const uint64_t m8 = 4 * GRANULE;
    CUmemAllocationProp prop = dev_prop();
    CUmemGenericAllocationHandle hd;
    CUdeviceptr va, p;
    CHECK_EQ(cuMemCreate(&hd, GRANULE - 1, &prop, 0), CUDA_ERROR_INVALID_VALUE); /* granularity */
    CHECK_EQ(cuMemAddressReserve(&va, 2 * m8, 0, 0, 0), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base); /* address space costs nothing */
    CHECK_EQ(cuMemCreate(&hd, m8, &prop, 0), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - m8);
    CHECK_EQ(cuMemMap(va + 1, m8, 0, hd, 0), CUDA_ERROR_INVALID_VALUE);   /* off the granule */
    CHECK_EQ(cuMemMap(va, m8 + GRANULE, 0, hd, 0), CUDA_ERROR_INVALID_VALUE); /* beyond the handle */
    CHECK_EQ(cuMemMap(va, m8, 0, hd, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemMap(va, m8, 0, hd, 0), CUDA_ERROR_INVALID_VALUE); /* overlaps */
    CHECK_EQ(cuMemRelease(hd), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - m8); /* mapped: not freed yet */
    CHECK_EQ(cuMemAddressFree(va, 2 * m8), CUDA_ERROR_INVALID_VALUE); /* still mapped */
    CHECK_EQ(cuMemUnmap(va, GRANULE), CUDA_ERROR_INVALID_VALUE);      /* part of a mapping */
    CHECK_EQ(cuMemUnmap(va, m8), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base);
    CHECK_EQ(cuMemAddressFree(va, 2 * m8), CUDA_SUCCESS);
    /* pools: cached memory stays on the card until synchronisation / trim */
    CUmemoryPool keep = make_pool(UINT64_MAX);
    CHECK_EQ(cuMemAllocFromPoolAsync(&p, m8, keep, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - m8);
    cuuint64_t v = 0;
    CHECK_EQ(cuMemPoolGetAttribute(keep, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v), CUDA_SUCCESS);
    CHECK_U64(v, m8);
    CHECK_EQ(cuMemPoolGetAttribute(keep, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &v), CUDA_SUCCESS);
    CHECK_U64(v, 0);
    CHECK_EQ(cuMemPoolTrimTo(keep, 0), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base);
    CHECK_EQ(cuMemPoolDestroy(keep), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocAsync(&p, m8, NULL), CUDA_SUCCESS); /* default pool, threshold 0 */
    CHECK_EQ(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - m8); /* the free is pending until the stream gets there */
    CHECK_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base);
    CUmemoryPool def;
    CHECK_EQ(cuDeviceGetDefaultMemPool(&def, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemPoolDestroy(def), CUDA_ERROR_INVALID_VALUE); /* the default pool cannot be destroyed */
    /* arrays: rows padded to 512 bytes */
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 100, .Height = 10, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    CUarray arr;
    CHECK_EQ(cuArrayCreate_v2(&arr, &d), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - 5120);
    CHECK_EQ(cuArrayDestroy(arr), CUDA_SUCCESS);
    d.NumChannels = 3;
    CHECK_EQ(cuArrayCreate_v2(&arr, &d), CUDA_ERROR_INVALID_VALUE);
    void *mm = NULL;
    CHECK_EQ(cu_mipmap_alloc(3072, &mm), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base - 3072);
    CHECK_EQ(cu_mipmap_free(mm), CUDA_SUCCESS);
    /* v1: a 32-bit pointer */
    CUdeviceptr_v1 p1 = 0;
    CHECK_EQ(cuMemAlloc(&p1, 4096), CUDA_SUCCESS);
    CHECK(p1 != 0);
    CHECK_U64(info_free("cuda"), base - 4096);
    CHECK_EQ(cuMemFree(p1), CUDA_SUCCESS);
    CHECK_U64(info_free("cuda"), base);
}

static void sim_vendors(void) {
    uint64_t base = info_free("hip");
    void *p = NULL;
    CHECK_EQ(hipExtMallocWithFlags(&p, 16, hipMallocSignalMemory), hipErrorInvalidValue); /* 8 bytes only */
    CHECK_EQ(hipExtMallocWithFlags(&p, 4096, 77), hipErrorInvalidValue);
    void *h = NULL;
    CHECK_EQ(hip_vmm_alloc(2 * GRANULE, &h), hipSuccess);
    CHECK_U64(info_free("hip"), base - 2 * GRANULE);
    CHECK_EQ(hip_vmm_free(h), hipSuccess);
    CHECK_U64(info_free("hip"), base);
    base = info_free("acl");
    CHECK_EQ(aclrtMallocAlign32(&p, 33, 0), ACL_SUCCESS);
    CHECK_U64(info_free("acl"), base - 64);
    CHECK_EQ(aclrtFree(p), ACL_SUCCESS);
    CHECK_EQ(acl_vmm_alloc(GRANULE, &h), ACL_SUCCESS);
    CHECK_U64(info_free("acl"), base - GRANULE);
    CHECK_EQ(acl_vmm_free(h), ACL_SUCCESS);
    CHECK_U64(info_free("acl"), base);
    base = info_free("cnrt");
    CHECK_EQ(cnrtHostMalloc(&p, 4096), cnrtSuccess); /* host memory: the card is untouched */
    CHECK_U64(info_free("cnrt"), base);
    CHECK_EQ(cnrtFreeHost(p), cnrtSuccess);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: t_alloc <api> <edge|hold|returns> [bytes]\n");
        return 2;
    }
    const struct api *a = NULL;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++)
        if (strcmp(apis[i].name, argv[1]) == 0)
            a = &apis[i];
    if (a == NULL) {
        fprintf(stderr, "unknown api %s\n", argv[1]);
        return 2;
    }
    setup(a->vendor);
    const char *mode = argv[2];
    if (strcmp(mode, "hold") == 0 && argc > 3)
        hold(a, strtoull(argv[3], NULL, 10));
    if (strcmp(mode, "edge") == 0 && argc > 3) {
        edge(a, strtoull(argv[3], NULL, 10));
    } else if (strcmp(mode, "sim") == 0) {
        setup("hip");
        setup("acl");
        setup("cnrt");
        sim_cuda();
        sim_vendors();
    } else if (strcmp(mode, "smi") == 0) {
        smi(a, env_u64("HCS_TEST_QUOTA"));
    } else if (strcmp(mode, "returns") == 0) {
        uint64_t q = env_u64("HCS_TEST_QUOTA");
        if (strcmp(a->name, "cuMemCreate") == 0)
            returns_vmm(q);
        else if (strcmp(a->name, "cuMemAllocFromPoolAsync") == 0)
            returns_pool(q);
        else if (strcmp(a->name, "aclrtMallocPhysical") == 0)
            returns_acl_vmm(q);
        else if (strcmp(a->name, "hipMemCreate") == 0)
            returns_hip_vmm(q);
        else if (strcmp(a->name, "aclrtMallocAlign32") == 0)
            returns_align32(q);
        else if (strcmp(a->name, "cuMemAlloc_v1") == 0)
            returns_v1(q);
        else {
            fprintf(stderr, "no 'returns' case for %s\n", a->name);
            return 2;
        }
    } else {
        fprintf(stderr, "bad mode %s\n", mode);
        return 2;
    }
    char name[128];
    snprintf(name, sizeof name, "%s %s", a->name, mode);
    return t_finish(name);
}
