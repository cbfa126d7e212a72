/*
 * hooks_extra.h - the allocation APIs beyond the plain malloc/free pairs (issue 22): CUDA virtual
 * memory management, stream-ordered memory pools, arrays and the v1 entry points; HIP, ACL and
 * CNRT equivalents. The hooks themselves live in hooks_extra.c, which hcs_interceptor.c includes
 * (one translation unit: they share its static state, accounting helpers and symbol table).
 *
 * X(name, lib, hooked), appended to HCS_SYMBOLS in hcs_interceptor.c.
 */
#ifndef HCS_HOOKS_EXTRA_H
#define HCS_HOOKS_EXTRA_H

#include "hcs_vendor_launch.h" /* aclrtStream, cnrtQueue_t: the synchronise variants below */

#define HCS_SYMBOLS_EXTRA(X)                                                                             \
    X(cuMemAlloc, LIB_CUDA, 1)                                                                           \
    X(cuMemFree, LIB_CUDA, 1)                                                                            \
    X(cuMemMap, LIB_CUDA, 1)                                                                             \
    X(cuMemUnmap, LIB_CUDA, 1)                                                                           \
    X(cuMemRetainAllocationHandle, LIB_CUDA, 1)                                                          \
    X(cuMemPoolCreate, LIB_CUDA, 1)                                                                      \
    X(cuMemPoolDestroy, LIB_CUDA, 1)                                                                     \
    X(cuMemPoolTrimTo, LIB_CUDA, 1)                                                                      \
    X(cuStreamSynchronize, LIB_CUDA, 1)                                                                  \
    X(cuStreamSynchronize_ptsz, LIB_CUDA, 1)                                                             \
    X(cuCtxSynchronize, LIB_CUDA, 1)                                                                     \
    X(cuArrayCreate_v2, LIB_CUDA, 1)                                                                     \
    X(cuArray3DCreate_v2, LIB_CUDA, 1)                                                                   \
    X(cuArrayDestroy, LIB_CUDA, 1)                                                                       \
    X(cuMipmappedArrayCreate, LIB_CUDA, 1)                                                               \
    X(cuMipmappedArrayDestroy, LIB_CUDA, 1)                                                              \
    X(cuMemPoolGetAttribute, LIB_CUDA, 0)                                                                \
    X(cuDeviceGetMemPool, LIB_CUDA, 0)                                                                   \
    X(hipExtMallocWithFlags, LIB_HIP, 1)                                                                 \
    X(hipMemCreate, LIB_HIP, 1)                                                                          \
    X(hipMemRelease, LIB_HIP, 1)                                                                         \
    X(hipMemMap, LIB_HIP, 1)                                                                             \
    X(hipMemUnmap, LIB_HIP, 1)                                                                           \
    X(aclrtMallocAlign32, LIB_ACL, 1)                                                                    \
    X(aclrtMallocPhysical, LIB_ACL, 1)                                                                   \
    X(aclrtFreePhysical, LIB_ACL, 1)                                                                     \
    X(aclrtMapMem, LIB_ACL, 1)                                                                           \
    X(aclrtUnmapMem, LIB_ACL, 1)                                                                         \
    X(cnrtMallocConstant, LIB_CNRT, 1)                                                                   \
    X(dcmi_get_device_memory_info_v3, LIB_DCMI, 1)                                                       \
    X(dcmi_get_device_hbm_info, LIB_DCMI, 1)                                                             \
    X(dcmi_get_device_logic_id, LIB_DCMI, 0)                                                             \
    X(rsmi_dev_memory_total_get, LIB_RSMI, 1)                                                            \
    X(rsmi_dev_memory_usage_get, LIB_RSMI, 1)                                                            \
    X(cndevGetMemoryUsageV2, LIB_CNDEV, 1)                                                               \
    HCS_SYMBOLS_SYNCTIME(X)

/* Synchronise entry points of ACL, HIP and CNRT, timed for the sub-health fallback signal
 * (synctime.h; the hooks are at the end of hooks_extra.c). */
#define HCS_SYMBOLS_SYNCTIME(X)                                                                          \
    X(aclrtSynchronizeStream, LIB_ACL, 1)                                                                \
    X(aclrtSynchronizeStreamWithTimeout, LIB_ACL, 1)                                                     \
    X(aclrtSynchronizeDevice, LIB_ACL, 1)                                                                \
    X(aclrtSynchronizeDeviceWithTimeout, LIB_ACL, 1)                                                     \
    X(aclrtSynchronizeEvent, LIB_ACL, 1)                                                                 \
    X(hipStreamSynchronize, LIB_HIP, 1)                                                                  \
    X(hipDeviceSynchronize, LIB_HIP, 1)                                                                  \
    X(hipEventSynchronize, LIB_HIP, 1)                                                                   \
    X(cnrtQueueSync, LIB_CNRT, 1)                                                                        \
    X(cnrtSyncQueue, LIB_CNRT, 1)                                                                        \
    X(cnrtSyncDevice, LIB_CNRT, 1)                                                                       \
    X(cnrtWaitNotifier, LIB_CNRT, 1)

/* per-thread-default-stream variant (cuda.h maps cuStreamSynchronize to it under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM) */
CUresult cuStreamSynchronize_ptsz(CUstream hStream);

/* synchronise variants beyond hcs_vendor_launch.h (acl_rt.h: timeout in ms, -1 for ever; CNRT 4/5's
 * name of cnrtQueueSync) */
aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout);
aclError aclrtSynchronizeDeviceWithTimeout(int32_t timeout);
cnrtRet_t cnrtSyncQueue(cnrtQueue_t queue);

/* Management libraries' memory queries (nvidia-smi's NVML equivalents), declared as the vendors'
 * headers do (reference: /work/shared/reference/vendors.md; dcmi_interface_api.h, rocm_smi.h,
 * cndev.h v2.0.21). Only the fields HCS rewrites matter; the layouts are the vendors'. */
struct dcmi_get_memory_info_stru {
    unsigned long long memory_size;      /* MB */
    unsigned long long memory_available; /* MB */
    unsigned int freq;
    unsigned long hugepagesize;
    unsigned long hugepages_total;
    unsigned long hugepages_free;
    unsigned int utiliza; /* percent */
    unsigned char reserve[60];
};
struct dcmi_hbm_info {
    unsigned long long memory_size; /* MB */
    unsigned int freq;
    unsigned long long memory_usage; /* MB */
    int temp;
    unsigned int bandwith_util_rate;
};
int dcmi_get_device_memory_info_v3(int card_id, int device_id, struct dcmi_get_memory_info_stru *mem);
int dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *hbm);
int dcmi_get_device_logic_id(int *device_logic_id, int card_id, int device_id);

typedef int rsmi_status_t;
#define RSMI_MEM_TYPE_VRAM 0
rsmi_status_t rsmi_dev_memory_total_get(uint32_t dv_ind, int mem_type, uint64_t *total);
rsmi_status_t rsmi_dev_memory_usage_get(uint32_t dv_ind, int mem_type, uint64_t *used);

typedef int cndevRet_t;
typedef int32_t cndevDevice_t;
typedef struct {
    int64_t physicalMemoryTotal; /* MB */
    int64_t physicalMemoryUsed;
    int64_t reservedMemory;
    int64_t virtualMemoryTotal;
    int64_t virtualMemoryUsed;
    uint64_t globalMemory;
    uint64_t reserved[16];
} cndevMemoryInfoV2_t;
cndevRet_t cndevGetMemoryUsageV2(cndevMemoryInfoV2_t *mem, cndevDevice_t device);

#endif /* HCS_HOOKS_EXTRA_H */
