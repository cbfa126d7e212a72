/*
 * libhcs_interceptor.so - enforce a container's VRAM quota inside the container (preloaded from
 * /etc/ld.so.preload and LD_PRELOAD).
 *
 * Every device-memory allocation of CUDA (driver API), Ascend ACL, Hygon HIP and Cambricon CNRT is
 * checked against the per-device quota before it reaches the vendor library, and accounted in the
 * container's ledger, kept by the kernel as byte-range locks (region.c); memory queries (cuMemGetInfo,
 * cuDeviceTotalMem, NVML, aclrtGetMemInfo, hipMemGetInfo, cnrtMemGetInfo) report the quota.
 * Entry points that bypass symbol interposition are covered too: dlsym (a trampoline that keeps
 * the caller's return address, so RTLD_NEXT lookups of other symbols keep their meaning) and
 * cuGetProcAddress / cuGetProcAddress_v2 (the pointer handed back is the hook's).
 *
 * Managed container (the node agent mounted the quota file at HCS_FIXED_QUOTA_FILE, and/or
 * /etc/ld.so.preload names this library): the quota comes from that fixed, read-only file and the
 * ledger from HCS_FIXED_LEDGER_DIR; no environment variable changes either. Development mode
 * (neither present): HCS_QUOTA_FILE or HCS_VRAM_QUOTA, HCS_SHM_DIR. HCS_INTERCEPTOR_LOG in both.
 * dlmopen() into a new link-map namespace is refused while a quota is configured: a vendor
 * runtime loaded there would not see the hooks.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000 /* linux/stat.h, Linux 5.8 */
#endif

#include "compute.h"
#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "hooks_extra.h"
#include "ptrmap.h"
#include "quota.h"
#include "region.h"
#include "synctime.h"

#define HCS_EXPORT __attribute__((visibility("default")))
#define HCS_HIDDEN __attribute__((visibility("hidden")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HOT static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ hooked symbols */

enum hcs_lib {
    LIB_CUDA, LIB_NVML, LIB_ACL, LIB_HIP, LIB_CNRT, LIB_DCMI, LIB_RSMI, LIB_CNDEV,
    LIB_CNDRV, LIB_NNOP, /* compute limits: Cambricon's driver API, CANN's aclnn executor */
    LIB_COUNT
};

static const char *const lib_names[LIB_COUNT][3] = {
    [LIB_CUDA] = {"libcuda.so.1", "libcuda.so", NULL},
    [LIB_NVML] = {"libnvidia-ml.so.1", "libnvidia-ml.so", NULL},
    [LIB_ACL] = {"libascendcl.so", NULL, NULL},
    [LIB_HIP] = {"libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"},
    [LIB_CNRT] = {"libcnrt.so", NULL, NULL},
    [LIB_DCMI] = {"libdcmi.so", NULL, NULL},
    [LIB_RSMI] = {"librocm_smi64.so", "librocm_smi64.so.2", "librocm_smi64.so.1"},
    [LIB_CNDEV] = {"libcndev.so", NULL, NULL},
    [LIB_CNDRV] = {"libcndrv.so", NULL, NULL},
    [LIB_NNOP] = {"libnnopbase.so", NULL, NULL},
};

/* X(name, lib, hooked): hooked=1 for functions this library exports and replaces, 0 for real
 * functions it only calls. */
#define HCS_SYMBOLS(X)                                                                                   \
    X(cuMemAlloc_v2, LIB_CUDA, 1)                                                                        \
    X(cuMemAllocPitch_v2, LIB_CUDA, 1)                                                                   \
    X(cuMemAllocManaged, LIB_CUDA, 1)                                                                    \
    X(cuMemAllocAsync, LIB_CUDA, 1)                                                                      \
    X(cuMemAllocAsync_ptsz, LIB_CUDA, 1)                                                                 \
    X(cuMemAllocFromPoolAsync, LIB_CUDA, 1)                                                              \
    X(cuMemAllocFromPoolAsync_ptsz, LIB_CUDA, 1)                                                         \
    X(cuMemFree_v2, LIB_CUDA, 1)                                                                         \
    X(cuMemFreeAsync, LIB_CUDA, 1)                                                                       \
    X(cuMemFreeAsync_ptsz, LIB_CUDA, 1)                                                                  \
    X(cuMemCreate, LIB_CUDA, 1)                                                                          \
    X(cuMemRelease, LIB_CUDA, 1)                                                                         \
    X(cuMemGetInfo_v2, LIB_CUDA, 1)                                                                      \
    X(cuDeviceTotalMem_v2, LIB_CUDA, 1)                                                                  \
    X(cuGetProcAddress, LIB_CUDA, 1)                                                                     \
    X(cuGetProcAddress_v2, LIB_CUDA, 1)                                                                  \
    X(cuCtxGetDevice, LIB_CUDA, 0)                                                                       \
    X(cuDeviceGetUuid, LIB_CUDA, 0)                                                                      \
    X(nvmlDeviceGetMemoryInfo, LIB_NVML, 1)                                                              \
    X(nvmlDeviceGetMemoryInfo_v2, LIB_NVML, 1)                                                           \
    X(nvmlDeviceGetIndex, LIB_NVML, 0)                                                                   \
    X(nvmlDeviceGetUUID, LIB_NVML, 0)                                                                    \
    X(aclrtMalloc, LIB_ACL, 1)                                                                           \
    X(aclrtMallocCached, LIB_ACL, 1)                                                                     \
    X(aclrtFree, LIB_ACL, 1)                                                                             \
    X(aclrtGetMemInfo, LIB_ACL, 1)                                                                       \
    X(aclrtGetDevice, LIB_ACL, 0)                                                                        \
    X(hipMalloc, LIB_HIP, 1)                                                                             \
    X(hipMallocManaged, LIB_HIP, 1)                                                                      \
    X(hipMallocPitch, LIB_HIP, 1)                                                                        \
    X(hipMallocAsync, LIB_HIP, 1)                                                                        \
    X(hipFree, LIB_HIP, 1)                                                                               \
    X(hipFreeAsync, LIB_HIP, 1)                                                                          \
    X(hipMemGetInfo, LIB_HIP, 1)                                                                         \
    X(hipGetDevice, LIB_HIP, 0)                                                                          \
    X(cnrtMalloc, LIB_CNRT, 1)                                                                           \
    X(cnrtFree, LIB_CNRT, 1)                                                                             \
    X(cnrtMemGetInfo, LIB_CNRT, 1)                                                                       \
    X(cnrtGetDevice, LIB_CNRT, 0)                                                                        \
    HCS_SYMBOLS_EXTRA(X)

/* Kernel launches (compute limits, compute_hooks.inc) and what the controller calls. */
#define HCS_LAUNCH_SYMBOLS(X)                                                                            \
    X(cuLaunchKernel, LIB_CUDA, 1)                                                                       \
    X(cuLaunchKernel_ptsz, LIB_CUDA, 1)                                                                  \
    X(cuLaunchKernelEx, LIB_CUDA, 1)                                                                     \
    X(cuLaunchCooperativeKernel, LIB_CUDA, 1)                                                            \
    X(cuGraphLaunch, LIB_CUDA, 1)                                                                        \
    X(aclrtLaunchKernel, LIB_ACL, 1)                                                                     \
    X(hipLaunchKernel, LIB_HIP, 1)                                                                       \
    X(hipModuleLaunchKernel, LIB_HIP, 1)                                                                 \
    X(hipExtLaunchKernel, LIB_HIP, 1)                                                                    \
    X(hipGraphLaunch, LIB_HIP, 1)                                                                        \
    X(cnrtInvokeKernel, LIB_CNRT, 1)                                                                     \
    X(aclopExecute, LIB_ACL, 1)                                                                          \
    X(aclopExecuteV2, LIB_ACL, 1)                                                                        \
    X(aclopExecWithHandle, LIB_ACL, 1)                                                                   \
    X(cnInvokeKernel, LIB_CNDRV, 1)                                                                      \
    X(cnCtxGetDevice, LIB_CNDRV, 0)

enum hcs_sym_id {
#define X(name, lib, hooked) SYM_##name,
    HCS_SYMBOLS(X)
    HCS_LAUNCH_SYMBOLS(X)
#undef X
        SYM_COUNT
};

struct hcs_sym {
    const char *name;
    int lib;
    void *hook; /* NULL when only called, never replaced */
};

static const struct hcs_sym syms[SYM_COUNT] = {
#define X(name, lib_, hooked) [SYM_##name] = {#name, lib_, (hooked) ? (void *)&name : NULL},
    HCS_SYMBOLS(X)
    HCS_LAUNCH_SYMBOLS(X)
#undef X
};

/* ------------------------------------------------------------------ process state */

struct hcs_state {
    _Atomic int ready; /* 0 not initialised, 2 ready */
    pthread_mutex_t init_lock;
    bool enforcing;   /* a quota is configured and the region is attached */
    bool fail_closed; /* configuration broken: refuse every device allocation */
    int log_level;
    struct hcs_quota quota;
    struct hcs_region region;
    struct hcs_ptrmap map;
    _Atomic(void *) lib_handle[LIB_COUNT];
    _Atomic(void *) real[SYM_COUNT];
    /* Managed container with the agent's device list (<ledger dir>/devices, "<index> <uuid>"): a
     * CUDA ordinal is mapped to the agent's index by the device's UUID, so CUDA_VISIBLE_DEVICES set
     * inside the container (reordered, or one GPU per rank) neither moves a GPU to another quota
     * line nor splits its ledger. */
    bool uuid_map;
    uint8_t dev_uuid[HCS_MAX_DEVICES][16];
    bool dev_known[HCS_MAX_DEVICES];
    _Atomic int cuda_canon[HCS_MAX_DEVICES]; /* ordinal -> index; CANON_UNSET until looked up */
    /* where the ledger was found, for re-attaching after a restore (on_ledger_moved) */
    bool managed;
    char ledger_dir[4096];
};

#define CANON_UNSET (-3)
#define DEV_FOREIGN (-2) /* a device the agent did not give this container: refused */

static struct hcs_state g = {.init_lock = PTHREAD_MUTEX_INITIALIZER, .log_level = 1};

typedef void *(*dlsym_fn)(void *, const char *);
HCS_HIDDEN __attribute__((used)) _Atomic(dlsym_fn) hcs_real_dlsym_ptr;
typedef void *(*dlmopen_fn)(Lmid_t, const char *, int);
HCS_HIDDEN __attribute__((used)) dlmopen_fn hcs_real_dlmopen_ptr;

/* Fixed in-container paths of a managed container (hcs/devices/injection.py mounts them). */
#define HCS_FIXED_QUOTA_FILE "/var/run/hcs/quota"
#define HCS_FIXED_LEDGER_DIR "/var/run/hcs/shm"
#define HCS_LD_SO_PRELOAD "/etc/ld.so.preload"
#define HCS_LIB_NAME "libhcs_interceptor.so"

/* Set while a hook runs the real function: a vendor library that calls its own exported
 * allocation symbols internally is then passed straight through instead of being counted twice. */
static __thread int in_hook __attribute__((tls_model("initial-exec")));

static void hcs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hcs_log(int level, const char *fmt, ...) {
    if (level > g.log_level)
        return;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "hcs-interceptor[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof buf)
        n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf - 1)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
}

/* The dlsym path can run before a sanitizer runtime has initialised (ASan resolves its own
 * interceptors through dlsym from its constructor), so it is built without instrumentation and
 * calls no intercepted libc function. */
#define HCS_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize("undefined")))

HCS_NO_SANITIZE static dlsym_fn real_dlsym(void) {
    dlsym_fn f = atomic_load_explicit(&hcs_real_dlsym_ptr, memory_order_acquire);
    if (LIKELY(f != NULL))
        return f;
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.4", NULL};
    for (int i = 0; versions[i] != NULL && f == NULL; i++)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (f == NULL) {
        hcs_log(0, "cannot find the C library's dlsym (dlvsym failed); this C library is unsupported");
        abort();
    }
    atomic_store_explicit(&hcs_real_dlsym_ptr, f, memory_order_release);
    return f;
}

static void *lib_handle(int lib) {
    void *h = atomic_load_explicit(&g.lib_handle[lib], memory_order_acquire);
    if (h != NULL)
        return h;
    for (int i = 0; i < 3 && h == NULL && lib_names[lib][i] != NULL; i++) {
        h = dlopen(lib_names[lib][i], RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
        if (h == NULL)
            h = dlopen(lib_names[lib][i], RTLD_NOW | RTLD_LOCAL);
    }
    if (h == NULL)
        return NULL; /* absent: not hooked; retried on the next call */
    void *expected = NULL;
    if (!atomic_compare_exchange_strong(&g.lib_handle[lib], &expected, h)) {
        dlclose(h);
        h = expected;
    }
    return h;
}

static void *resolve_real(int id) {
    void *h = lib_handle(syms[id].lib);
    if (h == NULL)
        return NULL;
    void *p = real_dlsym()(h, syms[id].name);
    if (p == NULL || (syms[id].hook != NULL && p == syms[id].hook))
        return NULL;
    atomic_store_explicit(&g.real[id], p, memory_order_release);
    return p;
}

static inline void *real_fn(int id) {
    void *p = atomic_load_explicit(&g.real[id], memory_order_acquire);
    if (LIKELY(p != NULL))
        return p;
    return resolve_real(id);
}

#define REAL(name) ((__typeof__(&name))real_fn(SYM_##name))

/* ------------------------------------------------------------------ initialisation */

/* One read of a small text file the agent wrote (fd from open/openat; closed here): its bytes,
 * NUL-terminated in buf, and their count; <= 0 when it could not be opened or read, or is empty. */
static ssize_t read_small_file(int fd, char *buf, size_t size) {
    if (fd < 0)
        return -1;
    ssize_t n;
    do {
        n = read(fd, buf, size - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n > 0)
        buf[n] = '\0';
    return n;
}

/* True when /etc/ld.so.preload names this library: the node agent mounted it (read-only) into a
 * managed container. Its absence is no proof of anything (development shells have none). */
static bool preload_file_names_us(void) {
    char buf[4096];
    if (read_small_file(open(HCS_LD_SO_PRELOAD, O_RDONLY | O_CLOEXEC), buf, sizeof buf) <= 0)
        return false;
    return strstr(buf, HCS_LIB_NAME) != NULL;
}

/* True when the open file fd (named path in messages) is the root of a read-only mount: what the
 * container runtime makes of the agent's read-only bind mounts, and what a process without
 * CAP_SYS_ADMIN can neither create nor undo. A file or directory the container made itself (say
 * after renaming /var/run/hcs away) is not. Checked on the descriptor that is then used, so a
 * rename between the check and the use changes nothing. Kernels before 5.8 lack
 * STATX_ATTR_MOUNT_ROOT: then "on another filesystem than its parent directory". */
static bool readonly_mount_root(int fd, const char *path, char *why, size_t whylen) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_INO, &sx) != 0) {
        snprintf(why, whylen, "%s: statx: %s", path, strerror(errno));
        return false;
    }
    bool root;
    if (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) {
        root = (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
    } else {
        char parent[256];
        snprintf(parent, sizeof parent, "%s/..", path);
        struct stat a, b;
        root = fstat(fd, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
    }
    struct statvfs vf;
    bool ro = fstatvfs(fd, &vf) == 0 && (vf.f_flag & ST_RDONLY);
    if (!root || !ro) {
        snprintf(why, whylen, "%s is not a read-only mount (%s): not the node agent's", path,
                 !root ? "not a mount point" : "writable");
        return false;
    }
    return true;
}

static int hexval(int c) {
    return (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
         : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

/* "GPU-5f0c2f3c-...." / "MIG-..." (or without the prefix) -> 16 bytes; false unless 32 hex digits */
static bool parse_uuid(const char *s, size_t n, uint8_t out[16]) {
    if (n >= 4 && (memcmp(s, "GPU-", 4) == 0 || memcmp(s, "MIG-", 4) == 0)) {
        s += 4;
        n -= 4;
    }
    int nib = 0;
    memset(out, 0, 16);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '-')
            continue;
        int v = hexval((unsigned char)s[i]);
        if (v < 0 || nib >= 32)
            return false;
        out[nib / 2] = (uint8_t)(out[nib / 2] | (nib % 2 ? v : v << 4));
        nib++;
    }
    return nib == 32;
}

/* The agent's device list in the (read-only) ledger dir: "<index> <uuid>" per line. Absent (an
 * older agent, or no NVIDIA devices): CUDA ordinals are taken as they are. */
static void load_device_list(int dfd) {
    g.uuid_map = false;
    memset(g.dev_known, 0, sizeof g.dev_known);
    for (int i = 0; i < HCS_MAX_DEVICES; i++)
        atomic_store(&g.cuda_canon[i], CANON_UNSET);
    char buf[4096];
    ssize_t n = read_small_file(openat(dfd, "devices", O_RDONLY | O_CLOEXEC | O_NOFOLLOW), buf, sizeof buf);
    if (n <= 0)
        return;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *end;
        long idx = strtol(line, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        size_t len = strcspn(end, " \t\r#");
        if (end == line || idx < 0 || idx >= HCS_MAX_DEVICES || !parse_uuid(end, len, g.dev_uuid[idx]))
            continue; /* other vendors' ids and comments: not CUDA UUIDs */
        g.dev_known[idx] = true;
        g.uuid_map = true;
    }
}

static int index_of_uuid(const uint8_t u[16]) {
    for (int i = 0; i < HCS_MAX_DEVICES; i++)
        if (g.dev_known[i] && memcmp(g.dev_uuid[i], u, 16) == 0)
            return i;
    return DEV_FOREIGN;
}

/* Open the agent's quota file and ledger dir at their fixed paths, then check what was opened: the
 * agent's read-only mounts, nothing else. On false both are closed (-1) and why says what failed. */
static bool open_fixed_mounts(int *qfd, int *dfd, char *why, size_t whylen) {
    *qfd = open(HCS_FIXED_QUOTA_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    *dfd = open(HCS_FIXED_LEDGER_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    bool ok = *qfd >= 0 && *dfd >= 0;
    if (!ok)
        snprintf(why, whylen, "%s: %s", *qfd < 0 ? HCS_FIXED_QUOTA_FILE : HCS_FIXED_LEDGER_DIR, strerror(errno));
    ok = ok && readonly_mount_root(*qfd, HCS_FIXED_QUOTA_FILE, why, whylen) &&
         readonly_mount_root(*dfd, HCS_FIXED_LEDGER_DIR, why, whylen);
    if (!ok) {
        if (*qfd >= 0)
            close(*qfd);
        if (*dfd >= 0)
            close(*dfd);
        *qfd = *dfd = -1;
    }
    return ok;
}

/* The ledger descriptor names another file than the one opened: this process was restored from a
 * checkpoint (CRIU re-opens files by path) into a new container - another device, another ledger,
 * perhaps another quota. Re-read the quota and device list the new container was given (managed:
 * the agent's read-only files again, checked as at start; development: the same environment),
 * then move the accounting (hcs_region_move_locked: a fresh slot in the new ledger holding this
 * process's live allocations; the old description is dropped). Called with the region's mutex
 * held; false leaves the region broken (every further allocation refused), as before. */
static bool on_ledger_moved(struct hcs_region *r) {
    char err[4608];
    struct hcs_quota q;
    int rc;
    if (g.managed) {
        int qfd, dfd;
        char why[512] = "";
        bool ok = open_fixed_mounts(&qfd, &dfd, why, sizeof why);
        rc = ok ? hcs_quota_load_fd(&q, qfd, HCS_FIXED_QUOTA_FILE, err, sizeof err) : -1;
        if (!ok)
            snprintf(err, sizeof err, "%s", why);
        if (rc == 0)
            rc = hcs_region_move_locked(r, dfd, HCS_FIXED_LEDGER_DIR, false, err, sizeof err);
        if (rc == 0)
            load_device_list(dfd);
        if (qfd >= 0)
            close(qfd);
        if (dfd >= 0)
            close(dfd);
    } else {
        rc = hcs_quota_load(&q, err, sizeof err);
        if (rc == 0 && !q.configured) {
            snprintf(err, sizeof err, "no quota configured any more");
            rc = -1;
        }
        if (rc == 0)
            rc = hcs_region_move_locked(r, AT_FDCWD, g.ledger_dir, true, err, sizeof err);
    }
    if (rc != 0) {
        hcs_log(0, "the VRAM ledger changed under this process (restored into a new container?) and re-attaching "
                "failed: %s; every further device allocation is refused", err);
        return false;
    }
    for (int d = 0; d < HCS_MAX_DEVICES; d++) {
        atomic_store_explicit((_Atomic uint64_t *)&g.quota.limit[d], q.limit[d], memory_order_relaxed);
        uint64_t used = atomic_load(&r->used[d]);
        if (used > 0)
            hcs_log(used > q.limit[d] ? 1 : 2, "restored: device %d: %llu bytes of live allocations re-registered "
                    "in the new ledger (quota %llu%s)", d, (unsigned long long)used, (unsigned long long)q.limit[d],
                    used > q.limit[d] ? ": over it, so every further allocation is refused until enough is freed" : "");
    }
    snprintf(g.quota.source, sizeof g.quota.source, "%s", q.source);
    hcs_log(1, "restored into a new container: re-attached to the VRAM ledger %s/%s (slot %d), quota from %s",
            g.ledger_dir, HCS_LEDGER_FILE, r->slot, q.source);
    return true;
}

static void init_locked(void) {
    const char *lv = getenv("HCS_INTERCEPTOR_LOG");
    if (lv != NULL && *lv >= '0' && *lv <= '9')
        g.log_level = *lv - '0';
    char err[4608];
    g.enforcing = false;
    g.fail_closed = false;
    struct stat st;
    bool fixed = stat(HCS_FIXED_QUOTA_FILE, &st) == 0 && S_ISREG(st.st_mode);
    bool managed = fixed || preload_file_names_us();
    const char *dir;
    int ledger_dirfd = AT_FDCWD;
    int rc;
    if (managed) {
        /* The agent's files at fixed paths decide; no environment variable is even read. */
        if (!fixed) {
            hcs_log(0, "%s names this library but %s is missing: a managed container without its quota "
                    "file (was /var/run/hcs moved or hidden?); every device allocation is refused",
                    HCS_LD_SO_PRELOAD, HCS_FIXED_QUOTA_FILE);
            g.fail_closed = true;
            return;
        }
        int qfd, dfd;
        char why[512] = "";
        bool ok = open_fixed_mounts(&qfd, &dfd, why, sizeof why);
        if (!ok) {
            hcs_log(0, "%s; every device allocation is refused", why);
            g.fail_closed = true;
            return;
        }
        rc = hcs_quota_load_fd(&g.quota, qfd, HCS_FIXED_QUOTA_FILE, err, sizeof err);
        close(qfd);
        if (rc != 0) {
            hcs_log(0, "%s; every device allocation is refused until this is fixed", err);
            close(dfd);
            g.fail_closed = true;
            return;
        }
        if (getenv("HCS_QUOTA_FILE") != NULL || getenv("HCS_VRAM_QUOTA") != NULL || getenv("HCS_SHM_DIR") != NULL)
            hcs_log(2, "managed container: HCS_QUOTA_FILE / HCS_VRAM_QUOTA / HCS_SHM_DIR are ignored");
        dir = HCS_FIXED_LEDGER_DIR;
        ledger_dirfd = dfd;
        load_device_list(dfd);
    } else {
        if (hcs_quota_load(&g.quota, err, sizeof err) != 0) {
            hcs_log(0, "%s; every device allocation is refused until this is fixed", err);
            g.fail_closed = true;
            return;
        }
        if (!g.quota.configured) {
            hcs_log(2, "no HCS_QUOTA_FILE / HCS_VRAM_QUOTA: pass-through, nothing enforced");
            return;
        }
        dir = getenv("HCS_SHM_DIR");
        if (dir == NULL || *dir == '\0')
            dir = "/tmp";
    }
    rc = hcs_region_open_at(&g.region, ledger_dirfd, dir, !managed, err, sizeof err);
    if (ledger_dirfd != AT_FDCWD)
        close(ledger_dirfd);
    if (rc != 0) {
        hcs_log(0, "%s; every device allocation is refused until this is fixed", err);
        g.fail_closed = true;
        return;
    }
    if (hcs_region_claim_slot(&g.region, err, sizeof err) != 0) {
        hcs_log(0, "%s; every device allocation is refused until this is fixed", err);
        hcs_region_close(&g.region);
        g.fail_closed = true;
        return;
    }
    g.managed = managed;
    snprintf(g.ledger_dir, sizeof g.ledger_dir, "%s", dir);
    g.region.on_moved = on_ledger_moved;
    hcs_ptrmap_init(&g.map);
    g.enforcing = true;
    hcs_log(2, "%s: quota from %s, ledger %s/%s slot %d", managed ? "managed" : "development", g.quota.source,
            dir, HCS_LEDGER_FILE, g.region.slot);
}

static void compute_init(void); /* compute_hooks.inc */

static struct hcs_state *state_slow(void) {
    pthread_mutex_lock(&g.init_lock);
    if (atomic_load_explicit(&g.ready, memory_order_relaxed) != 2) {
        init_locked();
        compute_init();
        atomic_store_explicit(&g.ready, 2, memory_order_release);
    }
    pthread_mutex_unlock(&g.init_lock);
    return &g;
}

static inline struct hcs_state *state(void) {
    if (LIKELY(atomic_load_explicit(&g.ready, memory_order_acquire) == 2))
        return &g;
    return state_slow();
}

static void atfork_child(void) {
    /* The child is a new process: it needs its own slot (and liveness lock) and owns none of the
     * parent's allocations. Drop the inherited mapping/fd (the parent keeps its own) and start over
     * lazily on the child's first call. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g.init_lock = fresh;
    if (g.enforcing) {
        hcs_region_close(&g.region);
        hcs_ptrmap_reset_after_fork(&g.map);
    }
    g.enforcing = false;
    atomic_store_explicit(&g.ready, 0, memory_order_relaxed);
}

static void *dlmopen_unavailable(Lmid_t lmid, const char *file, int flags) {
    (void)lmid;
    (void)file;
    (void)flags;
    return NULL;
}

__attribute__((constructor)) static void hcs_ctor(void) {
    (void)real_dlsym();
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.3.4", "GLIBC_2.17", NULL};
    dlmopen_fn f = NULL;
    for (int i = 0; versions[i] != NULL && f == NULL; i++)
        f = (dlmopen_fn)dlvsym(RTLD_NEXT, "dlmopen", versions[i]);
    hcs_real_dlmopen_ptr = f != NULL ? f : dlmopen_unavailable;
    pthread_atfork(NULL, NULL, atfork_child);
}

/* ------------------------------------------------------------------ accounting helpers */

enum admit_result { ADMIT_PASS, ADMIT_OK, ADMIT_DENY };

static inline uint64_t limit_of(const struct hcs_state *s, int dev) {
    return (dev >= 0 && dev < HCS_MAX_DEVICES) ? s->quota.limit[dev] : HCS_UNLIMITED;
}

/* Decide on an allocation of size bytes on device dev; reserves on ADMIT_OK. */
HOT enum admit_result admit(struct hcs_state *s, int dev, uint64_t size, const char *api) {
    if (!s->enforcing)
        return s->fail_closed ? ADMIT_DENY : ADMIT_PASS;
    uint64_t limit = limit_of(s, dev);
    if (limit == HCS_UNLIMITED)
        return ADMIT_PASS;
    if (hcs_region_reserve(&s->region, dev, size, limit))
        return ADMIT_OK;
    if (UNLIKELY(atomic_exchange(&s->region.reattached, false))) { /* restored: the new container's quota */
        limit = limit_of(s, dev);
        if (limit == HCS_UNLIMITED || hcs_region_reserve(&s->region, dev, size, limit))
            return limit == HCS_UNLIMITED ? ADMIT_PASS : ADMIT_OK;
    }
    if (s->log_level >= 2) {
        bool ok;
        uint64_t used = hcs_region_used(&s->region, dev, &ok);
        hcs_log(2, "%s: device %d: %llu bytes refused: container uses %llu of its %llu-byte quota%s", api, dev,
                (unsigned long long)size, (unsigned long long)used, (unsigned long long)limit,
                ok ? "" : " (ledger unreadable: failing closed)");
    }
    return ADMIT_DENY;
}

HOT void unreserve(struct hcs_state *s, int dev, uint64_t size) {
    hcs_region_release(&s->region, dev, size, limit_of(s, dev));
}

HOT void track(struct hcs_state *s, uint64_t key, enum hcs_kind kind, uint64_t size, int dev) {
    struct hcs_ptr_entry old;
    enum hcs_put_result r = hcs_ptrmap_put(&s->map, key, (uint32_t)kind, size, (uint32_t)dev, &old);
    if (LIKELY(r == HCS_PUT_NEW))
        return;
    if (r == HCS_PUT_REPLACED) {
        /* the runtime handed out an address we still had: its earlier free bypassed the hooks (e.g. a
         * v1 entry point), so that earlier charge is stale */
        unreserve(s, (int)old.dev, old.size);
        hcs_log(2, "address 0x%llx reused without a hooked free; %llu stale bytes returned",
                (unsigned long long)key, (unsigned long long)old.size);
        return;
    }
    hcs_log(1, "out of host memory tracking an allocation; its quota share is kept until exit");
}

/* Called after the real free: give the quota back, or restore the entry if the free failed. */
HOT void untrack_done(struct hcs_state *s, bool known, bool ok, uint64_t key, enum hcs_kind kind,
                         uint64_t size, uint32_t dev) {
    if (!known)
        return;
    if (ok)
        unreserve(s, (int)dev, size);
    else
        (void)hcs_ptrmap_put(&s->map, key, (uint32_t)kind, size, dev, NULL); /* free failed: still charged */
}

HOT bool take(struct hcs_state *s, uint64_t key, enum hcs_kind kind, uint64_t *size,
                        uint32_t *dev) {
    if (!s->enforcing || key == 0)
        return false;
    return hcs_ptrmap_take(&s->map, key, (uint32_t)kind, size, dev);
}

/* Container usage and the quota-limited view of (free, total) for a device. */
static void limit_view(struct hcs_state *s, int dev, uint64_t *free_b, uint64_t *total_b) {
    if (!s->enforcing)
        return;
    (void)hcs_region_check(&s->region); /* restored into a new container: re-attach before answering */
    if (dev == DEV_FOREIGN) { /* not this container's device: nothing of it is available */
        *free_b = 0;
        return;
    }
    uint64_t limit = limit_of(s, dev);
    if (limit == HCS_UNLIMITED)
        return;
    bool ok;
    uint64_t used = hcs_region_used(&s->region, dev, &ok); /* dead processes' leases are already gone */
    uint64_t total = *total_b < limit ? *total_b : limit; /* never report more than the card has */
    uint64_t free_q = total > used ? total - used : 0;    /* never an error, never negative */
    *free_b = *free_b < free_q ? *free_b : free_q;
    *total_b = total;
}

static inline uint64_t pitch_estimate(uint64_t width, uint64_t height, bool *overflow) {
    if (height != 0 && width > UINT64_MAX / height) {
        *overflow = true;
        return 0;
    }
    *overflow = false;
    return width * height;
}

/* Pitch allocations: reserve width*height, then settle the driver-chosen pitch*height. */
static bool settle_pitch(struct hcs_state *s, int dev, uint64_t reserved, uint64_t actual) {
    if (actual <= reserved) {
        if (actual < reserved)
            unreserve(s, dev, reserved - actual);
        return true;
    }
    return hcs_region_reserve(&s->region, dev, actual - reserved, limit_of(s, dev));
}

/* ------------------------------------------------------------------ CUDA driver API */

static __attribute__((noinline)) int cuda_canon_slow(int ordinal) {
    __typeof__(&cuDeviceGetUuid) f = REAL(cuDeviceGetUuid);
    CUuuid u;
    int idx = DEV_FOREIGN;
    if (f != NULL && f(&u, ordinal) == CUDA_SUCCESS)
        idx = index_of_uuid((const uint8_t *)u.bytes);
    if (idx == DEV_FOREIGN)
        hcs_log(1, "CUDA device %d is not one of the devices the node agent gave this container; its "
                "allocations are refused", ordinal);
    atomic_store_explicit(&g.cuda_canon[ordinal], idx, memory_order_release);
    return idx;
}

/* The agent's index of the device behind a CUDA ordinal (the ordinal itself without a device list). */
HOT int cuda_canon(int ordinal) {
    if (LIKELY(!g.uuid_map) || ordinal < 0)
        return ordinal;
    if (ordinal >= HCS_MAX_DEVICES)
        return DEV_FOREIGN;
    int c = atomic_load_explicit(&g.cuda_canon[ordinal], memory_order_acquire);
    return LIKELY(c != CANON_UNSET) ? c : cuda_canon_slow(ordinal);
}

HOT int cuda_device(void) {
    __typeof__(&cuCtxGetDevice) f = REAL(cuCtxGetDevice);
    CUdevice d;
    if (f == NULL || f(&d) != CUDA_SUCCESS)
        return -1;
    return cuda_canon(d);
}

static bool pools_gave_back(struct hcs_state *s); /* hooks_extra.c */

typedef CUresult (*cu_alloc_call)(const void *args, CUdeviceptr *dptr);

HOT CUresult cuda_alloc(struct hcs_state *s, int dev, uint64_t size, CUdeviceptr *dptr,
                           cu_alloc_call call, const void *args, const char *api) {
    if (dev == DEV_FOREIGN)
        return CUDA_ERROR_OUT_OF_MEMORY; /* not a device of this container: fail closed */
    if (dev < 0)
        return call(args, dptr); /* no context: the driver reports the error */
    enum admit_result a = admit(s, dev, size, api);
    if (a == ADMIT_DENY && pools_gave_back(s)) /* a pool released memory at a sync we did not see */
        a = admit(s, dev, size, api);
    if (a == ADMIT_DENY)
        return CUDA_ERROR_OUT_OF_MEMORY;
    in_hook++;
    CUresult rc = call(args, dptr);
    in_hook--;
    if (a == ADMIT_OK) {
        if (rc == CUDA_SUCCESS)
            track(s, (uint64_t)*dptr, HCS_KIND_CUDA_PTR, size, dev);
        else
            unreserve(s, dev, size);
    }
    return rc;
}

struct cu_alloc_args {
    void *fn;
    size_t size;
    unsigned int flags;
    CUstream stream;
    CUmemoryPool pool;
};

HOT CUresult call_alloc_v2(const void *p, CUdeviceptr *d) {
    const struct cu_alloc_args *a = p;
    return ((__typeof__(&cuMemAlloc_v2))a->fn)(d, a->size);
}
static CUresult call_alloc_managed(const void *p, CUdeviceptr *d) {
    const struct cu_alloc_args *a = p;
    return ((__typeof__(&cuMemAllocManaged))a->fn)(d, a->size, a->flags);
}
#define CU_REAL_OR_FAIL(name)                                                                            \
    __typeof__(&name) real = REAL(name);                                                                 \
    if (UNLIKELY(real == NULL))                                                                          \
        return CUDA_ERROR_NOT_INITIALIZED;

HCS_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    CU_REAL_OR_FAIL(cuMemAlloc_v2);
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return real(dptr, bytesize);
    struct cu_alloc_args a = {.fn = (void *)real, .size = bytesize};
    return cuda_alloc(s, cuda_device(), bytesize, dptr, call_alloc_v2, &a, "cuMemAlloc");
}

HCS_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    CU_REAL_OR_FAIL(cuMemAllocManaged);
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return real(dptr, bytesize, flags);
    struct cu_alloc_args a = {.fn = (void *)real, .size = bytesize, .flags = flags};
    return cuda_alloc(s, cuda_device(), bytesize, dptr, call_alloc_managed, &a, "cuMemAllocManaged");
}

/* cuMemAllocAsync(_ptsz) and cuMemAllocFromPoolAsync(_ptsz): hooks_extra.c (pools are charged what
 * they hold from the device) */

HCS_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                       unsigned int ElementSizeBytes) {
    CU_REAL_OR_FAIL(cuMemAllocPitch_v2);
    struct hcs_state *s = state();
    if (in_hook || (!s->enforcing && !s->fail_closed))
        return real(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    int dev = cuda_device();
    if (dev == DEV_FOREIGN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (dev < 0)
        return real(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    bool ovf;
    uint64_t est = pitch_estimate(WidthInBytes, Height, &ovf);
    if (ovf)
        return CUDA_ERROR_OUT_OF_MEMORY;
    enum admit_result a = admit(s, dev, est, "cuMemAllocPitch");
    if (a == ADMIT_DENY)
        return CUDA_ERROR_OUT_OF_MEMORY;
    in_hook++;
    CUresult rc = real(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    in_hook--;
    if (a != ADMIT_OK)
        return rc;
    if (rc != CUDA_SUCCESS) {
        unreserve(s, dev, est);
        return rc;
    }
    uint64_t actual = (uint64_t)*pPitch * Height;
    if (!settle_pitch(s, dev, est, actual)) {
        __typeof__(&cuMemFree_v2) f = REAL(cuMemFree_v2);
        if (f != NULL) {
            in_hook++;
            (void)f(*dptr);
            in_hook--;
        }
        unreserve(s, dev, est);
        *dptr = 0;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    track(s, (uint64_t)*dptr, HCS_KIND_CUDA_PTR, actual, dev);
    return rc;
}

static void pool_ptr_freed(struct hcs_state *s, CUdeviceptr p, bool sync);
static void pools_settle_all(struct hcs_state *s);
static void *hook_for_name_extra(const char *symbol, int version, cuuint64_t flags);

HOT CUresult free_common(void *real, CUdeviceptr dptr, bool async, CUstream stream) {
    struct hcs_state *s = state();
    uint64_t size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, (uint64_t)dptr, HCS_KIND_CUDA_PTR, &size, &dev);
    CUresult rc = async ? ((__typeof__(&cuMemFreeAsync))real)(dptr, stream)
                        : ((__typeof__(&cuMemFree_v2))real)(dptr);
    untrack_done(s, known, rc == CUDA_SUCCESS, (uint64_t)dptr, HCS_KIND_CUDA_PTR, size, dev);
    if (!known && rc == CUDA_SUCCESS)
        pool_ptr_freed(s, dptr, !async); /* a block of a stream-ordered pool (hooks_extra.c) */
    return rc;
}

HCS_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    CU_REAL_OR_FAIL(cuMemFree_v2);
    return free_common((void *)real, dptr, false, NULL);
}

HCS_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemFreeAsync);
    return free_common((void *)real, dptr, true, hStream);
}

HCS_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
    CU_REAL_OR_FAIL(cuMemFreeAsync_ptsz);
    return free_common((void *)real, dptr, true, hStream);
}

/* cuMemCreate / cuMemRelease / cuMemMap / cuMemUnmap: hooks_extra.c */

HCS_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    CU_REAL_OR_FAIL(cuMemGetInfo_v2);
    CUresult rc = real(free_bytes, total_bytes);
    struct hcs_state *s = state();
    pools_settle_all(s);
    if (rc != CUDA_SUCCESS || free_bytes == NULL || total_bytes == NULL || !s->enforcing)
        return rc;
    uint64_t f = *free_bytes, t = *total_bytes;
    limit_view(s, cuda_device(), &f, &t);
    *free_bytes = (size_t)f;
    *total_bytes = (size_t)t;
    return rc;
}

HCS_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CU_REAL_OR_FAIL(cuDeviceTotalMem_v2);
    CUresult rc = real(bytes, dev);
    struct hcs_state *s = state();
    if (rc == CUDA_SUCCESS && bytes != NULL && s->enforcing) {
        int idx = cuda_canon(dev);
        uint64_t limit = idx == DEV_FOREIGN ? 0 : limit_of(s, idx);
        if (limit < *bytes)
            *bytes = (size_t)limit;
    }
    return rc;
}

/* Map a function pointer the driver handed out to our hook, if it is one of the hooked functions. */
static void *hook_for_pointer(void *p) {
    if (p == NULL)
        return NULL;
    for (int id = 0; id < SYM_COUNT; id++) {
        if (syms[id].lib != LIB_CUDA || syms[id].hook == NULL)
            continue;
        if (real_fn(id) == p)
            return syms[id].hook;
    }
    /* Not one of the exported entry points we resolved: identify it by its exported name. */
    Dl_info info;
    if (dladdr(p, &info) != 0 && info.dli_saddr == p && info.dli_sname != NULL) {
        for (int id = 0; id < SYM_COUNT; id++)
            if (syms[id].lib == LIB_CUDA && syms[id].hook != NULL && strcmp(syms[id].name, info.dli_sname) == 0)
                return syms[id].hook;
    }
    return NULL;
}

/* A driver may hand out internal entry points that are not its exported symbols. Then the request
 * is matched by name, the way the driver itself versions it: base name + minimum CUDA version, and
 * the per-thread-default-stream variant when asked for. Older ABI versions (v1, 32-bit sizes) are
 * left alone. */
static const struct {
    const char *name;
    int min_version;
    int id;
    int ptsz_id; /* -1: no per-thread variant */
} proc_names[] = {
    {"cuMemAlloc", 3020, SYM_cuMemAlloc_v2, -1},
    {"cuMemAllocPitch", 3020, SYM_cuMemAllocPitch_v2, -1},
    {"cuMemAllocManaged", 6000, SYM_cuMemAllocManaged, -1},
    {"cuMemAllocAsync", 11020, SYM_cuMemAllocAsync, SYM_cuMemAllocAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, SYM_cuMemAllocFromPoolAsync, SYM_cuMemAllocFromPoolAsync_ptsz},
    {"cuMemFree", 3020, SYM_cuMemFree_v2, -1},
    {"cuMemFreeAsync", 11020, SYM_cuMemFreeAsync, SYM_cuMemFreeAsync_ptsz},
    {"cuMemCreate", 10020, SYM_cuMemCreate, -1},
    {"cuMemRelease", 10020, SYM_cuMemRelease, -1},
    {"cuMemGetInfo", 3020, SYM_cuMemGetInfo_v2, -1},
    {"cuDeviceTotalMem", 3020, SYM_cuDeviceTotalMem_v2, -1},
    {"cuGetProcAddress", 12000, SYM_cuGetProcAddress_v2, -1},
    {"cuGetProcAddress", 11030, SYM_cuGetProcAddress, -1},
    {"cuLaunchKernel", 4000, SYM_cuLaunchKernel, SYM_cuLaunchKernel_ptsz},
    {"cuLaunchKernelEx", 11060, SYM_cuLaunchKernelEx, -1},
    {"cuLaunchCooperativeKernel", 9000, SYM_cuLaunchCooperativeKernel, -1},
    {"cuGraphLaunch", 10000, SYM_cuGraphLaunch, -1},
};

static void *hook_for_name(const char *symbol, int version, cuuint64_t flags) {
    if (symbol == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof proc_names / sizeof proc_names[0]; i++) {
        if (version < proc_names[i].min_version || strcmp(proc_names[i].name, symbol) != 0)
            continue;
        int id = proc_names[i].id;
        if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && proc_names[i].ptsz_id >= 0)
            id = proc_names[i].ptsz_id;
        return real_fn(id) != NULL ? syms[id].hook : NULL; /* our hook needs the exported real one */
    }
    return hook_for_name_extra(symbol, version, flags);
}

static void *hook_for(void *p, const char *symbol, int version, cuuint64_t flags) {
    void *h = hook_for_pointer(p);
    return h != NULL ? h : hook_for_name(symbol, version, flags);
}

HCS_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    CU_REAL_OR_FAIL(cuGetProcAddress);
    CUresult rc = real(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS && pfn != NULL) {
        void *h = hook_for(*pfn, symbol, cudaVersion, flags);
        if (h != NULL)
            *pfn = h;
    }
    return rc;
}

HCS_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                        CUdriverProcAddressQueryResult *symbolStatus) {
    CU_REAL_OR_FAIL(cuGetProcAddress_v2);
    CUresult rc = real(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (rc == CUDA_SUCCESS && pfn != NULL) {
        void *h = hook_for(*pfn, symbol, cudaVersion, flags);
        if (h != NULL)
            *pfn = h;
    }
    return rc;
}

/* ------------------------------------------------------------------ NVML */

static void nvml_view(nvmlDevice_t device, uint64_t *free_b, uint64_t *total_b) {
    struct hcs_state *s = state();
    if (!s->enforcing)
        return;
    if (s->uuid_map) { /* NVML's index is not the agent's: match the UUID */
        __typeof__(&nvmlDeviceGetUUID) uuid_fn = REAL(nvmlDeviceGetUUID);
        char text[96];
        uint8_t u[16];
        int dev = DEV_FOREIGN;
        if (uuid_fn != NULL && uuid_fn(device, text, sizeof text) == NVML_SUCCESS && parse_uuid(text, strlen(text), u))
            dev = index_of_uuid(u);
        limit_view(s, dev, free_b, total_b);
        return;
    }
    __typeof__(&nvmlDeviceGetIndex) idx_fn = REAL(nvmlDeviceGetIndex);
    unsigned int idx;
    if (idx_fn == NULL || idx_fn(device, &idx) != NVML_SUCCESS)
        return;
    limit_view(s, (int)idx, free_b, total_b);
}

HCS_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    __typeof__(&nvmlDeviceGetMemoryInfo) real = REAL(nvmlDeviceGetMemoryInfo);
    if (real == NULL)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    if (rc != NVML_SUCCESS || memory == NULL)
        return rc;
    uint64_t f = memory->free, t = memory->total;
    nvml_view(device, &f, &t);
    if (t != memory->total) {
        memory->total = t;
        memory->free = f;
        memory->used = t - f;
    }
    return rc;
}

HCS_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    __typeof__(&nvmlDeviceGetMemoryInfo_v2) real = REAL(nvmlDeviceGetMemoryInfo_v2);
    if (real == NULL)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    if (rc != NVML_SUCCESS || memory == NULL)
        return rc;
    uint64_t f = memory->free, t = memory->total;
    nvml_view(device, &f, &t);
    if (t != memory->total) {
        /* inside the quota nothing is the system's: used is what the container uses (nvidia-smi) */
        memory->total = t;
        memory->free = f;
        memory->reserved = 0;
        memory->used = t - f;
    }
    return rc;
}

/* ------------------------------------------------------------------ pointer-style vendors */

struct ptr_vendor {
    enum hcs_kind kind;
    int oom; /* vendor OOM code */
    const char *api;
};

static int ptr_alloc_begin(struct hcs_state *s, int dev, uint64_t size, const struct ptr_vendor *v,
                           enum admit_result *a) {
    *a = ADMIT_PASS;
    if (in_hook)
        return 0;
    if (s->fail_closed)
        return v->oom;
    if (!s->enforcing || dev < 0)
        return 0;
    *a = admit(s, dev, size, v->api);
    return *a == ADMIT_DENY ? v->oom : 0;
}

static void ptr_alloc_end(struct hcs_state *s, int dev, uint64_t size, const struct ptr_vendor *v,
                          enum admit_result a, int rc, void *ptr) {
    if (a != ADMIT_OK)
        return;
    if (rc == 0)
        track(s, (uint64_t)(uintptr_t)ptr, v->kind, size, dev);
    else
        unreserve(s, dev, size);
}

static int ptr_free(struct hcs_state *s, void *ptr, const struct ptr_vendor *v, int (*call)(void *, void *),
                    void *real) {
    uint64_t size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, (uint64_t)(uintptr_t)ptr, v->kind, &size, &dev);
    int rc = call(real, ptr);
    untrack_done(s, known, rc == 0, (uint64_t)(uintptr_t)ptr, v->kind, size, dev);
    return rc;
}

/* ---- Ascend ACL */

static const struct ptr_vendor V_ACL = {HCS_KIND_ACL, ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMalloc"};

static int acl_device(void) {
    __typeof__(&aclrtGetDevice) f = REAL(aclrtGetDevice);
    int32_t d;
    if (f == NULL || f(&d) != ACL_SUCCESS)
        return -1;
    return d;
}

static aclError acl_alloc(__typeof__(&aclrtMalloc) real, void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? acl_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, size, &V_ACL, &a);
    if (deny)
        return deny;
    in_hook++;
    aclError rc = real(devPtr, size, policy);
    in_hook--;
    ptr_alloc_end(s, dev, size, &V_ACL, a, rc, rc == ACL_SUCCESS ? *devPtr : NULL);
    return rc;
}

HCS_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    return acl_alloc(REAL(aclrtMalloc), devPtr, size, policy);
}

HCS_EXPORT aclError aclrtMallocCached(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    return acl_alloc(REAL(aclrtMallocCached), devPtr, size, policy);
}

static int call_acl_free(void *real, void *p) {
    return ((__typeof__(&aclrtFree))real)(p);
}

HCS_EXPORT aclError aclrtFree(void *devPtr) {
    __typeof__(&aclrtFree) real = REAL(aclrtFree);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    return ptr_free(state(), devPtr, &V_ACL, call_acl_free, (void *)real);
}

HCS_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes) {
    __typeof__(&aclrtGetMemInfo) real = REAL(aclrtGetMemInfo);
    if (real == NULL)
        return ACL_ERROR_UNINITIALIZE;
    aclError rc = real(attr, free_bytes, total_bytes);
    struct hcs_state *s = state();
    if (rc != ACL_SUCCESS || free_bytes == NULL || total_bytes == NULL || !s->enforcing)
        return rc;
    uint64_t f = *free_bytes, t = *total_bytes;
    limit_view(s, acl_device(), &f, &t);
    *free_bytes = (size_t)f;
    *total_bytes = (size_t)t;
    return rc;
}

/* ---- Hygon HIP */

static const struct ptr_vendor V_HIP = {HCS_KIND_HIP, hipErrorOutOfMemory, "hipMalloc"};

static int hip_device(void) {
    __typeof__(&hipGetDevice) f = REAL(hipGetDevice);
    int d;
    if (f == NULL || f(&d) != hipSuccess)
        return -1;
    return d;
}

HCS_EXPORT hipError_t hipMalloc(void **ptr, size_t size) {
    __typeof__(&hipMalloc) real = REAL(hipMalloc);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? hip_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, size, &V_HIP, &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(ptr, size);
    in_hook--;
    ptr_alloc_end(s, dev, size, &V_HIP, a, rc, rc == hipSuccess ? *ptr : NULL);
    return rc;
}

HCS_EXPORT hipError_t hipMallocManaged(void **dev_ptr, size_t size, unsigned int flags) {
    __typeof__(&hipMallocManaged) real = REAL(hipMallocManaged);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? hip_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, size, &V_HIP, &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(dev_ptr, size, flags);
    in_hook--;
    ptr_alloc_end(s, dev, size, &V_HIP, a, rc, rc == hipSuccess ? *dev_ptr : NULL);
    return rc;
}

HCS_EXPORT hipError_t hipMallocAsync(void **dev_ptr, size_t size, hipStream_t stream) {
    __typeof__(&hipMallocAsync) real = REAL(hipMallocAsync);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? hip_device() : -1;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, size, &V_HIP, &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(dev_ptr, size, stream);
    in_hook--;
    ptr_alloc_end(s, dev, size, &V_HIP, a, rc, rc == hipSuccess ? *dev_ptr : NULL);
    return rc;
}

HCS_EXPORT hipError_t hipMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height) {
    __typeof__(&hipMallocPitch) real = REAL(hipMallocPitch);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    int dev = (s->enforcing && !in_hook) ? hip_device() : -1;
    bool ovf;
    uint64_t est = pitch_estimate(width, height, &ovf);
    if (ovf && dev >= 0)
        return hipErrorOutOfMemory;
    enum admit_result a;
    int deny = ptr_alloc_begin(s, dev, est, &V_HIP, &a);
    if (deny)
        return deny;
    in_hook++;
    hipError_t rc = real(ptr, pitch, width, height);
    in_hook--;
    if (a != ADMIT_OK)
        return rc;
    if (rc != hipSuccess) {
        unreserve(s, dev, est);
        return rc;
    }
    uint64_t actual = (uint64_t)*pitch * height;
    if (!settle_pitch(s, dev, est, actual)) {
        __typeof__(&hipFree) f = REAL(hipFree);
        if (f != NULL) {
            in_hook++;
            (void)f(*ptr);
            in_hook--;
        }
        unreserve(s, dev, est);
        *ptr = NULL;
        return hipErrorOutOfMemory;
    }
    track(s, (uint64_t)(uintptr_t)*ptr, HCS_KIND_HIP, actual, dev);
    return rc;
}

static int call_hip_free(void *real, void *p) {
    return ((__typeof__(&hipFree))real)(p);
}

HCS_EXPORT hipError_t hipFree(void *ptr) {
    __typeof__(&hipFree) real = REAL(hipFree);
    if (real == NULL)
        return hipErrorNotInitialized;
    return ptr_free(state(), ptr, &V_HIP, call_hip_free, (void *)real);
}

HCS_EXPORT hipError_t hipFreeAsync(void *dev_ptr, hipStream_t stream) {
    __typeof__(&hipFreeAsync) real = REAL(hipFreeAsync);
    if (real == NULL)
        return hipErrorNotInitialized;
    struct hcs_state *s = state();
    uint64_t size = 0;
    uint32_t dev = 0;
    bool known = !in_hook && take(s, (uint64_t)(uintptr_t)dev_ptr, HCS_KIND_HIP, &size, &dev);
    hipError_t rc = real(dev_ptr, stream);
    untrack_done(s, known, rc == hipSuccess, (uint64_t)(uintptr_t)dev_ptr, HCS_KIND_HIP, size, dev);
    return rc;
}

HCS_EXPORT hipError_t hipMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    __typeof__(&hipMemGetInfo) real = REAL(hipMemGetInfo);
    if (real == NULL)
        return hipErrorNotInitialized;
    hipError_t rc = real(free_bytes, total_bytes);
    struct hcs_state *s = state();
    if (rc != hipSuccess || free_bytes == NULL || total_bytes == NULL || !s->enforcing)
        return rc;
    uint64_t f = *free_bytes, t = *total_bytes;
    limit_view(s, hip_device(), &f, &t);
    *free_bytes = (size_t)f;
    *total_bytes = (size_t)t;
    return rc;
}

/* ---- Cambricon CNRT */

static const struct ptr_vendor V_CNRT = {HCS_KIND_CNRT, cnrtErrorNoMem, "cnrtMalloc"};

static int cnrt_device(void) {
    __typeof__(&cnrtGetDevice) f = REAL(cnrtGetDevice);
    int d;
    if (f == NULL || f(&d) != cnrtSuccess)
        return -1;
    return d;
}

HCS_EXPORT cnrtRet_t cnrtMalloc(void **pPtr, size_t bytes) {
    __typeof__(&cnrtMalloc) real = REAL(cnrtMalloc);
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

static int call_cnrt_free(void *real, void *p) {
    return ((__typeof__(&cnrtFree))real)(p);
}

HCS_EXPORT cnrtRet_t cnrtFree(void *ptr) {
    __typeof__(&cnrtFree) real = REAL(cnrtFree);
    if (real == NULL)
        return cnrtErrorInit;
    return ptr_free(state(), ptr, &V_CNRT, call_cnrt_free, (void *)real);
}

HCS_EXPORT cnrtRet_t cnrtMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    __typeof__(&cnrtMemGetInfo) real = REAL(cnrtMemGetInfo);
    if (real == NULL)
        return cnrtErrorInit;
    cnrtRet_t rc = real(free_bytes, total_bytes);
    struct hcs_state *s = state();
    if (rc != cnrtSuccess || free_bytes == NULL || total_bytes == NULL || !s->enforcing)
        return rc;
    uint64_t f = *free_bytes, t = *total_bytes;
    limit_view(s, cnrt_device(), &f, &t);
    *free_bytes = (size_t)f;
    *total_bytes = (size_t)t;
    return rc;
}

/* ------------------------------------------------------------------ kernel launches */

#include "compute_hooks.inc"

/* ------------------------------------------------------------------ dlsym */

/* Called by the dlsym trampoline. Returns 1 with *out set when the lookup is answered here, or 0 to
 * let the trampoline tail-jump into the C library's dlsym with the caller's own return address. */
HCS_NO_SANITIZE static bool has_prefix(const char *s, const char *p) {
    while (*p != '\0' && *s == *p) {
        s++;
        p++;
    }
    return *p == '\0';
}

HCS_NO_SANITIZE static bool same(const char *a, const char *b) {
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

HCS_HIDDEN HCS_NO_SANITIZE __attribute__((used)) int hcs_dlsym_lookup(void *handle, const char *name, void **out) {
    dlsym_fn rd = real_dlsym();
    if (name == NULL)
        return 0;
    if (!has_prefix(name, "cu") && !has_prefix(name, "nvml") && !has_prefix(name, "aclrt") &&
        !has_prefix(name, "hip") && !has_prefix(name, "cnrt") && !has_prefix(name, "dcmi") &&
        !has_prefix(name, "rsmi") && !has_prefix(name, "cndev") && !has_prefix(name, "aclop") &&
        !has_prefix(name, "cnInvoke"))
        return compute_dlsym_lookup(handle, name, out); /* aclnn's executor (compute_hooks.inc) */
    int id = -1;
    for (int i = 0; i < SYM_COUNT; i++) {
        if (syms[i].hook != NULL && same(syms[i].name, name)) {
            id = i;
            break;
        }
    }
    if (id < 0)
        return 0;
    void *r = rd(handle, name);
    if (r == NULL)
        return 0; /* the real dlsym sets dlerror() for the caller */
    if (r == syms[id].hook) {
        /* found ourselves through the global scope: only valid when the vendor library exists */
        *out = real_fn(id) != NULL ? r : NULL;
        return 1;
    }
    void *expected = NULL;
    (void)atomic_compare_exchange_strong(&g.real[id], &expected, r);
    *out = syms[id].hook;
    return 1;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym,@function\n"
        "dlsym:\n"
        "    .cfi_startproc\n"
        "    pushq %rdi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    pushq %rsi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    subq $24, %rsp\n"
        "    .cfi_adjust_cfa_offset 24\n"
        "    leaq 8(%rsp), %rdx\n"
        "    call hcs_dlsym_lookup\n"
        "    testl %eax, %eax\n"
        "    jz 1f\n"
        "    movq 8(%rsp), %rax\n"
        "    addq $40, %rsp\n"
        "    .cfi_adjust_cfa_offset -40\n"
        "    ret\n"
        "    .cfi_adjust_cfa_offset 40\n"
        "1:  addq $24, %rsp\n"
        "    .cfi_adjust_cfa_offset -24\n"
        "    popq %rsi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    popq %rdi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    jmp *hcs_real_dlsym_ptr(%rip)\n"
        "    .cfi_endproc\n"
        ".size dlsym, .-dlsym\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym,%function\n"
        "dlsym:\n"
        "    stp x29, x30, [sp, #-32]!\n"
        "    mov x29, sp\n"
        "    stp x0, x1, [sp, #16]\n"
        "    add x2, sp, #16\n"
        "    bl hcs_dlsym_lookup\n"
        "    cbnz w0, 1f\n"
        "    ldp x0, x1, [sp, #16]\n"
        "    ldp x29, x30, [sp], #32\n"
        "    adrp x16, hcs_real_dlsym_ptr\n"
        "    ldr x16, [x16, :lo12:hcs_real_dlsym_ptr]\n"
        "    br x16\n"
        "1:  ldr x0, [sp, #16]\n"
        "    ldp x29, x30, [sp], #32\n"
        "    ret\n"
        ".size dlsym, .-dlsym\n");
#else
/* Portable fallback: RTLD_NEXT lookups of unrelated symbols resolve relative to this library. */
HCS_EXPORT void *dlsym(void *handle, const char *name) {
    void *out;
    if (hcs_dlsym_lookup(handle, name, &out))
        return out;
    return real_dlsym()(handle, name);
}
#endif

/* ------------------------------------------------------------------ dlmopen */

/* dlmopen(LM_ID_NEWLM, "libcuda.so.1") would load a second copy of the vendor runtime into a new
 * link-map namespace, where neither LD_PRELOAD nor /etc/ld.so.preload put this library: its
 * allocations would bypass the quota. While a quota is configured (or the configuration is broken)
 * loads into any namespace other than the base one are refused. Called by the dlmopen trampoline:
 * 0 = go on into the C library's dlmopen with the caller's own return address (it decides the
 * caller's RUNPATH and $ORIGIN), 1 = refuse (the trampoline returns NULL). */
HCS_HIDDEN __attribute__((used)) int hcs_dlmopen_check(Lmid_t lmid, const char *file, int flags) {
    (void)flags;
    if (lmid == LM_ID_BASE)
        return 0;
    struct hcs_state *s = state();
    if (!s->enforcing && !s->fail_closed)
        return 0;
    hcs_log(1, "dlmopen(%ld, \"%s\") refused: a library loaded into another link-map namespace would "
            "escape the VRAM quota; load it with dlopen", (long)lmid, file != NULL ? file : "(null)");
    /* leave a matching dlerror() for the caller: a path no one can create */
    void *h = dlopen("/proc/hcs-interceptor: dlmopen into a new namespace is refused under a VRAM quota",
                     RTLD_NOW | RTLD_LOCAL);
    if (h != NULL)
        dlclose(h);
    return 1;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlmopen\n"
        ".type dlmopen,@function\n"
        "dlmopen:\n"
        "    .cfi_startproc\n"
        "    pushq %rdi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    pushq %rsi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    pushq %rdx\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    call hcs_dlmopen_check\n"
        "    popq %rdx\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    popq %rsi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    popq %rdi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    testl %eax, %eax\n"
        "    jnz 1f\n"
        "    jmp *hcs_real_dlmopen_ptr(%rip)\n"
        "1:  xorl %eax, %eax\n"
        "    ret\n"
        "    .cfi_endproc\n"
        ".size dlmopen, .-dlmopen\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl dlmopen\n"
        ".type dlmopen,%function\n"
        "dlmopen:\n"
        "    stp x29, x30, [sp, #-48]!\n"
        "    mov x29, sp\n"
        "    stp x0, x1, [sp, #16]\n"
        "    str x2, [sp, #32]\n"
        "    bl hcs_dlmopen_check\n"
        "    mov w9, w0\n"
        "    ldp x0, x1, [sp, #16]\n"
        "    ldr x2, [sp, #32]\n"
        "    ldp x29, x30, [sp], #48\n"
        "    cbnz w9, 1f\n"
        "    adrp x16, hcs_real_dlmopen_ptr\n"
        "    ldr x16, [x16, :lo12:hcs_real_dlmopen_ptr]\n"
        "    br x16\n"
        "1:  mov x0, #0\n"
        "    ret\n"
        ".size dlmopen, .-dlmopen\n");
#else
HCS_EXPORT void *dlmopen(Lmid_t lmid, const char *file, int flags) {
    if (hcs_dlmopen_check(lmid, file, flags))
        return NULL;
    return hcs_real_dlmopen_ptr(lmid, file, flags);
}
#endif

/* ------------------------------------------------------------------ issue 22: the other allocation APIs */

#include "hooks_extra.c"
