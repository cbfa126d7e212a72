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
#include <sys/mman.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_faults.h"
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

/* Parse a visible-devices list (indices or UUIDs, ',' or whitespace separated, cut at the first
 * invalid entry) against profile p into out[]; the count. */
static int parse_visible(const char *text, const sim_profile_t *p, int count, int *out) {
    int n = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *tok = strtok_r(buf, ", \t\r\n", &save); tok != NULL && n < SIM_MAX_DEVICES;
         tok = strtok_r(NULL, ", \t\r\n", &save)) {
        char *end;
        long idx = strtol(tok, &end, 10);
        int found = -1;
        if (end != tok && *end == '\0')
            found = (idx >= 0 && idx < count) ? (int)idx : -1;
        else if (p != NULL)
            found = sim_vendor_find_uuid(p, SIM_VENDOR_NVIDIA, tok);
        if (found < 0)
            break;
        out[n++] = found;
    }
    return n;
}

/* HCS_SIM_VISIBLE_DEVICES_FILE: the visible devices read from a file (e.g. the pod's assignment
 * through the downward API) instead of CUDA_VISIBLE_DEVICES, and read again by the calls that name
 * devices (remap_if_moved): a process restored from a checkpoint keeps its old environment, but its
 * new container's file names the device it was restored onto. */
static const char *vis_file;
static char vis_text[1024];
static pthread_mutex_t remap_mu = PTHREAD_MUTEX_INITIALIZER;

static int read_vis_file(char *buf, size_t cap) {
    FILE *f = fopen(vis_file, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return 0;
}

static void load_visible(int count) {
    const char *env = getenv("CUDA_VISIBLE_DEVICES");
    vis_file = getenv("HCS_SIM_VISIBLE_DEVICES_FILE");
    if (vis_file != NULL && (*vis_file == '\0' || read_vis_file(vis_text, sizeof vis_text) != 0))
        vis_file = NULL; /* unreadable: CUDA_VISIBLE_DEVICES as usual */
    if (vis_file != NULL)
        env = vis_text;
    int n = 0;
    if (env == NULL) {
        for (int i = 0; i < count && i < SIM_MAX_DEVICES; i++)
            vis[n++] = i;
        vis_n = n;
        return;
    }
    const sim_profile_t *p = NULL;
    (void)sim_mem_profile(&p);
    vis_n = parse_visible(env, p, count, vis);
}

/* Restored onto other devices (the visible-devices file says so): re-read the node profile (the new
 * node's), re-map the ordinals to the devices the file names now and move what this process has
 * charged with them (sim_mem_remap). Ordinals stay what the application knows; what is behind them
 * changes, as a restore onto another GPU does. Cold calls only (device queries, memory info). */
static void remap_if_moved(void) {
    if (vis_file == NULL || !atomic_load_explicit(&initialized, memory_order_acquire))
        return;
    char text[sizeof vis_text];
    if (read_vis_file(text, sizeof text) != 0)
        return;
    pthread_mutex_lock(&remap_mu);
    if (strcmp(text, vis_text) == 0) {
        pthread_mutex_unlock(&remap_mu);
        return;
    }
    const char *path = getenv("HCS_SIM_PROFILE");
    char err[512];
    sim_profile_t *np = path != NULL ? sim_profile_parse_file(path, err, sizeof err) : NULL;
    int nvis[SIM_MAX_DEVICES];
    int n = np != NULL ? parse_visible(text, np, sim_vendor_count(np, SIM_VENDOR_NVIDIA), nvis) : 0;
    if (np == NULL || n == 0) {
        fprintf(stderr, "hcs-sim: %s changed to '%.64s' but names no device of %s; keeping the old devices\n",
                vis_file, text, path != NULL ? path : "(HCS_SIM_PROFILE unset)");
        if (np != NULL)
            sim_profile_free(np);
        snprintf(vis_text, sizeof vis_text, "%s", text); /* said once */
        pthread_mutex_unlock(&remap_mu);
        return;
    }
    int old_to_new[SIM_MAX_DEVICES];
    for (int k = 0; k < SIM_MAX_DEVICES; k++)
        old_to_new[k] = -1;
    for (int o = 0; o < n && o < vis_n; o++)
        old_to_new[vis[o]] = nvis[o];
    if (sim_mem_remap(SIM_VENDOR_NVIDIA, old_to_new, SIM_MAX_DEVICES, np) != SIM_MEM_OK) {
        fprintf(stderr, "hcs-sim: cannot re-map the devices again (at most %d moves per process)\n",
                SIM_REMAP_GENS - 1);
        sim_profile_free(np);
        snprintf(vis_text, sizeof vis_text, "%s", text);
        pthread_mutex_unlock(&remap_mu);
        return;
    }
    for (int o = 0; o < n; o++) {
        vis[o] = nvis[o];
        if (o >= vis_n) {
            primary[o].magic = CTX_MAGIC;
            primary[o].dev = o;
            primary[o].primary = 1;
        }
    }
    vis_n = n;
    snprintf(vis_text, sizeof vis_text, "%s", text);
    pthread_mutex_unlock(&remap_mu);
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
    remap_if_moved();
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = ndev();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    NEED_INIT();
    remap_if_moved();
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
    remap_if_moved();
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

static void pools_sync(void);

EXPORT CUresult cuCtxSynchronize(void) {
    int d;
    CUresult rc = current_dev(&d);
    if (rc != CUDA_SUCCESS)
        return rc;
    pools_sync(); /* pending stream-ordered frees complete */
    const sim_profile_t *p;
    if (sim_mem_profile(&p) == SIM_MEM_OK)
        sim_device_sync_delay(p, SIM_VENDOR_NVIDIA, d); /* scenario "sync_us"/"slow" (sub-health) */
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

/* ---- stream-ordered memory pools (cuMemAllocAsync & co.)
 *
 * A pool holds memory from the device (reserved) and hands it out (used). cuMemFreeAsync returns a
 * block to the pool when the stream gets there, which the simulation models as "at the next
 * synchronisation" (cuStreamSynchronize, cuCtxSynchronize): until then the bytes are pending and
 * still count as used. At synchronisation a pool keeps at most max(used, release threshold) bytes
 * and gives the rest back to the device; cuMemPoolTrimTo gives back unused bytes down to its
 * argument. A pool grows by exactly the shortfall of an allocation (real pools grow in chunks of
 * at least the VMM granularity; the interceptor settles from CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
 * so both are counted the same way). Each device has a default pool (release threshold 0), which is
 * the current pool until cuDeviceSetMemPool. A destroyed pool with outstanding allocations lives on
 * until they are freed and synchronised, as the real driver documents. */

#define POOL_MAGIC 0x504f4f4cu
#define STREAM_MAGIC 0x5354524du

struct CUmemPoolHandle_st {
    unsigned magic;
    int ordinal;
    uint64_t reserved, used, pending, threshold, reserved_high, used_high, outstanding;
    int destroyed;
    int is_default;
    struct CUmemPoolHandle_st *next;
};

/* Streams and events (the simulated device's queues, sim_device.h; stream-ordered frees complete when
 * a stream, the context or a recorded event is synchronised). */
#define EVENT_MAGIC 0x45565431u
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

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct CUmemPoolHandle_st *pool_list;
static struct CUmemPoolHandle_st *default_pool[SIM_MAX_DEVICES];
static struct CUmemPoolHandle_st *current_pool[SIM_MAX_DEVICES];

static struct CUmemPoolHandle_st *pool_new_locked(int ordinal) {
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->magic = POOL_MAGIC;
    p->ordinal = ordinal;
    p->next = pool_list;
    pool_list = p;
    return p;
}

static struct CUmemPoolHandle_st *default_pool_locked(int ordinal) {
    if (ordinal < 0 || ordinal >= SIM_MAX_DEVICES)
        return NULL;
    if (default_pool[ordinal] == NULL) {
        default_pool[ordinal] = pool_new_locked(ordinal);
        if (default_pool[ordinal] != NULL)
            default_pool[ordinal]->is_default = 1;
    }
    if (current_pool[ordinal] == NULL)
        current_pool[ordinal] = default_pool[ordinal];
    return current_pool[ordinal];
}

static int pool_valid(const struct CUmemPoolHandle_st *p) {
    return p != NULL && p->magic == POOL_MAGIC && !p->destroyed;
}

static void pool_unlink_free_locked(struct CUmemPoolHandle_st *p) {
    for (struct CUmemPoolHandle_st **pp = &pool_list; *pp != NULL; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->magic = 0;
    free(p);
}

/* give back what the pool holds beyond max(in use, keep) */
static void pool_release_locked(struct CUmemPoolHandle_st *p, uint64_t keep) {
    uint64_t busy = p->used + p->pending;
    uint64_t target = busy > keep ? busy : keep;
    if (p->reserved > target) {
        sim_mem_uncharge(SIM_VENDOR_NVIDIA, phys(p->ordinal), p->reserved - target);
        p->reserved = target;
    }
}

static void pool_after_sync_locked(struct CUmemPoolHandle_st *p) {
    if (p->destroyed) {
        if (p->outstanding == 0 && p->pending == 0) {
            sim_mem_uncharge(SIM_VENDOR_NVIDIA, phys(p->ordinal), p->reserved);
            pool_unlink_free_locked(p);
        }
        return;
    }
    if (p->reserved > p->threshold)
        pool_release_locked(p, p->threshold);
}

static void pools_sync(void) {
    pthread_mutex_lock(&pool_mu);
    for (struct CUmemPoolHandle_st *p = pool_list, *n; p != NULL; p = n) {
        n = p->next;
        p->pending = 0;
        pool_after_sync_locked(p);
    }
    pthread_mutex_unlock(&pool_mu);
}

static CUresult pool_alloc(struct CUmemPoolHandle_st *p, CUdeviceptr *dptr, size_t size) {
    if (dptr == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (!pool_valid(p))
        goto out;
    uint64_t avail = p->reserved - p->used - p->pending;
    uint64_t grow = size > avail ? size - avail : 0;
    if (grow > 0) {
        rc = map_rc(sim_mem_charge(SIM_VENDOR_NVIDIA, phys(p->ordinal), grow));
        if (rc != CUDA_SUCCESS)
            goto out;
    }
    void *m = NULL;
    rc = map_rc(sim_mem_alloc_owned(SIM_VENDOR_NVIDIA, phys(p->ordinal), size, 0, p, &m));
    if (rc != CUDA_SUCCESS) {
        if (grow > 0)
            sim_mem_uncharge(SIM_VENDOR_NVIDIA, phys(p->ordinal), grow);
        goto out;
    }
    p->reserved += grow;
    p->used += size;
    p->outstanding++;
    if (p->reserved > p->reserved_high)
        p->reserved_high = p->reserved;
    if (p->used + p->pending > p->used_high)
        p->used_high = p->used + p->pending;
    *dptr = (CUdeviceptr)(uintptr_t)m;
out:
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

/* a block of pool p: async = pending until the next synchronisation; sync = returned now */
static CUresult pool_free(struct CUmemPoolHandle_st *p, void *m, int async) {
    pthread_mutex_lock(&pool_mu);
    size_t size = sim_mem_size(m);
    (void)sim_mem_free(m);
    p->used -= size;
    p->outstanding--;
    if (async) {
        p->pending += size;
    } else {
        pool_after_sync_locked(p);
    }
    pthread_mutex_unlock(&pool_mu);
    return CUDA_SUCCESS;
}

static CUresult current_pool_of(int ordinal, struct CUmemPoolHandle_st **out) {
    pthread_mutex_lock(&pool_mu);
    *out = default_pool_locked(ordinal);
    pthread_mutex_unlock(&pool_mu);
    return *out != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    (void)hStream;
    int dev;
    CUresult rc = current_dev(&dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct CUmemPoolHandle_st *p;
    rc = current_pool_of(dev, &p);
    return rc != CUDA_SUCCESS ? rc : pool_alloc(p, dptr, bytesize);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async(dptr, bytesize, hStream);
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async(dptr, bytesize, hStream);
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                        CUstream hStream) {
    (void)hStream;
    NEED_INIT();
    return pool_alloc(pool, dptr, bytesize);
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                             CUstream hStream) {
    return cuMemAllocFromPoolAsync(dptr, bytesize, pool, hStream);
}

EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    NEED_INIT();
    if (pool == NULL || props == NULL || props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        props->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (props->location.id < 0 || props->location.id >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&pool_mu);
    struct CUmemPoolHandle_st *p = pool_new_locked(props->location.id);
    pthread_mutex_unlock(&pool_mu);
    if (p == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *pool = p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    NEED_INIT();
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool_valid(pool) && !pool->is_default) {
        pool->destroyed = 1;
        if (current_pool[pool->ordinal] == pool)
            current_pool[pool->ordinal] = default_pool[pool->ordinal];
        pool_after_sync_locked(pool); /* freed now when nothing is outstanding */
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
    NEED_INIT();
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool_valid(pool)) {
        pool_release_locked(pool, minBytesToKeep);
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    NEED_INIT();
    if (value == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool_valid(pool)) {
        rc = CUDA_SUCCESS;
        switch (attr) {
        case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: break;
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: pool->threshold = *(const cuuint64_t *)value; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: /* only resetting to 0 is allowed */
            if (*(const cuuint64_t *)value != 0)
                rc = CUDA_ERROR_INVALID_VALUE;
            else
                pool->reserved_high = pool->reserved;
            break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
            if (*(const cuuint64_t *)value != 0)
                rc = CUDA_ERROR_INVALID_VALUE;
            else
                pool->used_high = pool->used + pool->pending;
            break;
        default: rc = CUDA_ERROR_INVALID_VALUE;
        }
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    NEED_INIT();
    if (value == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool_valid(pool)) {
        rc = CUDA_SUCCESS;
        cuuint64_t *v = value;
        switch (attr) {
        case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *(int *)value = 1; break;
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *v = pool->threshold; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *v = pool->reserved; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *v = pool->reserved_high; break;
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *v = pool->used + pool->pending; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *v = pool->used_high; break;
        default: rc = CUDA_ERROR_INVALID_VALUE;
        }
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev) {
    NEED_INIT();
    if (pool_out == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&pool_mu);
    (void)default_pool_locked(dev);
    *pool_out = default_pool[dev];
    pthread_mutex_unlock(&pool_mu);
    return *pool_out != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
    NEED_INIT();
    if (pool == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    return current_pool_of(dev, pool);
}

EXPORT CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
    NEED_INIT();
    if (dev < 0 || dev >= ndev())
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&pool_mu);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool_valid(pool) && pool->ordinal == dev) {
        (void)default_pool_locked(dev);
        current_pool[dev] = pool;
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
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


static CUresult free_dev(CUdeviceptr dptr, int async) {
    NEED_INIT();
    if (dptr == 0)
        return CUDA_SUCCESS;
    void *m = (void *)(uintptr_t)dptr;
    struct CUmemPoolHandle_st *owner = sim_mem_owner(m);
    if (owner != NULL)
        return pool_free(owner, m, async);
    return map_rc(sim_mem_free(m));
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    return free_dev(dptr, 0);
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    (void)hStream;
    return free_dev(dptr, 1);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
    (void)hStream;
    return free_dev(dptr, 1);
}

/* ---- v1 (32-bit) allocation entry points: the pointer must fit 32 bits */

#define V1_MAX 4096
static pthread_mutex_t v1_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    CUdeviceptr_v1 ptr;
    unsigned int size;
    int dev;
    int gen; /* sim_mem_generation() when charged */
} v1_tab[V1_MAX];

EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize) {
    int dev;
    CUresult rc = current_dev(&dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dptr == NULL || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
#ifdef MAP_32BIT
    rc = map_rc(sim_mem_charge(SIM_VENDOR_NVIDIA, phys(dev), bytesize));
    if (rc != CUDA_SUCCESS)
        return rc;
    void *m = mmap(NULL, bytesize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_32BIT,
                   -1, 0);
    pthread_mutex_lock(&v1_mu);
    int slot = -1;
    for (int i = 0; i < V1_MAX && slot < 0; i++)
        if (v1_tab[i].ptr == 0)
            slot = i;
    if (m == MAP_FAILED || (uintptr_t)m > UINT32_MAX || slot < 0) {
        pthread_mutex_unlock(&v1_mu);
        if (m != MAP_FAILED)
            munmap(m, bytesize);
        sim_mem_uncharge(SIM_VENDOR_NVIDIA, phys(dev), bytesize);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    v1_tab[slot].ptr = (CUdeviceptr_v1)(uintptr_t)m;
    v1_tab[slot].size = bytesize;
    v1_tab[slot].dev = phys(dev);
    v1_tab[slot].gen = sim_mem_generation();
    pthread_mutex_unlock(&v1_mu);
    *dptr = (CUdeviceptr_v1)(uintptr_t)m;
    return CUDA_SUCCESS;
#else
    return CUDA_ERROR_OUT_OF_MEMORY; /* no 32-bit mappings on this architecture */
#endif
}

EXPORT CUresult cuMemFree(CUdeviceptr_v1 dptr) {
    NEED_INIT();
    if (dptr == 0)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&v1_mu);
    for (int i = 0; i < V1_MAX; i++) {
        if (v1_tab[i].ptr != dptr)
            continue;
        munmap((void *)(uintptr_t)dptr, v1_tab[i].size);
        sim_mem_uncharge(SIM_VENDOR_NVIDIA, sim_mem_current_dev(SIM_VENDOR_NVIDIA, v1_tab[i].gen, v1_tab[i].dev),
                         v1_tab[i].size);
        v1_tab[i].ptr = 0;
        pthread_mutex_unlock(&v1_mu);
        return CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&v1_mu);
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---- virtual memory management: granularity 2 MiB; see sim_mem.h for the semantics */

static CUresult vmm_rc(int rc) {
    return rc == SIM_MEM_BADVAL ? CUDA_ERROR_INVALID_VALUE : map_rc(rc);
}

EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                              CUmemAllocationGranularity_flags option) {
    NEED_INIT();
    if (granularity == NULL || prop == NULL ||
        (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = SIM_VMM_GRANULE;
    return CUDA_SUCCESS;
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
    void *h = NULL;
    CUresult rc = vmm_rc(sim_vmm_create(SIM_VENDOR_NVIDIA, counted ? phys(dev) : 0, size, counted, &h));
    if (rc == CUDA_SUCCESS)
        *handle = (CUmemGenericAllocationHandle)(uintptr_t)h;
    return rc;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    NEED_INIT();
    return vmm_rc(sim_vmm_release((void *)(uintptr_t)handle));
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                    unsigned long long flags) {
    (void)addr; /* a hint only */
    NEED_INIT();
    if (ptr == NULL || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    void *va = NULL;
    CUresult rc = vmm_rc(sim_vmm_reserve(size, alignment, &va));
    if (rc == CUDA_SUCCESS)
        *ptr = (CUdeviceptr)(uintptr_t)va;
    return rc;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    NEED_INIT();
    return vmm_rc(sim_vmm_free_va((void *)(uintptr_t)ptr, size == 0 ? 1 : size));
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                         unsigned long long flags) {
    NEED_INIT();
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    return vmm_rc(sim_vmm_map((void *)(uintptr_t)ptr, size, offset, (void *)(uintptr_t)handle));
}

EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    NEED_INIT();
    if (size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return vmm_rc(sim_vmm_unmap((void *)(uintptr_t)ptr, size));
}

EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
    NEED_INIT();
    if (desc == NULL || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++)
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
            desc[i].location.id >= ndev())
            return CUDA_ERROR_INVALID_DEVICE;
    return vmm_rc(sim_vmm_check_mapped((void *)(uintptr_t)ptr, size));
}

EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
    NEED_INIT();
    void *h = NULL;
    if (handle == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = vmm_rc(sim_vmm_retain(addr, &h));
    if (rc == CUDA_SUCCESS)
        *handle = (CUmemGenericAllocationHandle)(uintptr_t)h;
    return rc;
}

/* ---- CUDA arrays: rows padded to 512 bytes (texture layout); arrays made with
 * CUDA_ARRAY3D_DEFERRED_MAPPING hold no memory until bound (not simulated: refused). */

#define ARRAY_MAGIC 0x41525259u
#define CUDA_ARRAY3D_DEFERRED_MAPPING 0x80

struct CUarray_st {
    unsigned magic;
    void *mem;
};

struct CUmipmappedArray_st {
    unsigned magic;
    void *mem;
};

static size_t format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

/* bytes of one level: rows of width*texel padded to 512 bytes; 0 = invalid; SIZE_MAX = overflow */
static size_t level_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch) {
    size_t t = format_bytes(f);
    if (t == 0 || w == 0 || (ch != 1 && ch != 2 && ch != 4))
        return 0;
    if (w > (SIZE_MAX - 511) / (t * ch))
        return SIZE_MAX;
    size_t row = (w * t * ch + 511) & ~(size_t)511;
    size_t rows = h ? h : 1, depth = d ? d : 1;
    if (rows > SIZE_MAX / row || depth > SIZE_MAX / (row * rows))
        return SIZE_MAX;
    return row * rows * depth;
}

static CUresult array_alloc(size_t bytes, void **mem) {
    int dev;
    CUresult rc = current_dev(&dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (bytes == SIZE_MAX)
        return CUDA_ERROR_OUT_OF_MEMORY;
    return map_rc(sim_mem_alloc(SIM_VENDOR_NVIDIA, phys(dev), bytes, 1, mem));
}

static CUresult array_new(CUarray *out, size_t bytes) {
    if (out == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUarray_st *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = array_alloc(bytes, &a->mem);
    if (rc != CUDA_SUCCESS) {
        free(a);
        return rc;
    }
    a->magic = ARRAY_MAGIC;
    *out = a;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *d) {
    NEED_INIT();
    if (d == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return array_new(pHandle, level_bytes(d->Width, d->Height, 0, d->Format, d->NumChannels));
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    NEED_INIT();
    if (d == NULL || (d->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING))
        return CUDA_ERROR_INVALID_VALUE;
    return array_new(pHandle, level_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels));
}

EXPORT CUresult cuArrayDestroy(CUarray hArray) {
    NEED_INIT();
    if (hArray == NULL || hArray->magic != ARRAY_MAGIC)
        return CUDA_ERROR_INVALID_VALUE;
    hArray->magic = 0;
    (void)sim_mem_free(hArray->mem);
    free(hArray);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                       unsigned int numMipmapLevels) {
    NEED_INIT();
    if (pHandle == NULL || d == NULL || numMipmapLevels == 0 || numMipmapLevels > 32 ||
        (d->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING))
        return CUDA_ERROR_INVALID_VALUE;
    size_t total = 0;
    for (unsigned l = 0; l < numMipmapLevels; l++) {
        size_t w = d->Width >> l, h = d->Height >> l, z = d->Depth >> l;
        size_t b = level_bytes(w ? w : 1, d->Height ? (h ? h : 1) : 0, d->Depth ? (z ? z : 1) : 0, d->Format,
                               d->NumChannels);
        if (b == 0)
            return CUDA_ERROR_INVALID_VALUE;
        total = (b == SIZE_MAX || total > SIZE_MAX - b - 1) ? SIZE_MAX : total + b;
    }
    struct CUmipmappedArray_st *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = array_alloc(total, &a->mem);
    if (rc != CUDA_SUCCESS) {
        free(a);
        return rc;
    }
    a->magic = ARRAY_MAGIC;
    *pHandle = a;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) {
    NEED_INIT();
    if (h == NULL || h->magic != ARRAY_MAGIC)
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
    remap_if_moved();
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
#define GRAPH_MAGIC 0x47525031u
#define EXEC_MAGIC 0x45584531u

struct CUmod_st {
    unsigned magic;
};
struct CUfunc_st {
    unsigned magic;
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
    if (rc != CUDA_SUCCESS)
        return rc;
    pools_sync(); /* pending stream-ordered frees complete */
    return sim_rc(sim_dev_sync(SIM_VENDOR_NVIDIA, dev));
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
    CUresult rc = sim_rc(sim_dev_wait(SIM_VENDOR_NVIDIA, hEvent->dev, hEvent->ticket));
    if (rc == CUDA_SUCCESS)
        pools_sync(); /* work before the event is done: stream-ordered frees before it complete */
    return rc;
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
    {"cuMemAlloc", 2000, 0, (void *)cuMemAlloc},
    {"cuMemAllocPitch", 3020, 0, (void *)cuMemAllocPitch_v2},
    {"cuMemAllocManaged", 6000, 0, (void *)cuMemAllocManaged},
    {"cuMemAllocAsync", 11020, 1, (void *)cuMemAllocAsync_ptsz},
    {"cuMemAllocAsync", 11020, 0, (void *)cuMemAllocAsync},
    {"cuMemAllocFromPoolAsync", 11020, 1, (void *)cuMemAllocFromPoolAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, 0, (void *)cuMemAllocFromPoolAsync},
    {"cuMemFree", 3020, 0, (void *)cuMemFree_v2},
    {"cuMemFree", 2000, 0, (void *)cuMemFree},
    {"cuMemFreeAsync", 11020, 1, (void *)cuMemFreeAsync_ptsz},
    {"cuMemFreeAsync", 11020, 0, (void *)cuMemFreeAsync},
    {"cuMemCreate", 10020, 0, (void *)cuMemCreate},
    {"cuMemRelease", 10020, 0, (void *)cuMemRelease},
    {"cuMemGetAllocationGranularity", 10020, 0, (void *)cuMemGetAllocationGranularity},
    {"cuMemAddressReserve", 10020, 0, (void *)cuMemAddressReserve},
    {"cuMemAddressFree", 10020, 0, (void *)cuMemAddressFree},
    {"cuMemMap", 10020, 0, (void *)cuMemMap},
    {"cuMemUnmap", 10020, 0, (void *)cuMemUnmap},
    {"cuMemSetAccess", 10020, 0, (void *)cuMemSetAccess},
    {"cuMemRetainAllocationHandle", 11000, 0, (void *)cuMemRetainAllocationHandle},
    {"cuStreamCreate", 2000, 0, (void *)cuStreamCreate},
    {"cuStreamDestroy", 4000, 0, (void *)cuStreamDestroy_v2},
    {"cuStreamSynchronize", 2000, 0, (void *)cuStreamSynchronize},
    {"cuEventCreate", 2000, 0, (void *)cuEventCreate},
    {"cuEventRecord", 2000, 0, (void *)cuEventRecord},
    {"cuEventSynchronize", 2000, 0, (void *)cuEventSynchronize},
    {"cuEventDestroy", 4000, 0, (void *)cuEventDestroy_v2},
    {"cuMemPoolCreate", 11020, 0, (void *)cuMemPoolCreate},
    {"cuMemPoolDestroy", 11020, 0, (void *)cuMemPoolDestroy},
    {"cuMemPoolTrimTo", 11020, 0, (void *)cuMemPoolTrimTo},
    {"cuMemPoolSetAttribute", 11020, 0, (void *)cuMemPoolSetAttribute},
    {"cuMemPoolGetAttribute", 11020, 0, (void *)cuMemPoolGetAttribute},
    {"cuDeviceGetDefaultMemPool", 11020, 0, (void *)cuDeviceGetDefaultMemPool},
    {"cuDeviceGetMemPool", 11020, 0, (void *)cuDeviceGetMemPool},
    {"cuDeviceSetMemPool", 11020, 0, (void *)cuDeviceSetMemPool},
    {"cuArrayCreate", 3020, 0, (void *)cuArrayCreate_v2},
    {"cuArray3DCreate", 3020, 0, (void *)cuArray3DCreate_v2},
    {"cuArrayDestroy", 2000, 0, (void *)cuArrayDestroy},
    {"cuMipmappedArrayCreate", 5000, 0, (void *)cuMipmappedArrayCreate},
    {"cuMipmappedArrayDestroy", 5000, 0, (void *)cuMipmappedArrayDestroy},
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
static CUresult internal_free(CUdeviceptr d) { return free_dev(d, 0); }
static CUresult internal_alloc_async(CUdeviceptr *d, size_t n, CUstream s) { return alloc_async(d, n, s); }
static CUresult internal_free_async(CUdeviceptr d, CUstream s) { (void)s; return free_dev(d, 1); }
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
