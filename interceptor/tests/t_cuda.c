/*
 * t_cuda - CUDA driver-API cases for libhcs_interceptor.so, run by tests/interceptor/ with
 * LD_PRELOAD set and the simulated libcuda.so.1 linked. Usage: t_cuda <case> [args]; the quota of
 * device 0 (bytes) is passed in HCS_TEST_QUOTA. Prints "ok <case>" or FAIL lines (exit 1).
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hcs_vendor_abi.h"
#include "t_common.h"

static void ctx_on(int dev) {
    CUcontext c;
    if (cuDevicePrimaryCtxRetain(&c, dev) != CUDA_SUCCESS || cuCtxSetCurrent(c) != CUDA_SUCCESS) {
        fprintf(stderr, "setup: no context on device %d\n", dev);
        exit(2);
    }
}

static void setup(void) {
    if (cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "setup: cuInit failed (HCS_SIM_PROFILE?)\n");
        exit(2);
    }
    ctx_on(0);
}

/* allocating exactly the remaining bytes succeeds, one more fails, for every allocation API */
static void case_boundary(uint64_t q) {
    CUdeviceptr a = 0, b = 0, c = 0;
    CHECK_EQ(cuMemAlloc_v2(&a, q - 4096), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&b, 4097), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAllocManaged(&b, 4097, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAllocAsync(&b, 4097, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAllocAsync_ptsz(&b, 4097, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAllocFromPoolAsync(&b, 4097, NULL, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAllocFromPoolAsync_ptsz(&b, 4097, NULL, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    CHECK_EQ(cuMemCreate(&h, 4097, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAlloc_v2(&b, 4096), CUDA_SUCCESS); /* exactly the rest */
    CHECK_EQ(cuMemAlloc_v2(&c, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemFree_v2(b), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocManaged(&b, 4096, 1), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(b), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocAsync(&b, 4096, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync(b, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(NULL), CUDA_SUCCESS); /* the pool gives its memory back */
    CUmemoryPool pool;
    CHECK_EQ(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemAllocFromPoolAsync_ptsz(&b, 4096, pool, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuMemFreeAsync_ptsz(b, NULL), CUDA_SUCCESS);
    CHECK_EQ(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    /* cuMemCreate at the byte boundary (2 MiB granularity): t_alloc vmm */
    CHECK_EQ(cuMemFree_v2(a), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&a, q), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(a), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&a, q + 1), CUDA_ERROR_OUT_OF_MEMORY);
}

/* frees (sync, async, VMM release) give the quota back, many times over */
static void case_free_returns(uint64_t q) {
    for (int i = 0; i < 100; i++) {
        CUdeviceptr p;
        CHECK_EQ(cuMemAlloc_v2(&p, q), CUDA_SUCCESS);
        CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
        CHECK_EQ(cuMemAllocAsync(&p, q, NULL), CUDA_SUCCESS);
        CHECK_EQ(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
        CHECK_EQ(cuStreamSynchronize(NULL), CUDA_SUCCESS); /* completes the free; the pool gives it back */
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        CUmemGenericAllocationHandle h;
        CHECK_EQ(cuMemCreate(&h, q, &prop, 0), CUDA_SUCCESS);
        CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    }
    /* a failed free (unknown pointer) must not give anything back */
    CUdeviceptr p;
    CHECK_EQ(cuMemAlloc_v2(&p, q), CUDA_SUCCESS);
    CUdeviceptr other;
    CHECK_EQ(cuMemAlloc_v2(&other, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
    size_t f, t;
    CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
    CHECK_U64(f, q);
}

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef CUresult (*async_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static void limited(alloc_fn fa, free_fn ff, uint64_t q, const char *how) {
    CUdeviceptr p;
    if (fa == NULL || ff == NULL) {
        fprintf(stderr, "FAIL: %s gave NULL\n", how);
        t_failures++;
        return;
    }
    CUresult rc = fa(&p, q + 1);
    if (rc != CUDA_ERROR_OUT_OF_MEMORY) {
        fprintf(stderr, "FAIL: %s: q+1 bytes -> %d, want 2\n", how, rc);
        t_failures++;
    }
    CHECK_EQ(fa(&p, q), CUDA_SUCCESS);
    CHECK_EQ(ff(p), CUDA_SUCCESS);
}

/* entry points that bypass plain symbol binding still hand out hooked functions */
static void case_getproc(uint64_t q) {
    void *pa = NULL, *pf = NULL;
    CHECK_EQ(cuGetProcAddress("cuMemAlloc", &pa, 12000, CU_GET_PROC_ADDRESS_DEFAULT), CUDA_SUCCESS);
    CHECK_EQ(cuGetProcAddress("cuMemFree", &pf, 12000, CU_GET_PROC_ADDRESS_DEFAULT), CUDA_SUCCESS);
    CHECK(pa == (void *)&cuMemAlloc_v2); /* the interposed symbol, not the driver's */
    limited((alloc_fn)pa, (free_fn)pf, q, "cuGetProcAddress(cuMemAlloc)");

    /* cuGetProcAddress_v2 obtained through cuGetProcAddress itself, as cudart 12 does */
    void *g2 = NULL;
    CHECK_EQ(cuGetProcAddress("cuGetProcAddress", &g2, 12000, 0), CUDA_SUCCESS);
    CHECK(g2 == (void *)&cuGetProcAddress_v2);
    if (g2 != NULL) {
        CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        void *aa = NULL, *fa = NULL;
        CHECK_EQ(((gpa2_fn)g2)("cuMemAllocAsync", &aa, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st),
                 CUDA_SUCCESS);
        CHECK_EQ(st, CU_GET_PROC_ADDRESS_SUCCESS);
        CHECK(aa == (void *)&cuMemAllocAsync_ptsz);
        CHECK_EQ(((gpa2_fn)g2)("cuMemFreeAsync", &fa, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st),
                 CUDA_SUCCESS);
        if (aa != NULL && fa != NULL) {
            CUdeviceptr p;
            CHECK_EQ(((async_fn)aa)(&p, q + 1, NULL), CUDA_ERROR_OUT_OF_MEMORY);
            CHECK_EQ(((async_fn)aa)(&p, q, NULL), CUDA_SUCCESS);
            CHECK_EQ(((CUresult(*)(CUdeviceptr, CUstream))fa)(p, NULL), CUDA_SUCCESS);
            CHECK_EQ(cuStreamSynchronize(NULL), CUDA_SUCCESS); /* the pool gives the block back */
        }
    }

    /* dlsym on the driver's own handle, on RTLD_DEFAULT, and the real lookup of cuGetProcAddress */
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL);
    if (lib != NULL) {
        limited((alloc_fn)dlsym(lib, "cuMemAlloc_v2"), (free_fn)dlsym(lib, "cuMemFree_v2"), q,
                "dlsym(libcuda, cuMemAlloc_v2)");
        gpa_fn g = (gpa_fn)dlsym(lib, "cuGetProcAddress");
        CHECK(g == &cuGetProcAddress);
        if (g != NULL) {
            void *x = NULL, *y = NULL;
            CHECK_EQ(g("cuMemAlloc", &x, 11000, 0), CUDA_SUCCESS);
            CHECK_EQ(g("cuMemFree", &y, 11000, 0), CUDA_SUCCESS);
            limited((alloc_fn)x, (free_fn)y, q, "dlsym(cuGetProcAddress)(cuMemAlloc)");
        }
        /* not hooked: the driver's own function comes back */
        void *init = dlsym(lib, "cuInit");
        CHECK(init != NULL);
        CHECK(init == (void *)&cuInit);
        CHECK(dlsym(lib, "cuNoSuchFunction") == NULL);
        CHECK(dlerror() != NULL);
        dlclose(lib);
    }
    limited((alloc_fn)dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), (free_fn)dlsym(RTLD_DEFAULT, "cuMemFree_v2"), q,
            "dlsym(RTLD_DEFAULT, cuMemAlloc_v2)");
    /* the dlsym trampoline keeps RTLD_NEXT relative to the caller (this executable) */
    void *m = dlsym(RTLD_NEXT, "malloc");
    CHECK(m != NULL);
    CHECK(dlsym(RTLD_DEFAULT, "aclrtMalloc") == NULL); /* absent vendor library: not hooked */
}

/* queries report the quota: total = min(quota, card), free = total - container usage */
static void case_meminfo(uint64_t q) {
    size_t f = 0, t = 0, dt = 0;
    CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
    uint64_t phys = env_u64("HCS_TEST_PHYS");
    uint64_t want_total = q < phys ? q : phys;
    CHECK_U64(t, want_total);
    CHECK_U64(f, want_total);
    CHECK_EQ(cuDeviceTotalMem_v2(&dt, 0), CUDA_SUCCESS);
    CHECK_U64(dt, want_total);
    CUdeviceptr p;
    uint64_t chunk = (want_total + 2) / 3; /* >= 1 even for a 1-byte quota */
    CHECK_EQ(cuMemAlloc_v2(&p, chunk), CUDA_SUCCESS);
    CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
    CHECK_U64(t, want_total);
    CHECK_U64(f, want_total - chunk);
    CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
    CHECK_U64(f, want_total);
    /* NVML reports the quota too (simulated libnvidia-ml.so.1 from driver/, looked up via dlsym) */
    const char *dir = getenv("HCS_TEST_DRIVER_LIB");
    char path[4096];
    snprintf(path, sizeof path, "%s/libnvidia-ml.so.1", dir ? dir : ".");
    void *nv = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (nv != NULL) {
        nvmlReturn_t (*init)(void) = (nvmlReturn_t(*)(void))dlsym(nv, "nvmlInit_v2");
        nvmlReturn_t (*get)(unsigned int, nvmlDevice_t *) =
            (nvmlReturn_t(*)(unsigned int, nvmlDevice_t *))dlsym(nv, "nvmlDeviceGetHandleByIndex_v2");
        nvmlReturn_t (*mi)(nvmlDevice_t, nvmlMemory_t *) =
            (nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_t *))dlsym(nv, "nvmlDeviceGetMemoryInfo");
        nvmlDevice_t d;
        nvmlMemory_t mem;
        if (init != NULL && get != NULL && mi != NULL && init() == NVML_SUCCESS && get(0, &d) == NVML_SUCCESS) {
            CHECK_EQ(cuMemAlloc_v2(&p, chunk), CUDA_SUCCESS);
            CHECK_EQ(mi(d, &mem), NVML_SUCCESS);
            CHECK_U64(mem.total, want_total);
            if (q < phys) { /* otherwise NVML's own numbers are the card's and pass through */
                CHECK_U64(mem.used, chunk);
                CHECK_U64(mem.free, want_total - chunk);
            }
            CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
            printf("nvml checked\n");
        }
    }
}

/* pitch allocations are charged the driver-chosen pitch * height */
static void case_pitch(uint64_t q) {
    CUdeviceptr p;
    size_t pitch = 0;
    /* width 1000 -> pitch 1024 in the simulated driver; q is set to 1024*10 by the test */
    CHECK_EQ(cuMemAllocPitch_v2(&p, &pitch, 1000, 10, 4), (q >= 10240 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY));
    if (q >= 10240) {
        CHECK_EQ(pitch, 1024);
        size_t f, t;
        CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
        CHECK_U64(f, q - 10240);
        CHECK_EQ(cuMemFree_v2(p), CUDA_SUCCESS);
        CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
        CHECK_U64(f, q);
    } else {
        size_t f, t;
        CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
        CHECK_U64(f, q); /* the failed attempt left nothing behind */
    }
}

/* VMM: device-located physical memory counts, host-located does not (HAMi-core #187) */
static void case_vmm(uint64_t q) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    CUmemGenericAllocationHandle h, hh;
    CHECK_EQ(cuMemCreate(&h, q, &prop, 0), CUDA_SUCCESS);
    prop.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    prop.location.id = 7; /* a NUMA node id, not a device ordinal */
    CHECK_EQ(cuMemCreate(&hh, q, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemRelease(hh), CUDA_SUCCESS);
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CHECK_EQ(cuMemCreate(&hh, 1, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemRelease(h), CUDA_SUCCESS);
    CHECK_EQ(cuMemCreate(&hh, q, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ(cuMemRelease(hh), CUDA_SUCCESS);
}

/* per-device quotas "0:<q>,1:<2q>" */
static void case_multidev(uint64_t q) {
    CUdeviceptr a, b;
    ctx_on(1);
    CHECK_EQ(cuMemAlloc_v2(&a, 2 * q), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&b, 1), CUDA_ERROR_OUT_OF_MEMORY);
    size_t f, t;
    CHECK_EQ(cuMemGetInfo_v2(&f, &t), CUDA_SUCCESS);
    CHECK_U64(t, 2 * q);
    CHECK_U64(f, 0);
    ctx_on(0);
    CHECK_EQ(cuMemAlloc_v2(&b, q + 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ(cuMemAlloc_v2(&b, q), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(b), CUDA_SUCCESS);
    ctx_on(1);
    CHECK_EQ(cuMemFree_v2(a), CUDA_SUCCESS);
    CHECK_EQ(cuMemAlloc_v2(&a, 2 * q), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(a), CUDA_SUCCESS);
}

/* a forked child is a new process with its own share; its share is reclaimed after it exits
 * without freeing */
static void case_fork(uint64_t q) {
    CUdeviceptr a;
    CHECK_EQ(cuMemAlloc_v2(&a, q / 2), CUDA_SUCCESS);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        CUdeviceptr b, c;
        ctx_on(0);
        bad |= cuMemAlloc_v2(&b, q - q / 2) != CUDA_SUCCESS;
        bad |= cuMemAlloc_v2(&c, 1) != CUDA_ERROR_OUT_OF_MEMORY;
        /* freeing the parent's pointer in the child gives nothing back to the parent's share */
        _exit(bad ? 3 : 0); /* exits holding q - q/2 */
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CUdeviceptr b;
    CHECK_EQ(cuMemAlloc_v2(&b, q - q / 2), CUDA_SUCCESS); /* the dead child's share came back */
    CHECK_EQ(cuMemFree_v2(b), CUDA_SUCCESS);
    CHECK_EQ(cuMemFree_v2(a), CUDA_SUCCESS);
}

/* allocate and report; used by the Python tests for cross-process cases */
static int case_alloc(uint64_t bytes) {
    CUdeviceptr p;
    CUresult rc = cuMemAlloc_v2(&p, bytes);
    size_t f = 0, t = 0;
    (void)cuMemGetInfo_v2(&f, &t);
    printf("{\"rc\": %d, \"free\": %zu, \"total\": %zu}\n", rc, f, t);
    return 0;
}

/* allocate, say so, and wait to be killed */
static int case_hold(uint64_t bytes) {
    CUdeviceptr p;
    CUresult rc = cuMemAlloc_v2(&p, bytes);
    printf("%s %d\n", rc == CUDA_SUCCESS ? "ready" : "failed", rc);
    fflush(stdout);
    if (rc != CUDA_SUCCESS)
        return 1;
    for (;;)
        pause();
}

/* attach to the region (own a slot), then wait for $HCS_TEST_GO to exist and allocate: used to
 * check that a process already waiting takes over a lock whose holder was killed */
static int case_attach_wait(uint64_t bytes) {
    CUdeviceptr p;
    if (cuMemAlloc_v2(&p, 1) != CUDA_SUCCESS || cuMemFree_v2(p) != CUDA_SUCCESS)
        return 1;
    printf("attached\n");
    fflush(stdout);
    const char *go = getenv("HCS_TEST_GO");
    while (go != NULL && access(go, F_OK) != 0)
        usleep(2000);
    return case_alloc(bytes);
}

/* --- attack cases (tests/security/test_sec_quota_*.py); each prints one JSON line --- */

/* setenv before the first device call: in a managed container the quota and the ledger come from
 * fixed paths, so variables set now change nothing. Args: <bytes> NAME=VALUE... */
static int case_setenv_alloc(int argc, char **argv) {
    for (int i = 3; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (eq == NULL)
            return 2;
        *eq = '\0';
        setenv(argv[i], eq + 1, 1);
    }
    return case_alloc(strtoull(argv[2], NULL, 10));
}

/* dlmopen(LM_ID_NEWLM) of a library that allocates through its own binding to libcuda */
static int case_dlmopen_alloc(uint64_t bytes, const char *lib) {
    void *h = dlmopen(LM_ID_NEWLM, lib, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        printf("{\"dlmopen\": \"refused\", \"rc\": -1, \"error_set\": %s}\n", e != NULL ? "true" : "false");
        return 0;
    }
    int (*f)(uint64_t) = (int (*)(uint64_t))dlsym(h, "t_ns_alloc");
    int rc = f != NULL ? f(bytes) : -2;
    printf("{\"dlmopen\": \"loaded\", \"rc\": %d}\n", rc);
    return 0;
}

typedef CUresult (*alloc_v2_fn)(CUdeviceptr *, size_t);

/* dlsym(RTLD_NEXT) and dlvsym on the driver's handle: both must hand out the limited function */
static int case_lookup_alloc(uint64_t bytes, const char *how) {
    alloc_v2_fn f = NULL;
    if (strcmp(how, "rtld_next") == 0) {
        f = (alloc_v2_fn)dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    } else if (strcmp(how, "dlvsym") == 0) {
        void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        static const char *const vs[] = {"libcuda.so.1", "GLIBC_2.2.5", "CUDA_12", "CUDA_11"};
        for (int i = 0; h != NULL && f == NULL && i < 4; i++)
            f = (alloc_v2_fn)dlvsym(h, "cuMemAlloc_v2", vs[i]);
    }
    if (f == NULL) {
        printf("{\"lookup\": \"null\", \"rc\": -1}\n");
        return 0;
    }
    CUdeviceptr p;
    printf("{\"lookup\": \"%s\", \"rc\": %d}\n", f == &cuMemAlloc_v2 ? "hook" : "other", f(&p, bytes));
    return 0;
}

/* allocate, close every fd above stderr (the ledger's included), allocate again, report and hold:
 * the first allocation must stay counted for the other processes, the second must be refused */
static __attribute__((noreturn)) int case_closefds_hold(uint64_t first, uint64_t second) {
    CUdeviceptr p, q;
    CUresult a = cuMemAlloc_v2(&p, first);
    for (int fd = 3; fd < 4096; fd++)
        close(fd);
    CUresult b = cuMemAlloc_v2(&q, second);
    printf("{\"first\": %d, \"second\": %d}\n", a, b);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

/* What a restore from a checkpoint into a new container does to the ledger descriptor, done by hand:
 * allocate <first>, say "ready", wait for a line on stdin (the test has meanwhile put a new ledger
 * file and quota in place), re-open the ledger path onto the same descriptor number (CRIU re-opens
 * files by path), then report the quota view and the exact boundary there, and hold. */
static __attribute__((noreturn)) int case_moved(uint64_t first) {
    CUdeviceptr p, q;
    CUresult a = cuMemAlloc_v2(&p, first);
    int lfd = -1;
    char path[4096] = "";
    for (int fd = 3; fd < 1024 && lfd < 0; fd++) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        size_t len = strlen(target), suf = strlen("/hcs-vram.ledger");
        if (len > suf && strcmp(target + len - suf, "/hcs-vram.ledger") == 0) {
            lfd = fd;
            snprintf(path, sizeof path, "%s", target);
        }
    }
    printf("ready %d\n", a);
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL)
        exit(3);
    int nfd = lfd >= 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (nfd < 0 || dup3(nfd, lfd, O_CLOEXEC) < 0)
        exit(4);
    close(nfd);
    size_t f = 0, t = 0;
    CUresult info = cuMemGetInfo_v2(&f, &t);
    CUresult over = cuMemAlloc_v2(&q, f + 1);
    if (over == CUDA_SUCCESS)
        (void)cuMemFree_v2(q);
    CUresult fit = f > 0 ? cuMemAlloc_v2(&q, f) : CUDA_SUCCESS;
    if (fit == CUDA_SUCCESS && f > 0)
        (void)cuMemFree_v2(q);
    printf("{\"first\": %d, \"info\": %d, \"free\": %zu, \"total\": %zu, \"over\": %d, \"fit\": %d}\n", a, info,
           f, t, over, fit);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

/* on device ordinal <ord>: allocate <bytes> and report, or (hold=1) allocate, say "ready", wait */
static int case_alloc_on(int ord, uint64_t bytes, int hold) {
    if (cuInit(0) != CUDA_SUCCESS)
        return 2;
    ctx_on(ord);
    CUdeviceptr p;
    CUresult rc = cuMemAlloc_v2(&p, bytes);
    size_t f = 0, t = 0;
    (void)cuMemGetInfo_v2(&f, &t);
    printf("{\"rc\": %d, \"free\": %zu, \"total\": %zu}\n", rc, f, t);
    if (!hold)
        return 0;
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: t_cuda <case> [bytes]\n");
        return 2;
    }
    const char *c = argv[1];
    setup();
    if (strcmp(c, "alloc") == 0 && argc > 2)
        return case_alloc(strtoull(argv[2], NULL, 10));
    if (strcmp(c, "attach_wait") == 0 && argc > 2)
        return case_attach_wait(strtoull(argv[2], NULL, 10));
    if (strcmp(c, "hold") == 0 && argc > 2)
        return case_hold(strtoull(argv[2], NULL, 10));
    if (strcmp(c, "alloc_on") == 0 && argc > 3)
        return case_alloc_on(atoi(argv[2]), strtoull(argv[3], NULL, 10), 0);
    if (strcmp(c, "hold_on") == 0 && argc > 3)
        return case_alloc_on(atoi(argv[2]), strtoull(argv[3], NULL, 10), 1);
    if (strcmp(c, "setenv_alloc") == 0 && argc > 2)
        return case_setenv_alloc(argc, argv);
    if (strcmp(c, "dlmopen_alloc") == 0 && argc > 3)
        return case_dlmopen_alloc(strtoull(argv[2], NULL, 10), argv[3]);
    if (strcmp(c, "lookup_alloc") == 0 && argc > 3)
        return case_lookup_alloc(strtoull(argv[2], NULL, 10), argv[3]);
    if (strcmp(c, "moved") == 0 && argc > 2)
        return case_moved(strtoull(argv[2], NULL, 10));
    if (strcmp(c, "closefds_hold") == 0 && argc > 3)
        return case_closefds_hold(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
    uint64_t q = env_u64("HCS_TEST_QUOTA");
    if (strcmp(c, "boundary") == 0)
        case_boundary(q);
    else if (strcmp(c, "free_returns") == 0)
        case_free_returns(q);
    else if (strcmp(c, "getproc") == 0)
        case_getproc(q);
    else if (strcmp(c, "meminfo") == 0)
        case_meminfo(q);
    else if (strcmp(c, "pitch") == 0)
        case_pitch(q);
    else if (strcmp(c, "vmm") == 0)
        case_vmm(q);
    else if (strcmp(c, "multidev") == 0)
        case_multidev(q);
    else if (strcmp(c, "fork") == 0)
        case_fork(q);
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return t_finish(c);
}
