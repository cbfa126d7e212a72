/*
 * Simulated HIP runtime (libamdhip64.so, Hygon DCU): device selection, hipMalloc family, hipFree,
 * hipMemGetInfo backed by host memory (sim_mem.c), sized by the node profile (Hygon devices).
 * Codes from hip_runtime_api.h (hcs_vendor_abi.h). Like HIP, device 0 is current by default.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_faults.h"
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
/* ---- simulated kernels (sim_device.h): launches, streams, graphs. A stream belongs to the device
 * current when it was created; one queue per process and device (all streams share it). */

#define STREAM_MAGIC 0x48535431u
#define GRAPH_MAGIC 0x48475231u
#define EXEC_MAGIC 0x48455831u
#define MOD_MAGIC 0x484d4f31u

struct ihipStream_t {
    unsigned magic;
    int dev;
    struct hipGraph_st *capture;
};
struct hipGraph_st {
    unsigned magic;
    int dev;
    uint64_t ns;
};
struct hipGraphExec_st {
    unsigned magic;
    int dev;
    uint64_t ns;
};
struct hipModule_st {
    unsigned magic;
};
struct hipFunction_st {
    unsigned magic;
};

static struct hipFunction_st sim_function = {MOD_MAGIC};

static hipError_t sim_rc(int rc) {
    return rc == SIM_DEV_OK ? hipSuccess : rc == SIM_DEV_BADDEV ? hipErrorInvalidDevice : hipErrorNotInitialized;
}

static hipError_t stream_dev(hipStream_t s, int *dev) {
    if (s != NULL && s->magic != STREAM_MAGIC)
        return hipErrorInvalidHandle;
    *dev = s != NULL ? s->dev : cur_dev;
    return hipSuccess;
}

static hipError_t launch(hipStream_t s, void **args) {
    if (args == NULL || args[0] == NULL)
        return hipErrorInvalidValue;
    int dev;
    hipError_t rc = stream_dev(s, &dev);
    if (rc != hipSuccess)
        return rc;
    unsigned long long flops;
    memcpy(&flops, args[0], sizeof flops);
    if (s != NULL && s->capture != NULL) {
        s->capture->ns += sim_dev_cost_ns(SIM_VENDOR_HYGON, dev, flops);
        return hipSuccess;
    }
    return sim_rc(sim_dev_launch(SIM_VENDOR_HYGON, dev, flops, NULL));
}

EXPORT hipError_t hipModuleLoadData(hipModule_t *module, const void *image) {
    if (module == NULL || image == NULL)
        return hipErrorInvalidValue;
    hipModule_t m = malloc(sizeof *m);
    if (m == NULL)
        return hipErrorOutOfMemory;
    m->magic = MOD_MAGIC;
    *module = m;
    return hipSuccess;
}

EXPORT hipError_t hipModuleGetFunction(hipFunction_t *function, hipModule_t module, const char *kname) {
    if (function == NULL || kname == NULL || module == NULL || module->magic != MOD_MAGIC)
        return hipErrorInvalidValue;
    *function = &sim_function;
    return hipSuccess;
}

EXPORT hipError_t hipLaunchKernel(const void *function_address, dim3 numBlocks, dim3 dimBlocks, void **args,
                                  size_t sharedMemBytes, hipStream_t stream) {
    (void)numBlocks, (void)dimBlocks, (void)sharedMemBytes;
    if (function_address == NULL)
        return hipErrorInvalidValue;
    return launch(stream, args);
}

EXPORT hipError_t hipModuleLaunchKernel(hipFunction_t f, unsigned int gridDimX, unsigned int gridDimY,
                                        unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                        unsigned int blockDimZ, unsigned int sharedMemBytes, hipStream_t stream,
                                        void **kernelParams, void **extra) {
    (void)gridDimX, (void)gridDimY, (void)gridDimZ, (void)blockDimX, (void)blockDimY, (void)blockDimZ;
    (void)sharedMemBytes, (void)extra;
    if (f == NULL || f->magic != MOD_MAGIC)
        return hipErrorInvalidHandle;
    return launch(stream, kernelParams);
}

EXPORT hipError_t hipExtLaunchKernel(const void *function_address, dim3 numBlocks, dim3 dimBlocks, void **args,
                                     size_t sharedMemBytes, hipStream_t stream, hipEvent_t startEvent,
                                     hipEvent_t stopEvent, int flags) {
    (void)startEvent, (void)stopEvent, (void)flags;
    return hipLaunchKernel(function_address, numBlocks, dimBlocks, args, sharedMemBytes, stream);
}

EXPORT hipError_t hipStreamCreate(hipStream_t *stream) {
    if (stream == NULL)
        return hipErrorInvalidValue;
    hipStream_t s = calloc(1, sizeof *s);
    if (s == NULL)
        return hipErrorOutOfMemory;
    s->magic = STREAM_MAGIC;
    s->dev = cur_dev;
    *stream = s;
    return hipSuccess;
}

EXPORT hipError_t hipStreamDestroy(hipStream_t stream) {
    if (stream == NULL || stream->magic != STREAM_MAGIC)
        return hipErrorInvalidHandle;
    stream->magic = 0;
    free(stream->capture);
    free(stream);
    return hipSuccess;
}


/* Sub-health scenario (fault file "sync_us"/"slow"): a synchronise on this device takes that long,
 * as cuCtxSynchronize does (driver/README.md). Separate from the launch paths. */
static void sync_scenario(int dev) {
    const sim_profile_t *p;
    if (dev >= 0 && sim_mem_profile(&p) == SIM_MEM_OK)
        sim_device_sync_delay(p, SIM_VENDOR_HYGON, dev);
}

/* the device an event was recorded on (-1: not recorded / not an event) */
static int event_dev(const void *event) {
    const struct sim_event *e = event;
    return e != NULL && e->magic == SIM_EVENT_MAGIC && e->recorded ? e->dev : -1;
}

EXPORT hipError_t hipStreamSynchronize(hipStream_t stream) {
    int dev;
    hipError_t rc = stream_dev(stream, &dev);
    if (rc != hipSuccess)
        return rc;
    sync_scenario(dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_HYGON, dev));
}

EXPORT hipError_t hipDeviceSynchronize(void) {
    sync_scenario(cur_dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_HYGON, cur_dev));
}

EXPORT hipError_t hipStreamBeginCapture(hipStream_t stream, int mode) {
    (void)mode;
    if (stream == NULL || stream->magic != STREAM_MAGIC || stream->capture != NULL)
        return hipErrorInvalidValue;
    stream->capture = calloc(1, sizeof *stream->capture);
    if (stream->capture == NULL)
        return hipErrorOutOfMemory;
    stream->capture->magic = GRAPH_MAGIC;
    stream->capture->dev = stream->dev;
    return hipSuccess;
}

EXPORT hipError_t hipStreamEndCapture(hipStream_t stream, hipGraph_t *pGraph) {
    if (stream == NULL || stream->magic != STREAM_MAGIC || stream->capture == NULL || pGraph == NULL)
        return hipErrorInvalidValue;
    *pGraph = stream->capture;
    stream->capture = NULL;
    return hipSuccess;
}

EXPORT hipError_t hipGraphInstantiateWithFlags(hipGraphExec_t *pGraphExec, hipGraph_t graph,
                                               unsigned long long flags) {
    (void)flags;
    if (pGraphExec == NULL || graph == NULL || graph->magic != GRAPH_MAGIC)
        return hipErrorInvalidValue;
    hipGraphExec_t e = malloc(sizeof *e);
    if (e == NULL)
        return hipErrorOutOfMemory;
    e->magic = EXEC_MAGIC;
    e->dev = graph->dev;
    e->ns = graph->ns;
    *pGraphExec = e;
    return hipSuccess;
}

EXPORT hipError_t hipGraphLaunch(hipGraphExec_t graphExec, hipStream_t stream) {
    if (graphExec == NULL || graphExec->magic != EXEC_MAGIC)
        return hipErrorInvalidHandle;
    int dev;
    hipError_t rc = stream_dev(stream, &dev);
    if (rc != hipSuccess)
        return rc;
    return sim_rc(sim_dev_launch_ns(SIM_VENDOR_HYGON, graphExec->dev, graphExec->ns, NULL));
}

EXPORT hipError_t hipGraphExecDestroy(hipGraphExec_t graphExec) {
    if (graphExec == NULL || graphExec->magic != EXEC_MAGIC)
        return hipErrorInvalidHandle;
    graphExec->magic = 0;
    free(graphExec);
    return hipSuccess;
}

EXPORT hipError_t hipGraphDestroy(hipGraph_t graph) {
    if (graph == NULL || graph->magic != GRAPH_MAGIC)
        return hipErrorInvalidHandle;
    graph->magic = 0;
    free(graph);
    return hipSuccess;
}

EXPORT hipError_t hipEventCreate(hipEvent_t *event) {
    if (event == NULL)
        return hipErrorInvalidValue;
    *event = (hipEvent_t)sim_event_new();
    return *event != NULL ? hipSuccess : hipErrorOutOfMemory;
}

EXPORT hipError_t hipEventRecord(hipEvent_t event, hipStream_t stream) {
    int dev;
    hipError_t rc = stream_dev(stream, &dev);
    if (rc != hipSuccess)
        return rc;
    int r = sim_event_record((struct sim_event *)event, SIM_VENDOR_HYGON, dev);
    return r == SIM_DEV_BADDEV && event != NULL ? hipErrorInvalidHandle : sim_rc(r);
}

EXPORT hipError_t hipEventSynchronize(hipEvent_t event) {
    sync_scenario(event_dev(event));
    return sim_event_wait((struct sim_event *)event) == SIM_DEV_OK ? hipSuccess : hipErrorInvalidHandle;
}

EXPORT hipError_t hipEventDestroy(hipEvent_t event) {
    return sim_event_free((struct sim_event *)event) == SIM_DEV_OK ? hipSuccess : hipErrorInvalidHandle;
}

static int same_index(int ordinal) {
    return ordinal;
}
SIM_DEVICE_EXPORTS(hip, SIM_VENDOR_HYGON, same_index)
