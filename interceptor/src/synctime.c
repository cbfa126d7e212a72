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
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "region.h" /* HCS_MAX_DEVICES */

_Static_assert(sizeof(struct hcs_st_entry) == 24, "entry layout");
_Static_assert(offsetof(struct hcs_st_file, e) == 64, "header layout");

_Atomic bool hcs_synctime_on;

#define ST_FAILED ((struct hcs_st_file *)1)

static char st_dir[1024];
static hcs_st_uuid_fn uuid_fn;
static hcs_st_log_fn log_fn;
static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hcs_st_file *_Atomic st_map[HCS_MAX_DEVICES]; /* by runtime ordinal; NULL = not yet */

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

void hcs_synctime_setup(const char *dir, hcs_st_uuid_fn uuid, hcs_st_log_fn log) {
    log_fn = log;
    uuid_fn = uuid;
    for (int i = 0; i < HCS_MAX_DEVICES; i++)
        atomic_store(&st_map[i], NULL);
    bool on = dir != NULL && *dir != '\0' && strlen(dir) < sizeof st_dir && uuid != NULL;
    if (on)
        snprintf(st_dir, sizeof st_dir, "%s", dir);
    atomic_store(&hcs_synctime_on, on);
}

static struct hcs_st_file *st_open(int ordinal) {
    uint8_t u[16];
    if (uuid_fn(ordinal, u) != 0)
        return ST_FAILED;
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", u[i]);
    char path[1200];
    snprintf(path, sizeof path, "%s/hcs-sync-%s.ring", st_dir, hex);
    struct hcs_st_file *f = MAP_FAILED;
    int err = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd >= 0) {
        (void)fchmod(fd, 0666);
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            (st.st_size == (off_t)HCS_ST_FILE_SIZE || ftruncate(fd, HCS_ST_FILE_SIZE) == 0))
            f = mmap(NULL, HCS_ST_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (f != MAP_FAILED && (atomic_load(&f->magic) != HCS_ST_MAGIC || f->version != HCS_ST_VERSION ||
                                f->slots != HCS_ST_SLOTS || f->entry_size != sizeof(struct hcs_st_entry))) {
            memset(f, 0, HCS_ST_FILE_SIZE); /* new or foreign: (re)initialised under the file lock */
            f->version = HCS_ST_VERSION;
            f->slots = HCS_ST_SLOTS;
            f->entry_size = sizeof(struct hcs_st_entry);
            atomic_store(&f->magic, HCS_ST_MAGIC);
        }
        if (f == MAP_FAILED)
            err = errno;
        (void)flock(fd, LOCK_UN);
        close(fd);
    } else {
        err = errno;
    }
    if (f == MAP_FAILED) {
        st_log(2, "synchronise timing %s: %s; not recorded (sub-health fallback signal off for this device)", path,
               strerror(err != 0 ? err : EINVAL));
        return ST_FAILED;
    }
    return f;
}

void hcs_synctime_record(int ordinal, uint64_t lat_ns, uint64_t end_ns) {
    if (!atomic_load_explicit(&hcs_synctime_on, memory_order_relaxed) || ordinal < 0 || ordinal >= HCS_MAX_DEVICES)
        return;
    struct hcs_st_file *f = atomic_load_explicit(&st_map[ordinal], memory_order_acquire);
    if (__builtin_expect(f == NULL, 0)) {
        pthread_mutex_lock(&st_mu);
        f = atomic_load_explicit(&st_map[ordinal], memory_order_acquire);
        if (f == NULL) {
            f = st_open(ordinal);
            atomic_store_explicit(&st_map[ordinal], f, memory_order_release);
        }
        pthread_mutex_unlock(&st_mu);
    }
    if (f == ST_FAILED)
        return;
    uint64_t i = atomic_fetch_add_explicit(&f->head, 1, memory_order_relaxed);
    struct hcs_st_entry *e = &f->e[i % HCS_ST_SLOTS];
    atomic_store_explicit(&e->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    e->end_ns = end_ns;
    e->lat_ns = lat_ns;
    atomic_store_explicit(&e->seq, i + 1, memory_order_release);
}
