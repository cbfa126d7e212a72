/*
 * Simulated Cambricon CNRT (libcnrt.so): device selection, cnrtMalloc / cnrtFree / cnrtMemGetInfo
 * backed by host memory (sim_mem.c), sized by the node profile (Cambricon devices).
 * Codes from cnrt.h 6.x (hcs_vendor_abi.h). Device 0 is current by default.
 */
#define _GNU_SOURCE
#include "hcs_vendor_abi.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define cnrtErrorNoDevice 100004

static __thread int cur_dev;

static cnrtRet_t map_rc(int rc) {
    switch (rc) {
    case SIM_MEM_OK: return cnrtSuccess;
    case SIM_MEM_OOM: return cnrtErrorNoMem;
    case SIM_MEM_HOSTOOM: return cnrtErrorNoMem;
    case SIM_MEM_BADDEV: return cnrtErrorDeviceInvalid;
    case SIM_MEM_BADPTR: return cnrtErrorArgsInvalid;
    default: return cnrtErrorInit;
    }
}

EXPORT cnrtRet_t cnrtGetDeviceCount(unsigned int *count) {
    if (count == NULL)
        return cnrtErrorArgsInvalid;
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (n < 0)
        return cnrtErrorInit;
    *count = (unsigned int)n;
    return n == 0 ? cnrtErrorNoDevice : cnrtSuccess;
}

EXPORT cnrtRet_t cnrtSetDevice(int device) {
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (n < 0)
        return cnrtErrorInit;
    if (device < 0 || device >= n)
        return cnrtErrorDeviceInvalid;
    cur_dev = device;
    return cnrtSuccess;
}

EXPORT cnrtRet_t cnrtGetDevice(int *device) {
    if (device == NULL)
        return cnrtErrorArgsInvalid;
    *device = cur_dev;
    return cnrtSuccess;
}

static cnrtRet_t dev_alloc(void **pPtr, size_t bytes) {
    if (pPtr == NULL || bytes == 0)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_alloc(SIM_VENDOR_CAMBRICON, cur_dev, bytes, 1, pPtr));
}

EXPORT cnrtRet_t cnrtMalloc(void **pPtr, size_t bytes) {
    return dev_alloc(pPtr, bytes);
}

EXPORT cnrtRet_t cnrtFree(void *ptr) {
    if (ptr == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_free(ptr));
}

EXPORT cnrtRet_t cnrtMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes == NULL || total_bytes == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_info(SIM_VENDOR_CAMBRICON, cur_dev, free_bytes, total_bytes));
}

/* device constant memory: charged to the card like cnrtMalloc, freed with cnrtFree */
EXPORT cnrtRet_t cnrtMallocConstant(void **pPtr, size_t bytes) {
    return dev_alloc(pPtr, bytes); /* not through the exported cnrtMalloc: its own entry point */
}

/* pinned host memory: not device memory */
EXPORT cnrtRet_t cnrtHostMalloc(void **pPtr, size_t bytes) {
    if (pPtr == NULL || bytes == 0)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_alloc(SIM_VENDOR_CAMBRICON, 0, bytes, 0, pPtr));
}

EXPORT cnrtRet_t cnrtFreeHost(void *ptr) {
    if (ptr == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_free(ptr));
}
