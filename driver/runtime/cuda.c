/*
 * Simulated CUDA driver API (libcuda.so.1): the allocation/query subset HCS intercepts, backed by
 * host memory (sim_mem.c) and sized by the node profile ($HCS_SIM_PROFILE, NVIDIA devices).
 * Error codes are cuda.h's (hcs_vendor_abi.h).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define CUDA_ERROR_NO_DEVICE 100
#define CTX_MAGIC 0x43545831u
#define HANDLE_MAGIC 0x484e444cu

struct CUctx_st {
    unsigned magic;
    int dev;
    int primary;
};

struct vmm_handle {
    unsigned magic;
    void *mem;
};

static _Atomic int initialized;
static __thread CUcontext current;
static struct CUctx_st primary[SIM_MAX_DEVICES];

/* CUDA_VISIBLE_DEVICES, read at cuInit like the real driver: a comma list of indices or UUIDs
 * ("GPU-..."), cut at the first invalid entry; the ordinals the application sees are positions in
 * it. vis[ordinal] = the profile's NVIDIA device index. */
static int vis_n = -1;
static int vis[SIM_MAX_DEVICES];

static int ndev(void) {
    return vis_n >= 0 ? vis_n : sim_mem_count(SIM_VENDOR_NVIDIA);
}

/* the profile device behind an application-visible ordinal */
static int phys(int ordinal) {
    return (vis_n >= 0 && ordinal >= 0 && ordinal < vis_n) ? vis[ordinal] : ordinal;
}

static void load_visible(int count) {
    const char *env = getenv("CUDA_VISIBLE_DEVICES");
    int n = 0;
    if (env == NULL) {
        for (int i = 0; i < count && i < SIM_MAX_DEVICES; i++)
            vis[n++] = i;
        vis_n = n;
        return;
    }
    const sim_profile_t *p = NULL;
    (void)sim_mem_profile(&p);
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", env);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL && n < SIM_MAX_DEVICES;
         tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long idx = strtol(tok, &end, 10);
        int found = -1;
        if (end != tok && *end == '\0')
            found = (idx >= 0 && idx < count) ? (int)idx : -1;
        else if (p != NULL)
            found = sim_vendor_find_uuid(p, SIM_VENDOR_NVIDIA, tok);
        if (found < 0)
            break;
        vis[n++] = found;
    }
    vis_n = n;
}

static CUresult map_rc(int rc) {
    switch (rc) {
    case SIM_MEM_OK: return CUDA_SUCCESS;
    case SIM_MEM_OOM: return CUDA_ERROR_OUT_OF_MEMORY;
    case SIM_MEM_BADDEV: return CUDA_ERROR_INVALID_DEVICE;
    case SIM_MEM_BADPTR: return CUDA_ERROR_INVALID_VALUE;
    case SIM_MEM_HOSTOOM: return CUDA_ERROR_OUT_OF_MEMORY;
    default: return CUDA_ERROR_NOT_INITIALIZED;
    }
}

#define NEED_INIT()                                                                                      \
    do {                                                                                                 \
        if (!atomic_load_explicit(&initialized, memory_order_acquire))                                   \
            return CUDA_ERROR_NOT_INITIALIZED;                                                           \
    } while (0)

static CUresult current_dev(int *dev) {
    NEED_INIT();
    if (current == NULL || current->magic != CTX_MAGIC)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = current->dev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    int count = sim_mem_count(SIM_VENDOR_NVIDIA);
    if (count < 0)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!atomic_load_explicit(&initialized, memory_order_acquire))
        load_visible(count);
    int n = ndev();
    if (n == 0)
        return CUDA_ERROR_NO_DEVICE;
    for (int i = 0; i < n && i < SIM_MAX_DEVICES; i++) {
        primary[i].magic = CTX_MAGIC;
        primary[i].dev = i;
        primary[i].primary = 1;
    }
    atomic_store_explicit(&initialized, 1, memory_order_release);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *version) {
    if (version == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *version = 12040;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    NEED_INIT();
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = ndev();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    NEED_INIT();
    if (dev == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    NEED_INIT();
    const sim_profile_t *p;
    if (name == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (sim_mem_profile(&p) != SIM_MEM_OK)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    const sim_device_t *d = sim_vendor_device(p, SIM_VENDOR_NVIDIA, phys(dev));
    if (d == NULL)
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", d->model);
    return CUDA_SUCCESS;
}

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" -> 16 bytes (what NVML prints is "GPU-" + these) */
static CUresult uuid_of(CUuuid *uuid, CUdevice dev) {
    NEED_INIT();
    const sim_profile_t *p;
    if (uuid == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    if (sim_mem_profile(&p) != SIM_MEM_OK)
        return CUDA_ERROR_NOT_INITIALIZED;
    const sim_device_t *d = sim_vendor_device(p, SIM_VENDOR_NVIDIA, phys(dev));
    if (d == NULL)
        return CUDA_ERROR_INVALID_DEVICE;
    const char *u = strncmp(d->uuid, "GPU-", 4) == 0 ? d->uuid + 4 : d->uuid;
    memset(uuid->bytes, 0, sizeof uuid->bytes);
    int nib = 0;
    for (; *u != '\0' && nib < 32; u++) {
        int v = (*u >= '0' && *u <= '9') ? *u - '0' : (*u >= 'a' && *u <= 'f') ? *u - 'a' + 10
              : (*u >= 'A' && *u <= 'F') ? *u - 'A' + 10 : -1;
        if (v < 0)
            continue; /* dashes */
        uuid->bytes[nib / 2] = (char)(uuid->bytes[nib / 2] | (nib % 2 ? v : v << 4));
        nib++;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
    return uuid_of(uuid, dev);
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    return uuid_of(uuid, dev);
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    NEED_INIT();
    size_t f, t;
    if (bytes == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    int rc = sim_mem_info(SIM_VENDOR_NVIDIA, phys(dev), &f, &t);
    if (rc != SIM_MEM_OK)
        return map_rc(rc);
    *bytes = t;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    (void)flags;
    NEED_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    CUcontext c = calloc(1, sizeof *c);
    if (c == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->magic = CTX_MAGIC;
    c->dev = dev;
    current = c;
    *pctx = c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    NEED_INIT();
    if (ctx == NULL || ctx->magic != CTX_MAGIC || ctx->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (current == ctx)
        current = NULL;
    ctx->magic = 0;
    free(ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    NEED_INIT();
    if (ctx != NULL && ctx->magic != CTX_MAGIC)
        return CUDA_ERROR_INVALID_CONTEXT;
    current = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
    NEED_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *dev) {
    int d;
    CUresult rc = current_dev(&d);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dev == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *dev = d;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) {
    int d;
    CUresult rc = current_dev(&d);
    if (rc != CUDA_SUCCESS)
        return rc;
    return sim_dev_sync(SIM_VENDOR_NVIDIA, phys(d)) == SIM_DEV_OK ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    NEED_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev() || dev >= SIM_MAX_DEVICES)
        return CUDA_ERROR_INVALID_DEVICE;
    *pctx = &primary[dev];
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    NEED_INIT();
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

static CUresult alloc_dev(CUdeviceptr *dptr, size_t size) {
    int dev;
    CUresult rc = current_dev(&dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dptr == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    void *p = NULL;
    rc = map_rc(sim_mem_alloc(SIM_VENDOR_NVIDIA, phys(dev), size, 1, &p));
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)(uintptr_t)p;
    return rc;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    (void)flags;
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    (void)hStream;
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    (void)hStream;
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                        CUstream hStream) {
    (void)pool;
    (void)hStream;
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                             CUstream hStream) {
    (void)pool;
    (void)hStream;
    return alloc_dev(dptr, bytesize);
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                   unsigned int ElementSizeBytes) {
    if (pPitch == NULL || WidthInBytes == 0 || Height == 0 ||
        (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (WidthInBytes + 511) & ~(size_t)511; /* 512-byte pitch alignment, like real GPUs */
    if (Height > SIZE_MAX / pitch)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = alloc_dev(dptr, pitch * Height);
    if (rc == CUDA_SUCCESS)
        *pPitch = pitch;
    return rc;
}

static CUresult free_dev(CUdeviceptr dptr) {
    NEED_INIT();
    if (dptr == 0)
        return CUDA_SUCCESS;
    return map_rc(sim_mem_free((void *)(uintptr_t)dptr));
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    return free_dev(dptr);
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    (void)hStream;
    return free_dev(dptr);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
    (void)hStream;
    return free_dev(dptr);
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    NEED_INIT();
    if (handle == NULL || prop == NULL || size == 0 || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    int counted;
    int dev = 0;
    switch (prop->location.type) {
    case CU_MEM_LOCATION_TYPE_DEVICE:
        counted = 1;
        dev = prop->location.id;
        if (dev < 0 || dev >= ndev())
            return CUDA_ERROR_INVALID_DEVICE;
        break;
    case CU_MEM_LOCATION_TYPE_HOST:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
        counted = 0;
        break;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    struct vmm_handle *h = malloc(sizeof *h);
    if (h == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = map_rc(sim_mem_alloc(SIM_VENDOR_NVIDIA, counted ? phys(dev) : 0, size, counted, &h->mem));
    if (rc != CUDA_SUCCESS) {
        free(h);
        return rc;
    }
    h->magic = HANDLE_MAGIC;
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)h;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    NEED_INIT();
    struct vmm_handle *h = (struct vmm_handle *)(uintptr_t)handle;
    if (h == NULL || h->magic != HANDLE_MAGIC)
        return CUDA_ERROR_INVALID_VALUE;
    h->magic = 0;
    (void)sim_mem_free(h->mem);
    free(h);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    int dev;
    CUresult rc = current_dev(&dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (free_bytes == NULL || total_bytes == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return map_rc(sim_mem_info(SIM_VENDOR_NVIDIA, phys(dev), free_bytes, total_bytes));
}

EXPORT CUresult cuGetErrorName(CUresult error, const char **pStr) {
    if (pStr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *pStr = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *pStr = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *pStr = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *pStr = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_NO_DEVICE: *pStr = "CUDA_ERROR_NO_DEVICE"; break;
    case CUDA_ERROR_INVALID_DEVICE: *pStr = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *pStr = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_NOT_FOUND: *pStr = "CUDA_ERROR_NOT_FOUND"; break;
    default: *pStr = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char **pStr) {
    return cuGetErrorName(error, pStr);
}

/* ---- simulated kernels (sim_device.h): modules, launches, streams, events, graphs */

#define MOD_MAGIC 0x4d4f4431u
#define STREAM_MAGIC 0x53545231u
#define EVENT_MAGIC 0x45565431u
#define GRAPH_MAGIC 0x47525031u
#define EXEC_MAGIC 0x45584531u

struct CUmod_st {
    unsigned magic;
};
struct CUfunc_st {
    unsigned magic;
};
struct CUstream_st {
    unsigned magic;
    int dev; /* profile index */
    struct CUgraph_st *capture; /* non-NULL while capturing */
};
struct CUevent_st {
    unsigned magic;
    int dev;
    int recorded;
    sim_ticket_t ticket;
};
struct CUgraph_st {
    unsigned magic;
    int dev;
    uint64_t ns;
};
struct CUgraphExec_st {
    unsigned magic;
    int dev;
    uint64_t ns;
};

static struct CUfunc_st sim_function = {MOD_MAGIC};

static CUresult sim_rc(int rc) {
    return rc == SIM_DEV_OK ? CUDA_SUCCESS : rc == SIM_DEV_BADDEV ? CUDA_ERROR_INVALID_DEVICE
                                                                 : CUDA_ERROR_NOT_INITIALIZED;
}

/* The profile device a stream runs on (the current context's for the NULL stream). */
static CUresult stream_dev(CUstream s, int *dev) {
    if (s != NULL) {
        if (s->magic != STREAM_MAGIC)
            return CUDA_ERROR_INVALID_HANDLE;
        *dev = s->dev;
        return CUDA_SUCCESS;
    }
    int d;
    CUresult rc = current_dev(&d);
    if (rc == CUDA_SUCCESS)
        *dev = phys(d);
    return rc;
}

static CUresult launch(CUfunction f, CUstream s, void **kernelParams) {
    NEED_INIT();
    if (f == NULL || f->magic != MOD_MAGIC || kernelParams == NULL || kernelParams[0] == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    int dev;
    CUresult rc = stream_dev(s, &dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    unsigned long long flops;
    memcpy(&flops, kernelParams[0], sizeof flops);
    if (s != NULL && s->capture != NULL) {
        s->capture->ns += sim_dev_cost_ns(SIM_VENDOR_NVIDIA, dev, flops);
        return CUDA_SUCCESS;
    }
    return sim_rc(sim_dev_launch(SIM_VENDOR_NVIDIA, dev, flops, NULL));
}

EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    NEED_INIT();
    if (module == NULL || image == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUmodule m = malloc(sizeof *m);
    if (m == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->magic = MOD_MAGIC;
    *module = m;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleUnload(CUmodule hmod) {
    if (hmod == NULL || hmod->magic != MOD_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    hmod->magic = 0;
    free(hmod);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    if (hfunc == NULL || name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (hmod == NULL || hmod->magic != MOD_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    *hfunc = &sim_function; /* every kernel name is the simulated flops kernel */
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                               unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                               unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
    (void)gridDimX, (void)gridDimY, (void)gridDimZ, (void)blockDimX, (void)blockDimY, (void)blockDimZ;
    (void)sharedMemBytes, (void)extra;
    return launch(f, hStream, kernelParams);
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                    unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                    unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                    void **kernelParams, void **extra) {
    return cuLaunchKernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes,
                          hStream, kernelParams, extra);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra) {
    (void)extra;
    if (config == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return launch(f, config->hStream, kernelParams);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                          unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                          unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                          void **kernelParams) {
    (void)gridDimX, (void)gridDimY, (void)gridDimZ, (void)blockDimX, (void)blockDimY, (void)blockDimZ;
    (void)sharedMemBytes;
    return launch(f, hStream, kernelParams);
}

EXPORT CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    (void)Flags;
    int d;
    CUresult rc = current_dev(&d);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phStream == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUstream s = calloc(1, sizeof *s);
    if (s == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->magic = STREAM_MAGIC;
    s->dev = phys(d);
    *phStream = s;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream hStream) {
    if (hStream == NULL || hStream->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    hStream->magic = 0;
    free(hStream->capture);
    free(hStream);
    return CUDA_SUCCESS;
}

/* One queue per context: a stream synchronises with all of the process's work on its device. */
EXPORT CUresult cuStreamSynchronize(CUstream hStream) {
    NEED_INIT();
    int dev;
    CUresult rc = stream_dev(hStream, &dev);
    return rc != CUDA_SUCCESS ? rc : sim_rc(sim_dev_sync(SIM_VENDOR_NVIDIA, dev));
}

EXPORT CUresult cuStreamBeginCapture_v2(CUstream hStream, int mode) {
    (void)mode;
    if (hStream == NULL || hStream->magic != STREAM_MAGIC || hStream->capture != NULL)
        return CUDA_ERROR_INVALID_VALUE; /* the legacy NULL stream cannot be captured */
    hStream->capture = calloc(1, sizeof *hStream->capture);
    if (hStream->capture == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    hStream->capture->magic = GRAPH_MAGIC;
    hStream->capture->dev = hStream->dev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph) {
    if (hStream == NULL || hStream->magic != STREAM_MAGIC || hStream->capture == NULL || phGraph == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *phGraph = hStream->capture;
    hStream->capture = NULL;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags) {
    (void)flags;
    if (phGraphExec == NULL || hGraph == NULL || hGraph->magic != GRAPH_MAGIC)
        return CUDA_ERROR_INVALID_VALUE;
    CUgraphExec e = malloc(sizeof *e);
    if (e == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->magic = EXEC_MAGIC;
    e->dev = hGraph->dev;
    e->ns = hGraph->ns;
    *phGraphExec = e;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    NEED_INIT();
    if (hGraphExec == NULL || hGraphExec->magic != EXEC_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    int dev;
    CUresult rc = stream_dev(hStream, &dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    return sim_rc(sim_dev_launch_ns(SIM_VENDOR_NVIDIA, hGraphExec->dev, hGraphExec->ns, NULL));
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec hGraphExec) {
    if (hGraphExec == NULL || hGraphExec->magic != EXEC_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    hGraphExec->magic = 0;
    free(hGraphExec);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph hGraph) {
    if (hGraph == NULL || hGraph->magic != GRAPH_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    hGraph->magic = 0;
    free(hGraph);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    (void)Flags;
    NEED_INIT();
    if (phEvent == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUevent e = calloc(1, sizeof *e);
    if (e == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->magic = EVENT_MAGIC;
    *phEvent = e;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
    NEED_INIT();
    if (hEvent == NULL || hEvent->magic != EVENT_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    int dev;
    CUresult rc = stream_dev(hStream, &dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = sim_rc(sim_dev_mark(SIM_VENDOR_NVIDIA, dev, &hEvent->ticket));
    if (rc == CUDA_SUCCESS) {
        hEvent->dev = dev;
        hEvent->recorded = 1;
    }
    return rc;
}

EXPORT CUresult cuEventQuery(CUevent hEvent) {
    if (hEvent == NULL || hEvent->magic != EVENT_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!hEvent->recorded)
        return CUDA_SUCCESS;
    int d = sim_dev_done(SIM_VENDOR_NVIDIA, hEvent->dev, hEvent->ticket);
    return d > 0 ? CUDA_SUCCESS : d == 0 ? CUDA_ERROR_NOT_READY : CUDA_ERROR_NOT_INITIALIZED;
}

EXPORT CUresult cuEventSynchronize(CUevent hEvent) {
    if (hEvent == NULL || hEvent->magic != EVENT_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!hEvent->recorded)
        return CUDA_SUCCESS;
    return sim_rc(sim_dev_wait(SIM_VENDOR_NVIDIA, hEvent->dev, hEvent->ticket));
}

/* The device time the context received between the two events (simulated: see driver/README.md). */
EXPORT CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    if (pMilliseconds == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (hStart == NULL || hEnd == NULL || hStart->magic != EVENT_MAGIC || hEnd->magic != EVENT_MAGIC ||
        !hStart->recorded || !hEnd->recorded || hStart->dev != hEnd->dev)
        return CUDA_ERROR_INVALID_HANDLE;
    if (cuEventQuery(hEnd) != CUDA_SUCCESS || cuEventQuery(hStart) != CUDA_SUCCESS)
        return CUDA_ERROR_NOT_READY;
    double ns = (double)hEnd->ticket - (double)hStart->ticket;
    *pMilliseconds = (float)(ns / 1e6);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent hEvent) {
    if (hEvent == NULL || hEvent->magic != EVENT_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    hEvent->magic = 0;
    free(hEvent);
    return CUDA_SUCCESS;
}

SIM_DEVICE_EXPORTS(cuda, SIM_VENDOR_NVIDIA, phys)

/* ---- cuGetProcAddress: base names (no _v2) resolved by requested version, like the real driver */

struct proc {
    const char *name;     /* base name as callers pass it */
    int min_version;      /* version from which this entry applies */
    int per_thread;       /* 1: only for CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */
    void *fn;
};

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *symbolStatus);

static const struct proc procs[] = {
    {"cuInit", 2000, 0, (void *)cuInit},
    {"cuDriverGetVersion", 2020, 0, (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", 2000, 0, (void *)cuDeviceGetCount},
    {"cuDeviceGet", 2000, 0, (void *)cuDeviceGet},
    {"cuDeviceGetName", 2000, 0, (void *)cuDeviceGetName},
    {"cuDeviceTotalMem", 3020, 0, (void *)cuDeviceTotalMem_v2},
    {"cuCtxCreate", 3020, 0, (void *)cuCtxCreate_v2},
    {"cuCtxDestroy", 4000, 0, (void *)cuCtxDestroy_v2},
    {"cuCtxSetCurrent", 4000, 0, (void *)cuCtxSetCurrent},
    {"cuCtxGetCurrent", 4000, 0, (void *)cuCtxGetCurrent},
    {"cuCtxGetDevice", 2000, 0, (void *)cuCtxGetDevice},
    {"cuCtxSynchronize", 2000, 0, (void *)cuCtxSynchronize},
    {"cuDevicePrimaryCtxRetain", 7000, 0, (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease", 11000, 0, (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuMemAlloc", 3020, 0, (void *)cuMemAlloc_v2},
    {"cuMemAllocPitch", 3020, 0, (void *)cuMemAllocPitch_v2},
    {"cuMemAllocManaged", 6000, 0, (void *)cuMemAllocManaged},
    {"cuMemAllocAsync", 11020, 1, (void *)cuMemAllocAsync_ptsz},
    {"cuMemAllocAsync", 11020, 0, (void *)cuMemAllocAsync},
    {"cuMemAllocFromPoolAsync", 11020, 1, (void *)cuMemAllocFromPoolAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, 0, (void *)cuMemAllocFromPoolAsync},
    {"cuMemFree", 3020, 0, (void *)cuMemFree_v2},
    {"cuMemFreeAsync", 11020, 1, (void *)cuMemFreeAsync_ptsz},
    {"cuMemFreeAsync", 11020, 0, (void *)cuMemFreeAsync},
    {"cuMemCreate", 10020, 0, (void *)cuMemCreate},
    {"cuMemRelease", 10020, 0, (void *)cuMemRelease},
    {"cuMemGetInfo", 3020, 0, (void *)cuMemGetInfo_v2},
    {"cuGetErrorName", 6000, 0, (void *)cuGetErrorName},
    {"cuGetErrorString", 6000, 0, (void *)cuGetErrorString},
    {"cuGetProcAddress", 12000, 0, (void *)cuGetProcAddress_v2},
    {"cuGetProcAddress", 11030, 0, (void *)cuGetProcAddress},
    {"cuLaunchKernel", 4000, 1, (void *)cuLaunchKernel_ptsz},
    {"cuLaunchKernel", 4000, 0, (void *)cuLaunchKernel},
    {"cuLaunchKernelEx", 11060, 0, (void *)cuLaunchKernelEx},
    {"cuLaunchCooperativeKernel", 9000, 0, (void *)cuLaunchCooperativeKernel},
    {"cuGraphLaunch", 10000, 0, (void *)cuGraphLaunch},
    {"cuStreamSynchronize", 2000, 0, (void *)cuStreamSynchronize},
    {"cuCtxSynchronize", 2000, 0, (void *)cuCtxSynchronize},
};

/* HCS_SIM_CUDA_INTERNAL_ENTRY_POINTS=1: hand out internal (non-exported) functions instead of the
 * exported symbols, as a real driver may; interposers must then match by name. */
static CUresult internal_alloc(CUdeviceptr *d, size_t n) { return alloc_dev(d, n); }
static CUresult internal_free(CUdeviceptr d) { return free_dev(d); }
static CUresult internal_alloc_async(CUdeviceptr *d, size_t n, CUstream s) { (void)s; return alloc_dev(d, n); }
static CUresult internal_free_async(CUdeviceptr d, CUstream s) { (void)s; return free_dev(d); }
static CUresult internal_getproc_v2(const char *symbol, void **pfn, int v, cuuint64_t f,
                                    CUdriverProcAddressQueryResult *st) {
    return cuGetProcAddress_v2(symbol, pfn, v, f, st);
}

static const struct proc internal_procs[] = {
    {"cuMemAlloc", 3020, 0, (void *)internal_alloc},
    {"cuMemFree", 3020, 0, (void *)internal_free},
    {"cuMemAllocAsync", 11020, 1, (void *)internal_alloc_async},
    {"cuMemAllocAsync", 11020, 0, (void *)internal_alloc_async},
    {"cuMemFreeAsync", 11020, 1, (void *)internal_free_async},
    {"cuMemFreeAsync", 11020, 0, (void *)internal_free_async},
    {"cuGetProcAddress", 12000, 0, (void *)internal_getproc_v2},
};

static CUresult lookup(const char *symbol, void **pfn, int version, cuuint64_t flags,
                       CUdriverProcAddressQueryResult *status) {
    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const char *internal = getenv("HCS_SIM_CUDA_INTERNAL_ENTRY_POINTS");
    if (internal != NULL && strcmp(internal, "1") == 0) {
        for (size_t i = 0; i < sizeof internal_procs / sizeof internal_procs[0]; i++) {
            if (strcmp(internal_procs[i].name, symbol) != 0 || version < internal_procs[i].min_version ||
                internal_procs[i].per_thread != per_thread)
                continue;
            *pfn = internal_procs[i].fn;
            if (status)
                *status = CU_GET_PROC_ADDRESS_SUCCESS;
            return CUDA_SUCCESS;
        }
    }
    int found_name = 0;
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].name, symbol) != 0)
            continue;
        found_name = 1;
        if (procs[i].per_thread && !per_thread)
            continue;
        if (version < procs[i].min_version)
            continue;
        *pfn = procs[i].fn;
        if (status)
            *status = CU_GET_PROC_ADDRESS_SUCCESS;
        return CUDA_SUCCESS;
    }
    *pfn = NULL;
    if (status)
        *status = found_name ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    return lookup(symbol, pfn, cudaVersion, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *symbolStatus) {
    return lookup(symbol, pfn, cudaVersion, flags, symbolStatus);
}
