/*
 * hooks_extra.c - the allocation APIs beyond plain malloc/free pairs (issue 22). Included by
 * hcs_interceptor.c (same translation unit: state(), admit(), track(), REAL() ... are its own).
 *
 *  - Virtual memory management (CUDA cuMemCreate/cuMemMap/cuMemUnmap/cuMemRelease/
 *    cuMemRetainAllocationHandle, HIP hipMemCreate & co., ACL aclrtMallocPhysical & co.): what is
 *    charged is the physical handle (device location only), at creation; address reservations are
 *    address space and charged nothing. The drivers free a handle's memory when it has been released
 *    AND every mapping of it is unmapped, so the charge is kept per handle with a reference count
 *    (creation + retains + one per mapping): cuMemCreate, cuMemMap, cuMemRelease leaves the memory
 *    mapped and still charged until cuMemUnmap.
 *  - Stream-ordered pools (cuMemAllocAsync, cuMemAllocFromPoolAsync, cuMemPoolCreate/Destroy/TrimTo):
 *    a pool is charged what it holds from the device (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), not
 *    what the application has asked for: memory a pool keeps cached after cuMemFreeAsync stays
 *    charged until the driver gives it back (release threshold at synchronisation, cuMemPoolTrimTo,
 *    cuMemPoolDestroy), which is re-read after every synchronisation, trim and query. An allocation
 *    is admitted for the part the pool's free bytes cannot serve; what the pool really took is
 *    settled afterwards (real pools grow in chunks): beyond the quota, the block is freed, the stream
 *    synchronised, the pool trimmed and the allocation refused.
 *  - Arrays and mipmapped arrays: charged their texel bytes with rows padded to 512 bytes (the layout
 *    is the driver's; no API reports it for ordinary arrays).
 *  - v1 cuMemAlloc/cuMemFree (32-bit), hipExtMallocWithFlags, aclrtMallocAlign32 (size rounded up to
 *    32 bytes, as the runtime does), cnrtMallocConstant: like their plain counterparts.
 */

/* ptrmap kinds private to this file (hcs_kind in ptrmap.h has 1..5) */
#define KIND_CUDA_V1 16u
#define KIND_CUDA_ARRAY 17u
#define KIND_CUDA_MIPMAP 18u
#define KIND_POOL_PTR 19u
#define KIND_VMM_HANDLE(v) (32u + (unsigned)(v)) /* key handle, size, dev | refs << 6 */
#define KIND_VMM_MAP(v) (40u + (unsigned)(v))    /* key va, size = mapping size */
#define KIND_VMM_MAPH(v) (48u + (unsigned)(v))   /* key va, size = handle */

enum vmm_vendor { VMM_CUDA = 0, VMM_HIP = 1, VMM_ACL = 2 };

/* ------------------------------------------------------------------ VMM handles and mappings */

static pthread_mutex_t vmm_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hcs_ptrmap vmm_map; /* zero-initialised == hcs_ptrmap_init */

static void vmm_created(struct hcs_state *s, enum vmm_vendor v, uint64_t handle, uint64_t size, int dev) {
    pthread_mutex_lock(&vmm_mu);
    struct hcs_ptr_entry old;
    enum hcs_put_result r =
        hcs_ptrmap_put(&vmm_map, handle, KIND_VMM_HANDLE(v), size, (uint32_t)dev | (1u << 6), &old);
    if (r == HCS_PUT_REPLACED) /* the driver reused a handle whose release we never saw */
        unreserve(s, (int)(old.dev & 63u), old.size);
    pthread_mutex_unlock(&vmm_mu);
    if (r == HCS_PUT_NOMEM)
        hcs_log(1, "out of host memory tracking a physical allocation; its quota share is kept until exit");
}

/* add delta to a handle's references; at zero its memory is gone and the charge comes back.
 * Caller holds vmm_mu. */
static void vmm_ref_locked(struct hcs_state *s, enum vmm_vendor v, uint64_t handle, int delta) {
    uint64_t size;
    uint32_t word;
    if (!hcs_ptrmap_take(&vmm_map, handle, KIND_VMM_HANDLE(v), &size, &word))
        return; /* not charged (host location, not enforcing, or before the quota) */
    int dev = (int)(word & 63u);
    int64_t refs = (int64_t)(word >> 6) + delta;
    if (refs <= 0) {
        unreserve(s, dev, size);
        return;
    }
    (void)hcs_ptrmap_put(&vmm_map, handle, KIND_VMM_HANDLE(v), size, (uint32_t)dev | ((uint32_t)refs << 6), NULL);
}

static void vmm_ref(struct hcs_state *s, enum vmm_vendor v, uint64_t handle, int delta) {
    if (!s->enforcing)
        return;
    pthread_mutex_lock(&vmm_mu);
    vmm_ref_locked(s, v, handle, delta);
    pthread_mutex_unlock(&vmm_mu);
}

/* A release or unmap runs the driver's call under vmm_mu: the driver may hand the same handle value
 * to another thread's create the moment it is freed, and that create's bookkeeping must come after
 * this one's (vmm_created takes vmm_mu too). ok(rc) says whether the call succeeded. */
#define VMM_LOCKED_CALL(s, call, ok_expr, after)                                                         \
    do {                                                                                                 \
        bool locked_ = !in_hook && (s)->enforcing;                                                       \
        if (locked_)                                                                                     \
            pthread_mutex_lock(&vmm_mu);                                                                 \
        rc = (call);                                                                                     \
        if (locked_ && (ok_expr))                                                                        \
            after;                                                                                       \
        if (locked_)                                                                                     \
            pthread_mutex_unlock(&vmm_mu);                                                               \
    } while (0)

static void vmm_mapped(struct hcs_state *s, enum vmm_vendor v, uint64_t va, uint64_t size, uint64_t handle) {
    if (!s->enforcing)
        return;
    pthread_mutex_lock(&vmm_mu);
    uint64_t hsize;
    uint32_t word;
    if (hcs_ptrmap_take(&vmm_map, handle, KIND_VMM_HANDLE(v), &hsize, &word)) {
        (void)hcs_ptrmap_put(&vmm_map, handle, KIND_VMM_HANDLE(v), hsize, word + (1u << 6), NULL);
        (void)hcs_ptrmap_put(&vmm_map, va, KIND_VMM_MAP(v), size, 0, NULL);
        (void)hcs_ptrmap_put(&vmm_map, va, KIND_VMM_MAPH(v), handle, 0, NULL);
    }
    pthread_mutex_unlock(&vmm_mu);
}

/* after a successful unmap of [va, va + size) (size 0: the one mapping at va): drop the mapping
 * references of every mapping that started in the range */
static void vmm_unmapped_locked(struct hcs_state *s, enum vmm_vendor v, uint64_t va, uint64_t size) {
    uint64_t cur = va;
    for (int first = 1; first || cur < va + size; first = 0) {
        uint64_t msize, handle;
        uint32_t unused;
        if (!hcs_ptrmap_take(&vmm_map, cur, KIND_VMM_MAP(v), &msize, &unused))
            break; /* a mapping of an uncharged handle, or a gap */
        if (hcs_ptrmap_take(&vmm_map, cur, KIND_VMM_MAPH(v), &handle, &unused))
            vmm_ref_locked(s, v, handle, -1);
        if (size == 0 || msize == 0)
            break;
        cur += msize;
    }
}

/* admission for a physical allocation of size bytes on dev; returns 0 to go on, or the vendor OOM */
static int vmm_admit(struct hcs_state *s, int dev, uint64_t size, int oom, const char *api, enum admit_result *a) {
    *a = ADMIT_PASS;
    if (s->fail_closed)
        return oom;
    if (!s->enforcing || dev < 0)
        return 0;
    if (dev == DEV_FOREIGN)
        return oom;
    *a = admit(s, dev, size, api);
    if (*a == ADMIT_DENY && pools_gave_back(s))
        *a = admit(s, dev, size, api);
    return *a == ADMIT_DENY ? oom : 0;
}

static void vmm_create_end(struct hcs_state *s, enum vmm_vendor v, enum admit_result a, bool ok, uint64_t handle,
                           uint64_t size, int dev) {
    if (a != ADMIT_OK)
        return;
    if (ok)
        vmm_created(s, v, handle, size, dev);
    else
        unreserve(s, dev, size);
}

/* ---- CUDA VMM */

HCS_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                                unsigned long long flags) {
    CU_REAL_OR_FAIL(cuMemCreate);
    struct hcs_state *s = state();
    /* Only device-located physical memory counts: host / host-NUMA locations are host RAM (and
     * their location.id is not a device ordinal; HAMi-core #187). */
    if (in_hook || (!s->enforcing && !s->fail_closed) || prop == NULL ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return real(handle, size, prop, flags);
    int dev = cuda_canon(prop->location.id);
    enum admit_result a;
    int deny = vmm_admit(s, dev, size, CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate", &a);
    if (deny)
        return deny;
    in_hook++;
    CUresult rc = real(handle, size, prop, flags);
    in_hook--;
    vmm_create_end(s, VMM_CUDA, a, rc == CUDA_SUCCESS, rc == CUDA_SUCCESS ? (uint64_t)*handle : 0, size, dev);
    return rc;
}

HCS_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    CU_REAL_OR_FAIL(cuMemRelease);
    struct hcs_state *s = state();
    CUresult rc;
    VMM_LOCKED_CALL(s, real(handle), rc == CUDA_SUCCESS, vmm_ref_locked(s, VMM_CUDA, (uint64_t)handle, -1));
    return rc;
}

HCS_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                             unsigned long long flags) {
    CU_REAL_OR_FAIL(cuMemMap);
    CUresult rc = real(ptr, size, offset, handle, flags);
    if (rc == CUDA_SUCCESS && !in_hook)
        vmm_mapped(state(), VMM_CUDA, (uint64_t)ptr, size, (uint64_t)handle);
    return rc;
}

HCS_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    CU_REAL_OR_FAIL(cuMemUnmap);
    struct hcs_state *s = state();
    CUresult rc;
    VMM_LOCKED_CALL(s, real(ptr, size), rc == CUDA_SUCCESS, vmm_unmapped_locked(s, VMM_CUDA, (uint64_t)ptr, size));
    return rc;
}

HCS_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
    CU_REAL_OR_FAIL(cuMemRetainAllocationHandle);
    CUresult rc = real(handle, addr);
    if (rc == CUDA_SUCCESS && handle != NULL && !in_hook)
        vmm_ref(state(), VMM_CUDA, (uint64_t)*handle, +1);
    return rc;
}

/* ---- HIP VMM */

HCS_EXPORT hipError_t hipMemCreate(hipMemGenericAllocationHandle_t *handle, size_t size,
                                   const hipMemAllocationProp *prop, unsigned long long flags) {
    __typeof__(&hipMemCreate) real = REAL(hipMemCreate);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed) || prop == NULL ||
        prop->location.type != hipMemLocationTypeDevice)
        return real(handle, size, prop, flags);
    int dev = prop->location.id;
    enum admit_result a;
    int deny = vmm_admit(s, dev, size, hipErrorOutOfMemory, "hipMemCreate", &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(handle, size, prop, flags);
    in_hook--;
    vmm_create_end(s, VMM_HIP, a, rc == hipSuccess, rc == hipSuccess ? (uint64_t)(uintptr_t)*handle : 0, size, dev);
    return rc;
}

HCS_EXPORT hipError_t hipMemRelease(hipMemGenericAllocationHandle_t handle) {
    __typeof__(&hipMemRelease) real = REAL(hipMemRelease);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    hipError_t rc;
    VMM_LOCKED_CALL(s, real(handle), rc == hipSuccess, vmm_ref_locked(s, VMM_HIP, (uint64_t)(uintptr_t)handle, -1));
    return rc;
}

HCS_EXPORT hipError_t hipMemMap(void *ptr, size_t size, size_t offset, hipMemGenericAllocationHandle_t handle,
                                unsigned long long flags) {
    __typeof__(&hipMemMap) real = REAL(hipMemMap);
    if (real == NULL)
        return hipErrorNotInitialized;
    hipError_t rc = real(ptr, size, offset, handle, flags);
    if (rc == hipSuccess && !in_hook)
        vmm_mapped(state(), VMM_HIP, (uint64_t)(uintptr_t)ptr, size, (uint64_t)(uintptr_t)handle);
    return rc;
}

HCS_EXPORT hipError_t hipMemUnmap(void *ptr, size_t size) {
    __typeof__(&hipMemUnmap) real = REAL(hipMemUnmap);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    hipError_t rc;
    VMM_LOCKED_CALL(s, real(ptr, size), rc == hipSuccess,
                    vmm_unmapped_locked(s, VMM_HIP, (uint64_t)(uintptr_t)ptr, size));
    return rc;
}

/* ---- ACL VMM */

HCS_EXPORT aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop,
                                        uint64_t flags) {
    __typeof__(&aclrtMallocPhysical) real = REAL(aclrtMallocPhysical);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed) || prop == NULL ||
        prop->location.type != ACL_MEM_LOCATION_TYPE_DEVICE)
        return real(handle, size, prop, flags);
    int dev = prop->location.id < HCS_MAX_DEVICES ? (int)prop->location.id : DEV_FOREIGN;
    enum admit_result a;
    int deny = vmm_admit(s, dev, size, ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocPhysical", &a);
    if (deny)
        return deny;
    in_hook++;
    aclError rc = real(handle, size, prop, flags);
    in_hook--;
    vmm_create_end(s, VMM_ACL, a, rc == ACL_SUCCESS, rc == ACL_SUCCESS ? (uint64_t)(uintptr_t)*handle : 0, size,
                   dev);
    return rc;
}

HCS_EXPORT aclError aclrtFreePhysical(aclrtDrvMemHandle handle) {
    __typeof__(&aclrtFreePhysical) real = REAL(aclrtFreePhysical);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    struct hcs_state *s = state();
    aclError rc;
    VMM_LOCKED_CALL(s, real(handle), rc == ACL_SUCCESS, vmm_ref_locked(s, VMM_ACL, (uint64_t)(uintptr_t)handle, -1));
    return rc;
}

HCS_EXPORT aclError aclrtMapMem(void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle, uint64_t flags) {
    __typeof__(&aclrtMapMem) real = REAL(aclrtMapMem);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    aclError rc = real(virPtr, size, offset, handle, flags);
    if (rc == ACL_SUCCESS && !in_hook)
        vmm_mapped(state(), VMM_ACL, (uint64_t)(uintptr_t)virPtr, size, (uint64_t)(uintptr_t)handle);
    return rc;
}

HCS_EXPORT aclError aclrtUnmapMem(void *virPtr) {
    __typeof__(&aclrtUnmapMem) real = REAL(aclrtUnmapMem);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    struct hcs_state *s = state();
    aclError rc;
    VMM_LOCKED_CALL(s, real(virPtr), rc == ACL_SUCCESS,
                    vmm_unmapped_locked(s, VMM_ACL, (uint64_t)(uintptr_t)virPtr, 0));
    return rc;
}

/* ------------------------------------------------------------------ stream-ordered pools */

#define MAX_POOLS 256

struct pool_ent {
    CUmemoryPool pool; /* NULL: free slot */
    int dev;
    bool zombie;       /* destroyed with blocks outstanding: the driver frees it when they are freed */
    uint64_t charged;  /* what the pool holds from the device, as last read */
    uint64_t outstanding;
};

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pool_ent pools[MAX_POOLS];
static _Atomic int pools_live;   /* slots in use: the sync hooks do nothing while 0 */
static struct hcs_ptrmap pool_ptrs; /* block -> (size, slot) */

static bool pool_attr(CUmemoryPool pool, CUmemPool_attribute attr, uint64_t *v) {
    __typeof__(&cuMemPoolGetAttribute) f = REAL(cuMemPoolGetAttribute);
    cuuint64_t x = 0;
    if (f == NULL || f(pool, attr, &x) != CUDA_SUCCESS)
        return false;
    *v = x;
    return true;
}

static struct pool_ent *pool_find_locked(CUmemoryPool pool) {
    for (int i = 0; i < MAX_POOLS; i++)
        if (pools[i].pool == pool && !pools[i].zombie)
            return &pools[i];
    return NULL;
}

static struct pool_ent *pool_add_locked(CUmemoryPool pool, int dev) {
    struct pool_ent *e = pool_find_locked(pool);
    if (e != NULL)
        return e;
    for (int i = 0; i < MAX_POOLS; i++) {
        if (pools[i].pool == NULL) {
            pools[i] = (struct pool_ent){.pool = pool, .dev = dev};
            atomic_fetch_add(&pools_live, 1);
            return &pools[i];
        }
    }
    return NULL;
}

static void pool_drop_locked(struct hcs_state *s, struct pool_ent *e) {
    if (e->charged)
        unreserve(s, e->dev, e->charged);
    memset(e, 0, sizeof *e);
    atomic_fetch_sub(&pools_live, 1);
}

/* Bring the charge of pool e to what it holds from the device now. synced: the caller has just
 * synchronised (a destroyed pool's outstanding frees are complete). */
static void pool_settle_locked(struct hcs_state *s, struct pool_ent *e, bool synced) {
    if (e->zombie) {
        if (synced && e->outstanding == 0)
            pool_drop_locked(s, e);
        return;
    }
    uint64_t r;
    if (!pool_attr(e->pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &r))
        return;
    if (r < e->charged) {
        unreserve(s, e->dev, e->charged - r);
    } else if (r > e->charged) {
        /* the truth, even past the quota (then everything else is refused until it shrinks) */
        (void)hcs_region_reserve(&s->region, e->dev, r - e->charged, HCS_LEASE_MAX);
    }
    e->charged = r;
}

static void pools_settle_all_synced(struct hcs_state *s, bool synced) {
    if (atomic_load_explicit(&pools_live, memory_order_relaxed) == 0 || !s->enforcing || in_hook)
        return;
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < MAX_POOLS; i++)
        if (pools[i].pool != NULL)
            pool_settle_locked(s, &pools[i], synced);
    pthread_mutex_unlock(&pool_mu);
}

static void pools_settle_all(struct hcs_state *s) {
    pools_settle_all_synced(s, false);
}

/* For a refused allocation: did a pool give memory back since we last looked (the driver releases
 * at event synchronisation too, which is not hooked)? Then the caller asks once more. */
static bool pools_gave_back(struct hcs_state *s) {
    if (atomic_load_explicit(&pools_live, memory_order_relaxed) == 0 || !s->enforcing || in_hook)
        return false;
    uint64_t before = 0, after = 0;
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < MAX_POOLS; i++)
        before += pools[i].charged;
    for (int i = 0; i < MAX_POOLS; i++)
        if (pools[i].pool != NULL)
            pool_settle_locked(s, &pools[i], false);
    for (int i = 0; i < MAX_POOLS; i++)
        after += pools[i].charged;
    pthread_mutex_unlock(&pool_mu);
    return after < before;
}

static void pool_ptr_freed(struct hcs_state *s, CUdeviceptr p, bool sync) {
    if (atomic_load_explicit(&pools_live, memory_order_relaxed) == 0 || !s->enforcing || in_hook)
        return;
    pthread_mutex_lock(&pool_mu);
    uint64_t size;
    uint32_t slot;
    if (hcs_ptrmap_take(&pool_ptrs, (uint64_t)p, KIND_POOL_PTR, &size, &slot) && slot < MAX_POOLS) {
        struct pool_ent *e = &pools[slot];
        if (e->outstanding > 0)
            e->outstanding--;
        if (sync) /* cuMemFree of a pool block: returned now, the pool may give memory back */
            pool_settle_locked(s, e, true);
    }
    pthread_mutex_unlock(&pool_mu);
}

struct cu_alloc_args_x {
    void *fn;
    size_t size;
    CUstream stream;
    CUmemoryPool pool;
    bool from_pool;
};

static CUresult call_pool_alloc(const void *p, CUdeviceptr *d) {
    const struct cu_alloc_args_x *a = p;
    if (a->from_pool)
        return ((__typeof__(&cuMemAllocFromPoolAsync))a->fn)(d, a->size, a->pool, a->stream);
    return ((__typeof__(&cuMemAllocAsync))a->fn)(d, a->size, a->stream);
}

/* refuse an allocation the pool took more for than the quota allows: free it, let the stream get
 * there, and give the pool's unused memory back */
static void pool_undo(struct cu_alloc_args_x *a, CUdeviceptr d) {
    __typeof__(&cuMemFreeAsync) fr = REAL(cuMemFreeAsync);
    __typeof__(&cuStreamSynchronize) sy = REAL(cuStreamSynchronize);
    __typeof__(&cuMemPoolTrimTo) tr = REAL(cuMemPoolTrimTo);
    in_hook++;
    if (fr != NULL)
        (void)fr(d, a->stream);
    if (sy != NULL)
        (void)sy(a->stream);
    if (tr != NULL)
        (void)tr(a->pool, 0);
    in_hook--;
}

static CUresult pool_alloc_hook(struct cu_alloc_args_x *a, CUdeviceptr *dptr, const char *api) {
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return call_pool_alloc(a, dptr);
    if (s->fail_closed)
        return CUDA_ERROR_OUT_OF_MEMORY;
    __typeof__(&cuCtxGetDevice) gd = REAL(cuCtxGetDevice);
    CUdevice ordinal;
    if (gd == NULL || gd(&ordinal) != CUDA_SUCCESS)
        return call_pool_alloc(a, dptr); /* no context: the driver reports the error */
    int dev = cuda_canon(ordinal);
    if (dev == DEV_FOREIGN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t limit = limit_of(s, dev);
    if (limit == HCS_UNLIMITED)
        return call_pool_alloc(a, dptr);
    if (!a->from_pool) {
        __typeof__(&cuDeviceGetMemPool) gp = REAL(cuDeviceGetMemPool);
        if (gp == NULL || gp(&a->pool, ordinal) != CUDA_SUCCESS)
            a->pool = NULL;
    }
    pthread_mutex_lock(&pool_mu);
    struct pool_ent *e = a->pool != NULL ? pool_add_locked(a->pool, dev) : NULL;
    uint64_t used;
    if (e != NULL)
        pool_settle_locked(s, e, false);
    if (e == NULL || !pool_attr(a->pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used)) {
        /* no pool attributes (or table full): charge the allocation itself, freed as a pointer */
        pthread_mutex_unlock(&pool_mu);
        return cuda_alloc(s, dev, a->size, dptr, call_pool_alloc, a, api);
    }
    uint64_t before = e->charged;
    uint64_t avail = before > used ? before - used : 0;
    uint64_t need = a->size > avail ? a->size - avail : 0;
    if (need > 0 && admit(s, dev, need, api) == ADMIT_DENY) {
        pthread_mutex_unlock(&pool_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    in_hook++;
    CUresult rc = call_pool_alloc(a, dptr);
    in_hook--;
    /* now charged = before + need; settle to what the pool really holds */
    e->charged = before + need;
    if (rc == CUDA_SUCCESS) {
        uint64_t r;
        if (pool_attr(a->pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &r) && r > e->charged &&
            !hcs_region_reserve(&s->region, dev, r - e->charged, limit)) {
            /* the pool took a bigger chunk than the quota has room for */
            pool_undo(a, *dptr);
            *dptr = 0;
            pool_settle_locked(s, e, false);
            pthread_mutex_unlock(&pool_mu);
            hcs_log(2, "%s: device %d: the pool grew past the quota; refused", api, dev);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        if (pool_attr(a->pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &r) && r > e->charged)
            e->charged = r;
        e->outstanding++;
        if (hcs_ptrmap_put(&pool_ptrs, (uint64_t)*dptr, KIND_POOL_PTR, a->size, (uint32_t)(e - pools), NULL) ==
            HCS_PUT_NOMEM)
            hcs_log(1, "out of host memory tracking a pool block");
    }
    pool_settle_locked(s, e, false);
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

HCS_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemAllocAsync);
    struct cu_alloc_args_x a = {.fn = (void *)real, .size = bytesize, .stream = hStream};
    return pool_alloc_hook(&a, dptr, "cuMemAllocAsync");
}

HCS_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemAllocAsync_ptsz);
    struct cu_alloc_args_x a = {.fn = (void *)real, .size = bytesize, .stream = hStream};
    return pool_alloc_hook(&a, dptr, "cuMemAllocAsync");
}

HCS_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                            CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemAllocFromPoolAsync);
    struct cu_alloc_args_x a = {.fn = (void *)real, .size = bytesize, .stream = hStream, .pool = pool,
                                .from_pool = true};
    return pool_alloc_hook(&a, dptr, "cuMemAllocFromPoolAsync");
}

HCS_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                 CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemAllocFromPoolAsync_ptsz);
    struct cu_alloc_args_x a = {.fn = (void *)real, .size = bytesize, .stream = hStream, .pool = pool,
                                .from_pool = true};
    return pool_alloc_hook(&a, dptr, "cuMemAllocFromPoolAsync");
}

HCS_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps) {
    CU_REAL_OR_FAIL(cuMemPoolCreate);
    CUresult rc = real(pool, poolProps);
    struct hcs_state *s = state();
    if (rc != CUDA_SUCCESS || in_hook || !s->enforcing || pool == NULL || poolProps == NULL ||
        poolProps->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return rc;
    int dev = cuda_canon(poolProps->location.id);
    if (dev >= 0) {
        pthread_mutex_lock(&pool_mu);
        (void)pool_add_locked(*pool, dev);
        pthread_mutex_unlock(&pool_mu);
    }
    return rc;
}

HCS_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    CU_REAL_OR_FAIL(cuMemPoolDestroy);
    struct hcs_state *s = state();
    if (in_hook || !s->enforcing)
        return real(pool);
    pthread_mutex_lock(&pool_mu);
    struct pool_ent *e = pool_find_locked(pool);
    uint64_t used = 0;
    if (e != NULL) {
        pool_settle_locked(s, e, false);
        if (!pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used))
            used = 1; /* unknown: keep the charge until its blocks are freed */
    }
    CUresult rc = real(pool);
    if (rc == CUDA_SUCCESS && e != NULL) {
        if (used == 0 && e->outstanding == 0)
            pool_drop_locked(s, e);
        else
            e->zombie = true; /* freed by the driver once its blocks are freed and synchronised */
    }
    pthread_mutex_unlock(&pool_mu);
    return rc;
}

HCS_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
    CU_REAL_OR_FAIL(cuMemPoolTrimTo);
    CUresult rc = real(pool, minBytesToKeep);
    if (rc == CUDA_SUCCESS)
        pools_settle_all(state());
    return rc;
}

/* Synchronisation completes stream-ordered frees; pools may then give memory back. Each successful
 * synchronise is also timed for the agent's sub-health fallback signal (synctime.h). */
HCS_EXPORT CUresult cuStreamSynchronize(CUstream hStream) {
    CU_REAL_OR_FAIL(cuStreamSynchronize);
    uint64_t t0 = cuda_sync_begin(); /* sub-health fallback timing (synctime.h) */
    CUresult rc = real(hStream);
    if (rc == CUDA_SUCCESS) {
        cuda_sync_end(t0);
        pools_settle_all_synced(state(), true);
    }
    return rc;
}

HCS_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream hStream) {
    CU_REAL_OR_FAIL(cuStreamSynchronize_ptsz);
    uint64_t t0 = cuda_sync_begin(); /* sub-health fallback timing (synctime.h) */
    CUresult rc = real(hStream);
    if (rc == CUDA_SUCCESS) {
        cuda_sync_end(t0);
        pools_settle_all_synced(state(), true);
    }
    return rc;
}

HCS_EXPORT CUresult cuCtxSynchronize(void) {
    CU_REAL_OR_FAIL(cuCtxSynchronize);
    uint64_t t0 = cuda_sync_begin(); /* sub-health fallback timing (synctime.h) */
    CUresult rc = real();
    if (rc == CUDA_SUCCESS) {
        cuda_sync_end(t0);
        pools_settle_all_synced(state(), true);
    }
    return rc;
}

/* ------------------------------------------------------------------ v1 entry points */

HCS_EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize) {
    CU_REAL_OR_FAIL(cuMemAlloc);
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return real(dptr, bytesize);
    int dev = cuda_device();
    if (dev == DEV_FOREIGN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (dev < 0)
        return real(dptr, bytesize);
    enum admit_result a = admit(s, dev, bytesize, "cuMemAlloc (v1)");
    if (a == ADMIT_DENY)
        return CUDA_ERROR_OUT_OF_MEMORY;
    in_hook++;
    CUresult rc = real(dptr, bytesize);
    in_hook--;
    if (a == ADMIT_OK) {
        if (rc == CUDA_SUCCESS)
            track(s, (uint64_t)*dptr, (enum hcs_kind)KIND_CUDA_V1, bytesize, dev);
        else
            unreserve(s, dev, bytesize);
    }
    return rc;
}

HCS_EXPORT CUresult cuMemFree(CUdeviceptr_v1 dptr) {
    CU_REAL_OR_FAIL(cuMemFree);
    struct hcs_state *s = state();
    uint64_t size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, (uint64_t)dptr, (enum hcs_kind)KIND_CUDA_V1, &size, &dev);
    CUresult rc = real(dptr);
    untrack_done(s, known, rc == CUDA_SUCCESS, (uint64_t)dptr, (enum hcs_kind)KIND_CUDA_V1, size, dev);
    return rc;
}

/* ------------------------------------------------------------------ CUDA arrays */

#define ARRAY3D_DEFERRED_MAPPING 0x80 /* CUDA_ARRAY3D_DEFERRED_MAPPING: no memory until bound */

static uint64_t texel_bytes(CUarray_format f, unsigned ch) {
    uint64_t t;
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: t = 1; break;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: t = 2; break;
    default: t = 4; break; /* 32-bit formats; anything else the driver rejects */
    }
    return t * (ch ? ch : 1);
}

/* texel bytes of one level, rows padded to 512 bytes; UINT64_MAX on overflow */
static uint64_t level_estimate(uint64_t w, uint64_t h, uint64_t d, CUarray_format f, unsigned ch) {
    uint64_t t = texel_bytes(f, ch);
    if (w == 0)
        w = 1;
    if (w > (UINT64_MAX - 511) / t)
        return UINT64_MAX;
    uint64_t row = (w * t + 511) & ~(uint64_t)511;
    uint64_t rows = h ? h : 1, depth = d ? d : 1;
    if (rows > UINT64_MAX / row || depth > UINT64_MAX / (row * rows))
        return UINT64_MAX;
    return row * rows * depth;
}

static uint64_t mipmap_estimate(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels) {
    uint64_t total = 0;
    for (unsigned l = 0; l < levels && l < 64; l++) {
        uint64_t w = d->Width >> l, h = d->Height >> l, z = d->Depth >> l;
        uint64_t b = level_estimate(w ? w : 1, d->Height ? (h ? h : 1) : 0, d->Depth ? (z ? z : 1) : 0, d->Format,
                                    d->NumChannels);
        if (b == UINT64_MAX || total > UINT64_MAX - b)
            return UINT64_MAX;
        total += b;
    }
    return total;
}

typedef CUresult (*array_call)(const void *args, uint64_t *handle);

static CUresult array_create(uint64_t est, enum hcs_kind kind, array_call call, const void *args, uint64_t *handle,
                             const char *api) {
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return call(args, handle);
    int dev = cuda_device();
    if (dev == DEV_FOREIGN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (dev < 0)
        return call(args, handle);
    if (est == UINT64_MAX)
        return CUDA_ERROR_OUT_OF_MEMORY;
    enum admit_result a = admit(s, dev, est, api);
    if (a == ADMIT_DENY && pools_gave_back(s))
        a = admit(s, dev, est, api);
    if (a == ADMIT_DENY)
        return CUDA_ERROR_OUT_OF_MEMORY;
    in_hook++;
    CUresult rc = call(args, handle);
    in_hook--;
    if (a == ADMIT_OK) {
        if (rc == CUDA_SUCCESS)
            track(s, *handle, kind, est, dev);
        else
            unreserve(s, dev, est);
    }
    return rc;
}

struct array_args {
    void *fn;
    const void *desc;
    unsigned levels;
    int which; /* 0 2D, 1 3D, 2 mipmapped */
};

static CUresult call_array(const void *p, uint64_t *h) {
    const struct array_args *a = p;
    CUresult rc;
    if (a->which == 2) {
        CUmipmappedArray m = NULL;
        rc = ((__typeof__(&cuMipmappedArrayCreate))a->fn)(&m, a->desc, a->levels);
        *h = (uint64_t)(uintptr_t)m;
    } else {
        CUarray arr = NULL;
        rc = a->which == 0 ? ((__typeof__(&cuArrayCreate_v2))a->fn)(&arr, a->desc)
                           : ((__typeof__(&cuArray3DCreate_v2))a->fn)(&arr, a->desc);
        *h = (uint64_t)(uintptr_t)arr;
    }
    return rc;
}

HCS_EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *d) {
    CU_REAL_OR_FAIL(cuArrayCreate_v2);
    if (pHandle == NULL || d == NULL)
        return real(pHandle, d);
    struct array_args a = {.fn = (void *)real, .desc = d, .which = 0};
    uint64_t h = 0;
    CUresult rc = array_create(level_estimate(d->Width, d->Height, 0, d->Format, d->NumChannels),
                               (enum hcs_kind)KIND_CUDA_ARRAY, call_array, &a, &h, "cuArrayCreate");
    if (rc == CUDA_SUCCESS)
        *pHandle = (CUarray)(uintptr_t)h;
    return rc;
}

HCS_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    CU_REAL_OR_FAIL(cuArray3DCreate_v2);
    if (pHandle == NULL || d == NULL || (d->Flags & ARRAY3D_DEFERRED_MAPPING))
        return real(pHandle, d); /* deferred mapping: its memory is a charged VMM handle */
    struct array_args a = {.fn = (void *)real, .desc = d, .which = 1};
    uint64_t h = 0;
    CUresult rc = array_create(level_estimate(d->Width, d->Height, d->Depth, d->Format, d->NumChannels),
                               (enum hcs_kind)KIND_CUDA_ARRAY, call_array, &a, &h, "cuArray3DCreate");
    if (rc == CUDA_SUCCESS)
        *pHandle = (CUarray)(uintptr_t)h;
    return rc;
}

HCS_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                           unsigned int numMipmapLevels) {
    CU_REAL_OR_FAIL(cuMipmappedArrayCreate);
    if (pHandle == NULL || d == NULL || numMipmapLevels == 0 || (d->Flags & ARRAY3D_DEFERRED_MAPPING))
        return real(pHandle, d, numMipmapLevels);
    struct array_args a = {.fn = (void *)real, .desc = d, .levels = numMipmapLevels, .which = 2};
    uint64_t h = 0;
    CUresult rc = array_create(mipmap_estimate(d, numMipmapLevels), (enum hcs_kind)KIND_CUDA_MIPMAP, call_array, &a,
                               &h, "cuMipmappedArrayCreate");
    if (rc == CUDA_SUCCESS)
        *pHandle = (CUmipmappedArray)(uintptr_t)h;
    return rc;
}

HCS_EXPORT CUresult cuArrayDestroy(CUarray hArray) {
    CU_REAL_OR_FAIL(cuArrayDestroy);
    struct hcs_state *s = state();
    uint64_t key = (uint64_t)(uintptr_t)hArray, size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, key, (enum hcs_kind)KIND_CUDA_ARRAY, &size, &dev);
    CUresult rc = real(hArray);
    untrack_done(s, known, rc == CUDA_SUCCESS, key, (enum hcs_kind)KIND_CUDA_ARRAY, size, dev);
    return rc;
}

HCS_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray) {
    CU_REAL_OR_FAIL(cuMipmappedArrayDestroy);
    struct hcs_state *s = state();
    uint64_t key = (uint64_t)(uintptr_t)hMipmappedArray, size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, key, (enum hcs_kind)KIND_CUDA_MIPMAP, &size, &dev);
    CUresult rc = real(hMipmappedArray);
    untrack_done(s, known, rc == CUDA_SUCCESS, key, (enum hcs_kind)KIND_CUDA_MIPMAP, size, dev);
    return rc;
}

/* ------------------------------------------------------------------ HIP, ACL, CNRT plain variants */

HCS_EXPORT hipError_t hipExtMallocWithFlags(void **ptr, size_t sizeBytes, unsigned int flags) {
    __typeof__(&hipExtMallocWithFlags) real = REAL(hipExtMallocWithFlags);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? hip_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, sizeBytes, &V_HIP, &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(ptr, sizeBytes, flags);
    in_hook--;
    ptr_alloc_end(s, dev, sizeBytes, &V_HIP, a, rc, rc == hipSuccess ? *ptr : NULL);
    return rc;
}

HCS_EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    __typeof__(&aclrtMallocAlign32) real = REAL(aclrtMallocAlign32);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    if (size == 0 || size > SIZE_MAX - 31)
        return real(devPtr, size, policy); /* the runtime rejects it */
    uint64_t charged = ((uint64_t)size + 31) & ~(uint64_t)31; /* what the runtime takes */
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? acl_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, charged, &V_ACL, &a);
    if (deny)
        return deny;
    in_hook++;
    aclError rc = real(devPtr, size, policy);
    in_hook--;
    ptr_alloc_end(s, dev, charged, &V_ACL, a, rc, rc == ACL_SUCCESS ? *devPtr : NULL);
    return rc;
}

HCS_EXPORT cnrtRet_t cnrtMallocConstant(void **pPtr, size_t bytes) {
    __typeof__(&cnrtMallocConstant) real = REAL(cnrtMallocConstant);
    if (real == NULL)
        return cnrtErrorInit;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? cnrt_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, bytes, &V_CNRT, &a);
    if (deny)
        return deny;
    in_hook++;
    cnrtRet_t rc = real(pPtr, bytes);
    in_hook--;
    ptr_alloc_end(s, dev, bytes, &V_CNRT, a, rc, rc == cnrtSuccess ? *pPtr : NULL);
    return rc;
}

/* ------------------------------------------------------------------ cuGetProcAddress by name */

static const struct {
    const char *name;
    int min_version;
    int id;
    int ptsz_id;
} proc_names_extra[] = {
    {"cuMemAlloc", 2000, SYM_cuMemAlloc, -1}, /* below 3020: the v1 (32-bit) function */
    {"cuMemFree", 2000, SYM_cuMemFree, -1},
    {"cuMemMap", 10020, SYM_cuMemMap, -1},
    {"cuMemUnmap", 10020, SYM_cuMemUnmap, -1},
    {"cuMemRetainAllocationHandle", 11000, SYM_cuMemRetainAllocationHandle, -1},
    {"cuMemPoolCreate", 11020, SYM_cuMemPoolCreate, -1},
    {"cuMemPoolDestroy", 11020, SYM_cuMemPoolDestroy, -1},
    {"cuMemPoolTrimTo", 11020, SYM_cuMemPoolTrimTo, -1},
    {"cuStreamSynchronize", 2000, SYM_cuStreamSynchronize, SYM_cuStreamSynchronize_ptsz},
    {"cuCtxSynchronize", 2000, SYM_cuCtxSynchronize, -1},
    {"cuArrayCreate", 3020, SYM_cuArrayCreate_v2, -1},
    {"cuArray3DCreate", 3020, SYM_cuArray3DCreate_v2, -1},
    {"cuArrayDestroy", 2000, SYM_cuArrayDestroy, -1},
    {"cuMipmappedArrayCreate", 5000, SYM_cuMipmappedArrayCreate, -1},
    {"cuMipmappedArrayDestroy", 5000, SYM_cuMipmappedArrayDestroy, -1},
};

static void *hook_for_name_extra(const char *symbol, int version, cuuint64_t flags) {
    for (size_t i = 0; i < sizeof proc_names_extra / sizeof proc_names_extra[0]; i++) {
        if (version < proc_names_extra[i].min_version || strcmp(proc_names_extra[i].name, symbol) != 0)
            continue;
        int id = proc_names_extra[i].id;
        if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && proc_names_extra[i].ptsz_id >= 0)
            id = proc_names_extra[i].ptsz_id;
        return real_fn(id) != NULL ? syms[id].hook : NULL;
    }
    return NULL;
}

/* ------------------------------------------------------------------ fork */

static void extra_atfork_child(void) {
    /* the child owns none of the parent's handles, mappings or pool blocks (see atfork_child) */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    vmm_mu = fresh;
    pool_mu = fresh;
    hcs_ptrmap_reset_after_fork(&vmm_map);
    hcs_ptrmap_reset_after_fork(&pool_ptrs);
    memset(pools, 0, sizeof pools);
    atomic_store(&pools_live, 0);
}

__attribute__((constructor)) static void hooks_extra_ctor(void) {
    pthread_atfork(NULL, NULL, extra_atfork_child);
}

/* ------------------------------------------------------------------ management libraries' memory queries
 *
 * Like NVML's: inside a container with a quota, DCMI (npu-smi), ROCm SMI (rocm-smi / hy-smi) and
 * CNDev (cnmon) report total = min(quota, card) and used = the container's usage from the ledger,
 * so the tools agree with the quota. Devices are the runtime's ordinals (DCMI's logic id). */

/* the quota-limited view of device dev: false when not limited (the library's numbers stand) */
static bool smi_view(int dev, uint64_t card_total, uint64_t *total, uint64_t *used) {
    struct hcs_state *s = state();
    if (!s->enforcing || dev < 0 || dev >= HCS_MAX_DEVICES)
        return false;
    uint64_t limit = limit_of(s, dev);
    if (limit == HCS_UNLIMITED)
        return false;
    bool ok;
    uint64_t u = hcs_region_used(&s->region, dev, &ok);
    *total = card_total < limit ? card_total : limit;
    *used = u < *total ? u : *total;
    return true;
}

static int dcmi_dev(int card_id, int device_id) {
    __typeof__(&dcmi_get_device_logic_id) f = REAL(dcmi_get_device_logic_id);
    int logic = -1;
    if (f == NULL || f(&logic, card_id, device_id) != 0)
        return -1;
    return logic;
}

HCS_EXPORT int dcmi_get_device_memory_info_v3(int card_id, int device_id, struct dcmi_get_memory_info_stru *mem) {
    __typeof__(&dcmi_get_device_memory_info_v3) real = REAL(dcmi_get_device_memory_info_v3);
    if (real == NULL)
        return -8005; /* DCMI inner error */
    int rc = real(card_id, device_id, mem);
    uint64_t total, used;
    if (rc == 0 && mem != NULL && smi_view(dcmi_dev(card_id, device_id), mem->memory_size << 20, &total, &used)) {
        mem->memory_size = total >> 20;
        mem->memory_available = (total - used) >> 20;
        mem->utiliza = total ? (unsigned int)(used * 100 / total) : 0;
    }
    return rc;
}

HCS_EXPORT int dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *hbm) {
    __typeof__(&dcmi_get_device_hbm_info) real = REAL(dcmi_get_device_hbm_info);
    if (real == NULL)
        return -8005;
    int rc = real(card_id, device_id, hbm);
    uint64_t total, used;
    if (rc == 0 && hbm != NULL && smi_view(dcmi_dev(card_id, device_id), hbm->memory_size << 20, &total, &used)) {
        hbm->memory_size = total >> 20;
        hbm->memory_usage = used >> 20;
    }
    return rc;
}

HCS_EXPORT rsmi_status_t rsmi_dev_memory_total_get(uint32_t dv_ind, int mem_type, uint64_t *total_out) {
    __typeof__(&rsmi_dev_memory_total_get) real = REAL(rsmi_dev_memory_total_get);
    if (real == NULL)
        return 8; /* RSMI_STATUS_INIT_ERROR */
    rsmi_status_t rc = real(dv_ind, mem_type, total_out);
    uint64_t total, used;
    if (rc == 0 && total_out != NULL && mem_type == RSMI_MEM_TYPE_VRAM && dv_ind < HCS_MAX_DEVICES &&
        smi_view((int)dv_ind, *total_out, &total, &used))
        *total_out = total;
    return rc;
}

HCS_EXPORT rsmi_status_t rsmi_dev_memory_usage_get(uint32_t dv_ind, int mem_type, uint64_t *used_out) {
    __typeof__(&rsmi_dev_memory_usage_get) real = REAL(rsmi_dev_memory_usage_get);
    __typeof__(&rsmi_dev_memory_total_get) tot = REAL(rsmi_dev_memory_total_get);
    if (real == NULL)
        return 8;
    rsmi_status_t rc = real(dv_ind, mem_type, used_out);
    uint64_t card = 0, total, used;
    if (rc == 0 && used_out != NULL && mem_type == RSMI_MEM_TYPE_VRAM && dv_ind < HCS_MAX_DEVICES && tot != NULL &&
        tot(dv_ind, mem_type, &card) == 0 && smi_view((int)dv_ind, card, &total, &used))
        *used_out = used;
    return rc;
}

HCS_EXPORT cndevRet_t cndevGetMemoryUsageV2(cndevMemoryInfoV2_t *mem, cndevDevice_t device) {
    __typeof__(&cndevGetMemoryUsageV2) real = REAL(cndevGetMemoryUsageV2);
    if (real == NULL)
        return 1; /* CNDEV_ERROR_NO_DRIVER */
    cndevRet_t rc = real(mem, device);
    uint64_t total, used;
    if (rc == 0 && mem != NULL && mem->physicalMemoryTotal > 0 &&
        smi_view(device, (uint64_t)mem->physicalMemoryTotal << 20, &total, &used)) {
        mem->physicalMemoryTotal = (int64_t)(total >> 20);
        mem->physicalMemoryUsed = (int64_t)(used >> 20);
        mem->virtualMemoryTotal = mem->physicalMemoryTotal;
        mem->virtualMemoryUsed = mem->physicalMemoryUsed;
    }
    return rc;
}

/* ------------------------------------------------------------------ synchronise timing: ACL, HIP, CNRT */

/* Each successful synchronise of the Ascend, Hygon and Cambricon runtimes is timed into the per-
 * device rings of the node-wide compute dir (synctime.h), as the CUDA ones above: the agent's sub-
 * health fallback when it cannot load eBPF probes. The device is the calling thread's current
 * device of that runtime (a stream or event of another device is attributed to the current one).
 * Their ring is named from the agent's device list (synctime.h), loaded at the first one. */

static pthread_once_t rt_sync_once = PTHREAD_ONCE_INIT;

static void rt_sync_list(void) {
    struct stat st;
    bool managed = (stat(HCS_FIXED_QUOTA_FILE, &st) == 0 && S_ISREG(st.st_mode)) || preload_file_names_us();
    hcs_synctime_devices(managed ? HCS_FIXED_LEDGER_DIR "/devices" : getenv("HCS_SYNC_DEVICES"));
}

static inline uint64_t rt_sync_begin(void) {
    (void)state(); /* initialised: the timing dir is known from the first synchronise on */
    return atomic_load_explicit(&hcs_synctime_on, memory_order_relaxed) ? hcs_synctime_now() : 0;
}

static void rt_sync_end(int rt, int dev, uint64_t t0) {
    if (t0 == 0 || in_hook || dev < 0)
        return;
    uint64_t now = hcs_synctime_now();
    pthread_once(&rt_sync_once, rt_sync_list);
    if (now > t0)
        hcs_synctime_record_rt(rt, dev, now - t0, now);
}

#define RT_SYNC_HOOK(ret, name, params, args, rt, devfn, ok, missing)                                   \
    HCS_EXPORT ret name params {                                                                         \
        __typeof__(&name) real = REAL(name);                                                             \
        if (real == NULL)                                                                                \
            return missing;                                                                              \
        uint64_t t0 = rt_sync_begin();                                                                   \
        ret rc = real args;                                                                              \
        if (rc == ok && t0 != 0)                                                                         \
            rt_sync_end(rt, devfn(), t0);                                                                \
        return rc;                                                                                       \
    }

RT_SYNC_HOOK(aclError, aclrtSynchronizeStream, (aclrtStream stream), (stream), HCS_ST_RT_ACL, acl_device,
             ACL_SUCCESS, ACL_ERROR_UNINITIALIZE)
RT_SYNC_HOOK(aclError, aclrtSynchronizeStreamWithTimeout, (aclrtStream stream, int32_t timeout), (stream, timeout),
             HCS_ST_RT_ACL, acl_device, ACL_SUCCESS, ACL_ERROR_UNINITIALIZE)
RT_SYNC_HOOK(aclError, aclrtSynchronizeDevice, (void), (), HCS_ST_RT_ACL, acl_device, ACL_SUCCESS,
             ACL_ERROR_UNINITIALIZE)
RT_SYNC_HOOK(aclError, aclrtSynchronizeDeviceWithTimeout, (int32_t timeout), (timeout), HCS_ST_RT_ACL, acl_device,
             ACL_SUCCESS, ACL_ERROR_UNINITIALIZE)
RT_SYNC_HOOK(aclError, aclrtSynchronizeEvent, (aclrtEvent event), (event), HCS_ST_RT_ACL, acl_device, ACL_SUCCESS,
             ACL_ERROR_UNINITIALIZE)
RT_SYNC_HOOK(hipError_t, hipStreamSynchronize, (hipStream_t stream), (stream), HCS_ST_RT_HIP, hip_device, hipSuccess,
             hipErrorNotInitialized)
RT_SYNC_HOOK(hipError_t, hipDeviceSynchronize, (void), (), HCS_ST_RT_HIP, hip_device, hipSuccess,
             hipErrorNotInitialized)
RT_SYNC_HOOK(hipError_t, hipEventSynchronize, (hipEvent_t event), (event), HCS_ST_RT_HIP, hip_device, hipSuccess,
             hipErrorNotInitialized)
RT_SYNC_HOOK(cnrtRet_t, cnrtQueueSync, (cnrtQueue_t queue), (queue), HCS_ST_RT_CNRT, cnrt_device, cnrtSuccess,
             cnrtErrorInit)
RT_SYNC_HOOK(cnrtRet_t, cnrtSyncQueue, (cnrtQueue_t queue), (queue), HCS_ST_RT_CNRT, cnrt_device, cnrtSuccess,
             cnrtErrorInit)
RT_SYNC_HOOK(cnrtRet_t, cnrtSyncDevice, (void), (), HCS_ST_RT_CNRT, cnrt_device, cnrtSuccess, cnrtErrorInit)
RT_SYNC_HOOK(cnrtRet_t, cnrtWaitNotifier, (cnrtNotifier_t notifier), (notifier), HCS_ST_RT_CNRT, cnrt_device,
             cnrtSuccess, cnrtErrorInit)
