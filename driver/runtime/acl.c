/*
 * Simulated Ascend ACL runtime (libascendcl.so): aclInit, device selection, aclrtMalloc / Free /
 * GetMemInfo backed by host memory (sim_mem.c), sized by the node profile (Ascend devices).
 * Codes from acl_base.h / rt_error_codes.h (hcs_vendor_abi.h).
 */
#define _GNU_SOURCE
#include <stdatomic.h>

#include <stdlib.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_faults.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define ACL_ERROR_REPEAT_INITIALIZE 100002
#define ACL_ERROR_RT_CONTEXT_NULL 107002
#define ACL_ERROR_RT_DEVICE_ID_INVALID 107001 /* "invalid device id" (rt_error_codes.h) */
#define ACL_ERROR_RT_DRV_INTERNAL_ERROR 507899

static _Atomic int initialized;
static __thread int cur_dev = -1;

static aclError map_rc(int rc) {
    switch (rc) {
    case SIM_MEM_OK: return ACL_SUCCESS;
    case SIM_MEM_OOM:
    case SIM_MEM_HOSTOOM: return ACL_ERROR_RT_MEMORY_ALLOCATION;
    case SIM_MEM_BADDEV: return ACL_ERROR_RT_DEVICE_ID_INVALID;
    case SIM_MEM_BADPTR: return ACL_ERROR_INVALID_PARAM;
    default: return ACL_ERROR_RT_DRV_INTERNAL_ERROR;
    }
}

EXPORT aclError aclInit(const char *configPath) {
    (void)configPath;
    if (sim_mem_count(SIM_VENDOR_ASCEND) < 0)
        return ACL_ERROR_RT_DRV_INTERNAL_ERROR;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&initialized, &expected, 1))
        return ACL_ERROR_REPEAT_INITIALIZE;
    return ACL_SUCCESS;
}

EXPORT aclError aclFinalize(void) {
    atomic_store(&initialized, 0);
    return ACL_SUCCESS;
}

EXPORT aclError aclrtGetDeviceCount(uint32_t *count) {
    if (count == NULL)
        return ACL_ERROR_INVALID_PARAM;
    int n = sim_mem_count(SIM_VENDOR_ASCEND);
    if (n < 0)
        return ACL_ERROR_RT_DRV_INTERNAL_ERROR;
    *count = (uint32_t)n;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtSetDevice(int32_t deviceId) {
    if (!atomic_load(&initialized))
        return ACL_ERROR_UNINITIALIZE;
    if (deviceId < 0 || deviceId >= sim_mem_count(SIM_VENDOR_ASCEND))
        return ACL_ERROR_RT_DEVICE_ID_INVALID;
    cur_dev = deviceId;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtResetDevice(int32_t deviceId) {
    if (deviceId < 0 || deviceId >= sim_mem_count(SIM_VENDOR_ASCEND))
        return ACL_ERROR_RT_DEVICE_ID_INVALID;
    if (cur_dev == deviceId)
        cur_dev = -1;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtGetDevice(int32_t *deviceId) {
    if (deviceId == NULL)
        return ACL_ERROR_INVALID_PARAM;
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    *deviceId = cur_dev;
    return ACL_SUCCESS;
}

static aclError alloc(void **devPtr, size_t size) {
    if (devPtr == NULL || size == 0)
        return ACL_ERROR_INVALID_PARAM;
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    return map_rc(sim_mem_alloc(SIM_VENDOR_ASCEND, cur_dev, size, 1, devPtr));
}

EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    return alloc(devPtr, size);
}

EXPORT aclError aclrtMallocCached(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    return alloc(devPtr, size);
}

EXPORT aclError aclrtFree(void *devPtr) {
    if (devPtr == NULL)
        return ACL_ERROR_INVALID_PARAM;
    return map_rc(sim_mem_free(devPtr));
}

EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes) {
    (void)attr;
    if (free_bytes == NULL || total_bytes == NULL)
        return ACL_ERROR_INVALID_PARAM;
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    return map_rc(sim_mem_info(SIM_VENDOR_ASCEND, cur_dev, free_bytes, total_bytes));
}

/* aclrtMallocAlign32: the size is rounded up to a multiple of 32 bytes (no extra 32 bytes) */
EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    if (size == 0 || size > SIZE_MAX - 31)
        return ACL_ERROR_INVALID_PARAM;
    return alloc(devPtr, (size + 31) & ~(size_t)31);
}

/* ---- virtual memory (granularity 2 MiB; semantics in sim_mem.h) */

static aclError vmm_rc(int rc) {
    return rc == SIM_MEM_BADVAL ? ACL_ERROR_INVALID_PARAM : map_rc(rc);
}

EXPORT aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop, int option, size_t *granularity) {
    if (prop == NULL || granularity == NULL ||
        (option != ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM && option != ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return ACL_ERROR_INVALID_PARAM;
    *granularity = SIM_VMM_GRANULE;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment, void *expectPtr, uint64_t flags) {
    if (virPtr == NULL || alignment != 0 || expectPtr != NULL || size == 0)
        return ACL_ERROR_INVALID_PARAM; /* expectPtr: an experimental feature, not simulated */
    (void)flags;
    return vmm_rc(sim_vmm_reserve(size, 0, virPtr));
}

EXPORT aclError aclrtReleaseMemAddress(void *virPtr) {
    return vmm_rc(sim_vmm_free_va(virPtr, 0));
}

EXPORT aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop,
                                    uint64_t flags) {
    if (handle == NULL || prop == NULL || flags != 0 || prop->allocationType != ACL_MEM_ALLOCATION_TYPE_PINNED)
        return ACL_ERROR_INVALID_PARAM;
    if (!atomic_load(&initialized))
        return ACL_ERROR_UNINITIALIZE;
    int counted = prop->location.type == ACL_MEM_LOCATION_TYPE_DEVICE;
    if (!counted && prop->location.type != ACL_MEM_LOCATION_TYPE_HOST)
        return ACL_ERROR_INVALID_PARAM;
    if (counted && (int)prop->location.id >= sim_mem_count(SIM_VENDOR_ASCEND))
        return ACL_ERROR_RT_DEVICE_ID_INVALID;
    return vmm_rc(sim_vmm_create(SIM_VENDOR_ASCEND, counted ? (int)prop->location.id : 0, size, counted, handle));
}

EXPORT aclError aclrtFreePhysical(aclrtDrvMemHandle handle) {
    return vmm_rc(sim_vmm_release(handle));
}

EXPORT aclError aclrtMapMem(void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle, uint64_t flags) {
    if (offset != 0 || flags != 0)
        return ACL_ERROR_INVALID_PARAM;
    return vmm_rc(sim_vmm_map(virPtr, size, offset, handle));
}

EXPORT aclError aclrtUnmapMem(void *virPtr) {
    return vmm_rc(sim_vmm_unmap(virPtr, 0));
}
/* ---- simulated kernels (sim_device.h): aclrtLaunchKernel, streams. A stream belongs to the
 * device current when it was created; one queue per process and device. */

#define STREAM_MAGIC 0x41535431u

struct acl_stream {
    unsigned magic;
    int dev;
};

static aclError sim_rc(int rc) {
    return rc == SIM_DEV_OK ? ACL_SUCCESS : rc == SIM_DEV_BADDEV ? ACL_ERROR_RT_DEVICE_ID_INVALID
                                                                 : ACL_ERROR_RT_DRV_INTERNAL_ERROR;
}

static aclError stream_dev(aclrtStream stream, int *dev) {
    struct acl_stream *s = stream;
    if (s != NULL) {
        if (s->magic != STREAM_MAGIC)
            return ACL_ERROR_INVALID_PARAM;
        *dev = s->dev;
        return ACL_SUCCESS;
    }
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    *dev = cur_dev;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtCreateStream(aclrtStream *stream) {
    if (stream == NULL)
        return ACL_ERROR_INVALID_PARAM;
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    struct acl_stream *s = malloc(sizeof *s);
    if (s == NULL)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    s->magic = STREAM_MAGIC;
    s->dev = cur_dev;
    *stream = s;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtDestroyStream(aclrtStream stream) {
    struct acl_stream *s = stream;
    if (s == NULL || s->magic != STREAM_MAGIC)
        return ACL_ERROR_INVALID_PARAM;
    s->magic = 0;
    free(s);
    return ACL_SUCCESS;
}


/* Sub-health scenario (fault file "sync_us"/"slow"): a synchronise on this device takes that long,
 * as cuCtxSynchronize does (driver/README.md). Separate from the launch paths. */
static void sync_scenario(int dev) {
    const sim_profile_t *p;
    if (dev >= 0 && sim_mem_profile(&p) == SIM_MEM_OK)
        sim_device_sync_delay(p, SIM_VENDOR_ASCEND, dev);
}

/* the device an event was recorded on (-1: not recorded / not an event) */
static int event_dev(const void *event) {
    const struct sim_event *e = event;
    return e != NULL && e->magic == SIM_EVENT_MAGIC && e->recorded ? e->dev : -1;
}

/* the bodies of the synchronise calls, shared with their ...WithTimeout variants (not through the
 * exported name: an interposer times each call once) */
static aclError sync_stream(aclrtStream stream) {
    int dev;
    aclError rc = stream_dev(stream, &dev);
    if (rc != ACL_SUCCESS)
        return rc;
    sync_scenario(dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_ASCEND, dev));
}

EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) {
    return sync_stream(stream);
}

/* timeout in ms, -1: wait for ever (acl_rt.h); the simulated device always completes */
EXPORT aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout) {
    (void)timeout;
    return sync_stream(stream);
}

static aclError sync_device(void) {
    if (cur_dev < 0)
        return ACL_ERROR_RT_CONTEXT_NULL;
    sync_scenario(cur_dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_ASCEND, cur_dev));
}

EXPORT aclError aclrtSynchronizeDevice(void) {
    return sync_device();
}

EXPORT aclError aclrtSynchronizeDeviceWithTimeout(int32_t timeout) {
    (void)timeout;
    return sync_device();
}

/* The first 8 bytes of argsData: the kernel's cost in floating-point operations. */
EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData,
                                  size_t argsSize, aclrtStream stream) {
    (void)blockDim;
    if (funcHandle == NULL || argsData == NULL || argsSize < sizeof(unsigned long long))
        return ACL_ERROR_INVALID_PARAM;
    int dev;
    aclError rc = stream_dev(stream, &dev);
    if (rc != ACL_SUCCESS)
        return rc;
    unsigned long long flops;
    memcpy(&flops, argsData, sizeof flops);
    return sim_rc(sim_dev_launch(SIM_VENDOR_ASCEND, dev, flops, NULL));
}

/* ---- operator execution (acl_op.h). A simulated op is one kernel whose cost in floating-point
 * operations is the unsigned long long at inputs[0]'s data address (the op type, descriptors and
 * attributes are not looked at). Enqueued on the device directly, as the real library does through
 * its runtime, never through the exported aclrtLaunchKernel. */

#define BUF_MAGIC 0x41444231u
#define HANDLE_MAGIC 0x41504831u

struct aclDataBuffer {
    unsigned magic;
    void *data;
    size_t size;
};

struct aclopHandle {
    unsigned magic;
};

EXPORT aclDataBuffer *aclCreateDataBuffer(void *data, size_t size) {
    struct aclDataBuffer *b = malloc(sizeof *b);
    if (b != NULL) {
        b->magic = BUF_MAGIC;
        b->data = data;
        b->size = size;
    }
    return b;
}

EXPORT aclError aclDestroyDataBuffer(const aclDataBuffer *dataBuffer) {
    struct aclDataBuffer *b = (struct aclDataBuffer *)dataBuffer;
    if (b == NULL || b->magic != BUF_MAGIC)
        return ACL_ERROR_INVALID_PARAM;
    b->magic = 0;
    free(b);
    return ACL_SUCCESS;
}

static aclError op_run(int numInputs, const aclDataBuffer *const inputs[], aclrtStream stream) {
    if (numInputs < 1 || inputs == NULL || inputs[0] == NULL || inputs[0]->magic != BUF_MAGIC ||
        inputs[0]->data == NULL || inputs[0]->size < sizeof(unsigned long long))
        return ACL_ERROR_INVALID_PARAM;
    int dev;
    aclError rc = stream_dev(stream, &dev);
    if (rc != ACL_SUCCESS)
        return rc;
    unsigned long long flops;
    memcpy(&flops, inputs[0]->data, sizeof flops);
    return sim_rc(sim_dev_launch(SIM_VENDOR_ASCEND, dev, flops, NULL));
}

EXPORT aclError aclopExecute(const char *opType, int numInputs, const aclTensorDesc *const inputDesc[],
                             const aclDataBuffer *const inputs[], int numOutputs,
                             const aclTensorDesc *const outputDesc[], aclDataBuffer *const outputs[],
                             const aclopAttr *attr, aclrtStream stream) {
    (void)inputDesc, (void)numOutputs, (void)outputDesc, (void)outputs, (void)attr;
    if (opType == NULL)
        return ACL_ERROR_INVALID_PARAM;
    return op_run(numInputs, inputs, stream);
}

EXPORT aclError aclopExecuteV2(const char *opType, int numInputs, aclTensorDesc *inputDesc[], aclDataBuffer *inputs[],
                               int numOutputs, aclTensorDesc *outputDesc[], aclDataBuffer *outputs[],
                               aclopAttr *attr, aclrtStream stream) {
    (void)inputDesc, (void)numOutputs, (void)outputDesc, (void)outputs, (void)attr;
    if (opType == NULL)
        return ACL_ERROR_INVALID_PARAM;
    return op_run(numInputs, (const aclDataBuffer *const *)inputs, stream);
}

EXPORT aclError aclopCreateHandle(const char *opType, int numInputs, const aclTensorDesc *const inputDesc[],
                                  int numOutputs, const aclTensorDesc *const outputDesc[], const aclopAttr *opAttr,
                                  aclopHandle **handle) {
    (void)numInputs, (void)inputDesc, (void)numOutputs, (void)outputDesc, (void)opAttr;
    if (opType == NULL || handle == NULL)
        return ACL_ERROR_INVALID_PARAM;
    struct aclopHandle *h = malloc(sizeof *h);
    if (h == NULL)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    h->magic = HANDLE_MAGIC;
    *handle = h;
    return ACL_SUCCESS;
}

EXPORT void aclopDestroyHandle(aclopHandle *handle) {
    if (handle != NULL && handle->magic == HANDLE_MAGIC) {
        handle->magic = 0;
        free(handle);
    }
}

EXPORT aclError aclopExecWithHandle(aclopHandle *handle, int numInputs, const aclDataBuffer *const inputs[],
                                    int numOutputs, aclDataBuffer *const outputs[], aclrtStream stream) {
    (void)numOutputs, (void)outputs;
    if (handle == NULL || handle->magic != HANDLE_MAGIC)
        return ACL_ERROR_INVALID_PARAM;
    return op_run(numInputs, inputs, stream);
}

/* What the simulated libnnopbase.so's CommonOpExecutorRun enqueues an aclnn operator's kernels
 * with (the real one: the runtime's rtKernelLaunch, below the ACL API): not an ACL entry point. */
EXPORT aclError hcs_sim_acl_enqueue(aclrtStream stream, unsigned long long flops) {
    int dev;
    aclError rc = stream_dev(stream, &dev);
    return rc != ACL_SUCCESS ? rc : sim_rc(sim_dev_launch(SIM_VENDOR_ASCEND, dev, flops, NULL));
}

EXPORT aclError aclrtCreateEvent(aclrtEvent *event) {
    if (event == NULL)
        return ACL_ERROR_INVALID_PARAM;
    *event = sim_event_new();
    return *event != NULL ? ACL_SUCCESS : ACL_ERROR_RT_MEMORY_ALLOCATION;
}

EXPORT aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream) {
    int dev;
    aclError rc = stream_dev(stream, &dev);
    if (rc != ACL_SUCCESS)
        return rc;
    int r = sim_event_record(event, SIM_VENDOR_ASCEND, dev);
    return r == SIM_DEV_BADDEV && event != NULL ? ACL_ERROR_INVALID_PARAM : sim_rc(r);
}

EXPORT aclError aclrtSynchronizeEvent(aclrtEvent event) {
    sync_scenario(event_dev(event));
    return sim_event_wait(event) == SIM_DEV_OK ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM;
}

EXPORT aclError aclrtDestroyEvent(aclrtEvent event) {
    return sim_event_free(event) == SIM_DEV_OK ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM;
}

static int same_index(int ordinal) {
    return ordinal;
}
SIM_DEVICE_EXPORTS(acl, SIM_VENDOR_ASCEND, same_index)
