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
