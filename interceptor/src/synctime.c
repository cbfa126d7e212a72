/* synctime.c - see synctime.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "synctime.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "region.h" /* HCS_MAX_DEVICES */

_Static_assert(sizeof(struct hcs_st_entry) == 24, "entry layout");
_Static_assert(offsetof(struct hcs_st_file, e) == 64, "header layout");

_Atomic bool hcs_synctime_on;

enum { ST_UNSET = 0, ST_READY = 1, ST_FAILED = 2 };

static char st_dir[1024];
static hcs_st_uuid_fn uuid_fn;
static hcs_st_log_fn log_fn;
static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int st_state[HCS_ST_RTS][HCS_MAX_DEVICES]; /* by runtime, then its ordinal */
static int st_fd[HCS_ST_RTS][HCS_MAX_DEVICES];
static char st_ids[HCS_MAX_DEVICES][65]; /* non-CUDA runtimes: ring id by ordinal ("" unknown) */
static _Atomic bool st_ids_loaded;
static _Atomic uint64_t st_count; /* this process's samples */
static _Atomic uint32_t st_pid;

uint64_t hcs_synctime_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void st_log(int level, const char *fmt, const char *a, const char *b) {
    if (log_fn == NULL)
        return;
    char buf[1400];
    snprintf(buf, sizeof buf, fmt, a, b);
    log_fn(level, buf);
}

static void st_atfork_child(void) {
    atomic_store(&st_pid, (uint32_t)getpid());
    atomic_store(&st_count, 0);
}

void hcs_synctime_setup(const char *dir, hcs_st_uuid_fn uuid, hcs_st_log_fn log) {
    log_fn = log;
    uuid_fn = uuid;
    atomic_store(&st_pid, (uint32_t)getpid());
    static bool atfork_done;
    if (!atfork_done) {
        atfork_done = true;
        pthread_atfork(NULL, NULL, st_atfork_child);
    }
    bool on = dir != NULL && *dir != '\0' && strlen(dir) < sizeof st_dir && uuid != NULL;
    if (on)
        snprintf(st_dir, sizeof st_dir, "%s", dir);
    atomic_store(&hcs_synctime_on, on);
}

static bool header_ok(const struct hcs_st_file *h) {
    return atomic_load(&h->magic) == HCS_ST_MAGIC && h->version == HCS_ST_VERSION && h->slots == HCS_ST_SLOTS &&
           h->entry_size == sizeof(struct hcs_st_entry);
}

/* The device's ring, opened for pwrite (never mapped: a tenant truncating the shared file must not
 * be able to fault another container's process). -1 when it cannot be used. */
static int st_open(int rt, int ordinal) {
    char hex[65];
    if (rt == HCS_ST_RT_CUDA) {
        uint8_t u[16];
        if (uuid_fn(ordinal, u) != 0)
            return -1;
        for (int i = 0; i < 16; i++)
            snprintf(hex + 2 * i, 3, "%02x", u[i]);
    } else {
        if (st_ids[ordinal][0] == '\0') {
            char what[64];
            snprintf(what, sizeof what, "%d", ordinal);
            st_log(2, "synchronise timing: device %s of this runtime is not in the device list (%s); not recorded "
                      "(sub-health fallback signal off for this device)", what,
                   atomic_load(&st_ids_loaded) ? "no line for it" : "no list: HCS_SYNC_DEVICES in development");
            return -1;
        }
        memcpy(hex, st_ids[ordinal], sizeof hex);
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/hcs-sync-%s.ring", st_dir, hex);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0666);
    int err = errno;
    if (fd >= 0) {
        (void)fchmod(fd, 0666);
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
        }
        struct stat st;
        struct hcs_st_file h;
        bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        err = ok ? 0 : EINVAL;
        if (ok && (st.st_size != (off_t)HCS_ST_FILE_SIZE ||
                   pread(fd, &h, offsetof(struct hcs_st_file, e), 0) != (ssize_t)offsetof(struct hcs_st_file, e) ||
                   !header_ok(&h))) {
            /* new or foreign: (re)initialised under the file lock, every slot empty */
            memset(&h, 0, offsetof(struct hcs_st_file, e));
            h.version = HCS_ST_VERSION;
            h.slots = HCS_ST_SLOTS;
            h.entry_size = sizeof(struct hcs_st_entry);
            atomic_store(&h.magic, HCS_ST_MAGIC);
            ok = ftruncate(fd, 0) == 0 && ftruncate(fd, HCS_ST_FILE_SIZE) == 0 &&
                 pwrite(fd, &h, offsetof(struct hcs_st_file, e), 0) == (ssize_t)offsetof(struct hcs_st_file, e);
            if (!ok)
                err = errno;
        }
        (void)flock(fd, LOCK_UN);
        if (!ok) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0)
        st_log(2, "synchronise timing %s: %s; not recorded (sub-health fallback signal off for this device)", path,
               strerror(err != 0 ? err : EINVAL));
    return fd;
}

void hcs_synctime_record(int ordinal, uint64_t lat_ns, uint64_t end_ns) {
    hcs_synctime_record_rt(HCS_ST_RT_CUDA, ordinal, lat_ns, end_ns);
}

void hcs_synctime_record_rt(int rt, int ordinal, uint64_t lat_ns, uint64_t end_ns) {
    if (!atomic_load_explicit(&hcs_synctime_on, memory_order_relaxed) || ordinal < 0 || ordinal >= HCS_MAX_DEVICES ||
        rt < 0 || rt >= HCS_ST_RTS)
        return;
    int s = atomic_load_explicit(&st_state[rt][ordinal], memory_order_acquire);
    if (__builtin_expect(s == ST_UNSET, 0)) {
        pthread_mutex_lock(&st_mu);
        s = atomic_load_explicit(&st_state[rt][ordinal], memory_order_acquire);
        if (s == ST_UNSET) {
            st_fd[rt][ordinal] = st_open(rt, ordinal);
            s = st_fd[rt][ordinal] >= 0 ? ST_READY : ST_FAILED;
            atomic_store_explicit(&st_state[rt][ordinal], s, memory_order_release);
        }
        pthread_mutex_unlock(&st_mu);
    }
    if (s != ST_READY)
        return;
    uint64_t n = atomic_fetch_add_explicit(&st_count, 1, memory_order_relaxed);
    uint32_t pid = atomic_load_explicit(&st_pid, memory_order_relaxed);
    struct hcs_st_entry e;
    uint64_t low = n % 0xffffffffull + 1; /* 1 .. 2^32-1: seq is never 0 */
    e.seq = ((uint64_t)pid << 32) | low;
    e.end_ns = end_ns;
    e.lat_ns = lat_ns;
    uint64_t slot = HCS_ST_SLOT(pid, low);
    (void)!pwrite(st_fd[rt][ordinal], &e, sizeof e, (off_t)(offsetof(struct hcs_st_file, e) + slot * sizeof e));
}

bool hcs_synctime_id(const char *uuid, size_t n, char *hex) {
    while (n > 0 && (*uuid == ' ' || *uuid == '\t')) {
        uuid++;
        n--;
    }
    while (n > 0 && (uuid[n - 1] == ' ' || uuid[n - 1] == '\t' || uuid[n - 1] == '\r'))
        n--;
    static const char *const prefixes[] = {"GPU-", "MIG-", "MLU-", "0x"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t k = strlen(prefixes[i]);
        if (n >= k && strncasecmp(uuid, prefixes[i], k) == 0) {
            uuid += k;
            n -= k;
            break;
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = uuid[i];
        if (ch == '-')
            continue;
        if (ch >= 'A' && ch <= 'F')
            ch = (char)(ch - 'A' + 'a');
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')) || m >= 64)
            return false;
        hex[m++] = ch;
    }
    hex[m] = '\0';
    return m >= 8;
}

void hcs_synctime_devices(const char *path) {
    pthread_mutex_lock(&st_mu);
    if (atomic_load(&st_ids_loaded) || path == NULL || *path == '\0') {
        pthread_mutex_unlock(&st_mu);
        return;
    }
    char buf[16384];
    ssize_t got = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        got = pread(fd, buf, sizeof buf - 1, 0);
    if (fd >= 0)
        close(fd);
    if (got < 0) {
        pthread_mutex_unlock(&st_mu);
        st_log(2, "synchronise timing: device list %s: %s; ACL/HIP/CNRT synchronises not recorded", path,
               "cannot read it");
        return;
    }
    buf[got] = '\0';
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *end;
        long idx = strtol(line, &end, 10);
        if (end == line || idx < 0 || idx >= HCS_MAX_DEVICES)
            continue;
        size_t len = strcspn(end + strspn(end, " \t"), " \t\r#");
        char hex[65];
        if (hcs_synctime_id(end + strspn(end, " \t"), len, hex))
            memcpy(st_ids[idx], hex, sizeof hex);
    }
    atomic_store(&st_ids_loaded, true);
    pthread_mutex_unlock(&st_mu);
}
