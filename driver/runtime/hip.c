/*
 * Simulated HIP runtime (libamdhip64.so, Hygon DCU): device selection, hipMalloc family, hipFree,
 * hipMemGetInfo backed by host memory (sim_mem.c), sized by the node profile (Hygon devices).
 * Codes from hip_runtime_api.h (hcs_vendor_abi.h). Like HIP, device 0 is current by default.
 */
#define _GNU_SOURCE
#include "hcs_vendor_abi.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define hipErrorNoDevice 100

static __thread int cur_dev;

static hipError_t map_rc(int rc) {
    switch (rc) {
    case SIM_MEM_OK: return hipSuccess;
    case SIM_MEM_OOM:
    case SIM_MEM_HOSTOOM: return hipErrorOutOfMemory;
    case SIM_MEM_BADDEV: return hipErrorInvalidDevice;
    case SIM_MEM_BADPTR: return hipErrorInvalidValue;
    default: return hipErrorNotInitialized;
    }
}

EXPORT hipError_t hipGetDeviceCount(int *count) {
    if (count == NULL)
        return hipErrorInvalidValue;
    int n = sim_mem_count(SIM_VENDOR_HYGON);
    if (n < 0)
        return hipErrorNotInitialized;
    *count = n;
    return n == 0 ? hipErrorNoDevice : hipSuccess;
}

EXPORT hipError_t hipSetDevice(int deviceId) {
    int n = sim_mem_count(SIM_VENDOR_HYGON);
    if (n < 0)
        return hipErrorNotInitialized;
    if (deviceId < 0 || deviceId >= n)
        return hipErrorInvalidDevice;
    cur_dev = deviceId;
    return hipSuccess;
}

EXPORT hipError_t hipGetDevice(int *deviceId) {
    if (deviceId == NULL)
        return hipErrorInvalidValue;
    *deviceId = cur_dev;
    return hipSuccess;
}

static hipError_t alloc(void **ptr, size_t size) {
    if (ptr == NULL)
        return hipErrorInvalidValue;
    if (size == 0) {
        *ptr = NULL; /* HIP: zero-size allocation succeeds with NULL */
        return hipSuccess;
    }
    return map_rc(sim_mem_alloc(SIM_VENDOR_HYGON, cur_dev, size, 1, ptr));
}

EXPORT hipError_t hipMalloc(void **ptr, size_t size) {
    return alloc(ptr, size);
}

EXPORT hipError_t hipMallocManaged(void **dev_ptr, size_t size, unsigned int flags) {
    (void)flags;
    return alloc(dev_ptr, size);
}

EXPORT hipError_t hipMallocAsync(void **dev_ptr, size_t size, hipStream_t stream) {
    (void)stream;
    return alloc(dev_ptr, size);
}

EXPORT hipError_t hipMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height) {
    if (pitch == NULL)
        return hipErrorInvalidValue;
    size_t p = (width + 255) & ~(size_t)255; /* 256-byte pitch alignment */
    if (height != 0 && p > SIZE_MAX / height)
        return hipErrorOutOfMemory;
    hipError_t rc = alloc(ptr, p * height);
    if (rc == hipSuccess)
        *pitch = p;
    return rc;
}

EXPORT hipError_t hipFree(void *ptr) {
    return map_rc(sim_mem_free(ptr));
}

EXPORT hipError_t hipFreeAsync(void *dev_ptr, hipStream_t stream) {
    (void)stream;
    return map_rc(sim_mem_free(dev_ptr));
}

EXPORT hipError_t hipMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes == NULL || total_bytes == NULL)
        return hipErrorInvalidValue;
    return map_rc(sim_mem_info(SIM_VENDOR_HYGON, cur_dev, free_bytes, total_bytes));
}

/* hipExtMallocWithFlags: device memory with a coherence flag (fine-grained, uncached, signal) */
EXPORT hipError_t hipExtMallocWithFlags(void **ptr, size_t sizeBytes, unsigned int flags) {
    if (flags != hipDeviceMallocDefault && flags != hipDeviceMallocFinegrained && flags != hipMallocSignalMemory &&
        flags != hipDeviceMallocUncached)
        return hipErrorInvalidValue;
    if (flags == hipMallocSignalMemory && sizeBytes != 8)
        return hipErrorInvalidValue; /* signal memory is one 8-byte word */
    return alloc(ptr, sizeBytes);
}

/* ---- virtual memory management (granularity 2 MiB; semantics in sim_mem.h) */

static hipError_t vmm_rc(int rc) {
    return rc == SIM_MEM_BADVAL ? hipErrorInvalidValue : map_rc(rc);
}

EXPORT hipError_t hipMemGetAllocationGranularity(size_t *granularity, const hipMemAllocationProp *prop, int option) {
    if (granularity == NULL || prop == NULL ||
        (option != hipMemAllocationGranularityMinimum && option != hipMemAllocationGranularityRecommended))
        return hipErrorInvalidValue;
    *granularity = SIM_VMM_GRANULE;
    return hipSuccess;
}

EXPORT hipError_t hipMemCreate(hipMemGenericAllocationHandle_t *handle, size_t size, const hipMemAllocationProp *prop,
                               unsigned long long flags) {
    if (handle == NULL || prop == NULL || flags != 0 || prop->type != hipMemAllocationTypePinned ||
        prop->location.type != hipMemLocationTypeDevice)
        return hipErrorInvalidValue;
    int n = sim_mem_count(SIM_VENDOR_HYGON);
    if (prop->location.id < 0 || prop->location.id >= n)
        return hipErrorInvalidDevice;
    void *h = NULL;
    hipError_t rc = vmm_rc(sim_vmm_create(SIM_VENDOR_HYGON, prop->location.id, size, 1, &h));
    if (rc == hipSuccess)
        *handle = (hipMemGenericAllocationHandle_t)h;
    return rc;
}

EXPORT hipError_t hipMemRelease(hipMemGenericAllocationHandle_t handle) {
    return vmm_rc(sim_vmm_release(handle));
}

EXPORT hipError_t hipMemAddressReserve(void **ptr, size_t size, size_t alignment, void *addr,
                                      unsigned long long flags) {
    (void)addr;
    if (ptr == NULL || flags != 0)
        return hipErrorInvalidValue;
    return vmm_rc(sim_vmm_reserve(size, alignment, ptr));
}

EXPORT hipError_t hipMemAddressFree(void *devPtr, size_t size) {
    return vmm_rc(sim_vmm_free_va(devPtr, size == 0 ? 1 : size));
}

EXPORT hipError_t hipMemMap(void *ptr, size_t size, size_t offset, hipMemGenericAllocationHandle_t handle,
                            unsigned long long flags) {
    if (flags != 0)
        return hipErrorInvalidValue;
    return vmm_rc(sim_vmm_map(ptr, size, offset, handle));
}

EXPORT hipError_t hipMemUnmap(void *ptr, size_t size) {
    if (size == 0)
        return hipErrorInvalidValue;
    return vmm_rc(sim_vmm_unmap(ptr, size));
}

EXPORT hipError_t hipMemSetAccess(void *ptr, size_t size, const hipMemAccessDesc *desc, size_t count) {
    if (desc == NULL || count == 0)
        return hipErrorInvalidValue;
    return vmm_rc(sim_vmm_check_mapped(ptr, size));
}
