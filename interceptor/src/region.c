/* region.c - see region.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct hcs_region_header) <= HCS_REGION_HEADER_SIZE, "header fits its page");
_Static_assert(sizeof(struct hcs_slot) % 64 == 0, "slots are cache-line multiples");

static size_t region_size(void) {
    return HCS_REGION_HEADER_SIZE + (size_t)HCS_MAX_SLOTS * sizeof(struct hcs_slot);
}

static int ofd_lock(int fd, off_t start, short type, int cmd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = 1;
    fl.l_pid = 0; /* must be 0 for OFD locks */
    int rc;
    do {
        rc = fcntl(fd, cmd, &fl);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

/* True when some other open file description holds slot i's liveness lock (owner alive). */
static bool slot_owner_alive(int fd, int i) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = HCS_SLOT_LOCK_BASE + i;
    fl.l_len = 1;
    fl.l_pid = 0;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return true; /* cannot tell: never reclaim on doubt */
    return fl.l_type != F_UNLCK;
}

static uint64_t self_pidns(void) {
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0)
        return (uint64_t)st.st_ino;
    return 0;
}

static int init_header(struct hcs_region_header *h, char *err, size_t errlen, const char *path) {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc == 0)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&h->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot initialise the process-shared robust mutex: %s", path,
                 strerror(rc));
        return -1;
    }
    h->version = HCS_REGION_VERSION;
    h->header_size = HCS_REGION_HEADER_SIZE;
    h->slot_size = (uint32_t)sizeof(struct hcs_slot);
    h->max_slots = HCS_MAX_SLOTS;
    h->max_devices = HCS_MAX_DEVICES;
    atomic_store(&h->hwm, 0);
    /* magic last: a reader that sees it sees an initialised header (we also hold the init lock) */
    __atomic_store_n(&h->magic, HCS_REGION_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int hcs_region_open(struct hcs_region *r, const char *dir, char *err, size_t errlen) {
    char path[4096];
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->slot = -1;
    if (snprintf(path, sizeof path, "%s/%s", dir, HCS_REGION_FILE) >= (int)sizeof path) {
        snprintf(err, errlen, "HCS_SHM_DIR=%s: path too long; use a shorter directory", dir);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        snprintf(err, errlen,
                 "%s: cannot open the shared accounting region: %s; mount a writable directory there "
                 "or point HCS_SHM_DIR at one",
                 path, strerror(errno));
        return -1;
    }
    (void)fchmod(fd, 0666); /* every uid in the container must share it; ignore failure (not owner) */
    if (ofd_lock(fd, HCS_INIT_LOCK_BYTE, F_WRLCK, F_OFD_SETLKW) != 0) {
        snprintf(err, errlen, "%s: cannot take the init lock (F_OFD_SETLKW): %s; the filesystem must "
                 "support POSIX byte-range locks (tmpfs, ext4, xfs, overlay do)", path, strerror(errno));
        close(fd);
        return -1;
    }
    size_t size = region_size();
    struct stat st;
    int rc = -1;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: fstat: %s", path, strerror(errno));
        goto out;
    }
    bool fresh = st.st_size == 0;
    if (fresh) {
        int e = posix_fallocate(fd, 0, (off_t)size);
        if (e == EOPNOTSUPP || e == EINVAL)
            e = ftruncate(fd, (off_t)size) == 0 ? 0 : errno;
        if (e != 0) {
            snprintf(err, errlen, "%s: cannot size the region to %zu bytes: %s", path, size, strerror(e));
            goto out;
        }
    } else if ((size_t)st.st_size != size) {
        snprintf(err, errlen,
                 "%s: size %lld, expected %zu: written by an incompatible interceptor; remove the file "
                 "when no process of this container runs",
                 path, (long long)st.st_size, size);
        goto out;
    }
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        goto out;
    }
    struct hcs_region_header *h = map;
    uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
    if (magic == 0) {
        /* fresh file, or a creator that died before finishing: (re)initialise under the init lock */
        memset(map, 0, size);
        if (init_header(h, err, errlen, path) != 0)
            goto out;
    } else if (magic != HCS_REGION_MAGIC || h->version != HCS_REGION_VERSION ||
               h->header_size != HCS_REGION_HEADER_SIZE || h->slot_size != sizeof(struct hcs_slot) ||
               h->max_slots != HCS_MAX_SLOTS || h->max_devices != HCS_MAX_DEVICES) {
        snprintf(err, errlen,
                 "%s: not an HCS accounting region of version %u (bad magic or geometry); remove it "
                 "when no process of this container runs",
                 path, HCS_REGION_VERSION);
        goto out;
    }
    r->fd = fd;
    r->map_size = size;
    r->hdr = h;
    r->slots = (struct hcs_slot *)((char *)map + HCS_REGION_HEADER_SIZE);
    rc = 0;
out:
    (void)ofd_lock(fd, HCS_INIT_LOCK_BYTE, F_UNLCK, F_OFD_SETLK);
    if (rc != 0) {
        if (map != MAP_FAILED)
            munmap(map, size);
        close(fd);
    }
    return rc;
}

void hcs_region_close(struct hcs_region *r) {
    if (r->hdr != NULL)
        munmap(r->hdr, r->map_size);
    if (r->fd >= 0)
        close(r->fd);
    r->hdr = NULL;
    r->slots = NULL;
    r->fd = -1;
    r->slot = -1;
}

static void reclaim_slot_locked(struct hcs_region *r, int i) {
    struct hcs_slot *s = &r->slots[i];
    uint64_t freed = 0;
    for (int d = 0; d < HCS_MAX_DEVICES; d++)
        freed += atomic_exchange_explicit(&s->used[d], 0, memory_order_relaxed);
    s->pid = 0;
    s->pidns = 0;
    atomic_store_explicit(&s->state, HCS_SLOT_FREE, memory_order_release);
    atomic_fetch_add_explicit(&r->hdr->reclaimed_slots, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->hdr->reclaimed_bytes, freed, memory_order_relaxed);
}

int hcs_region_reclaim_locked(struct hcs_region *r) {
    int n = 0;
    uint32_t hwm = atomic_load_explicit(&r->hdr->hwm, memory_order_acquire);
    for (uint32_t i = 0; i < hwm && i < HCS_MAX_SLOTS; i++) {
        if ((int)i == r->slot)
            continue;
        if (atomic_load_explicit(&r->slots[i].state, memory_order_acquire) != HCS_SLOT_ACTIVE)
            continue;
        if (!slot_owner_alive(r->fd, (int)i)) {
            reclaim_slot_locked(r, (int)i);
            n++;
        }
    }
    return n;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Allocation lock word: 0 = free, else (holder's slot + 1) | LOCK_WAITERS when someone sleeps in
 * futex_wait on it. Uncontended: one CAS to lock, one CAS to unlock. Contended: a short spin, then
 * FUTEX_WAIT (shared futex: the word lives in a MAP_SHARED file mapping) with a timeout; on timeout
 * the waiter checks the holder's liveness lock and takes a dead holder's lock over. */
#define LOCK_WAITERS 0x80000000u
#define LOCK_OWNER(v) ((v) & ~LOCK_WAITERS)

static void futex_wait(_Atomic uint32_t *w, uint32_t val, long ns) {
    struct timespec ts = {0, ns};
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w, int n) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, n, NULL, NULL, 0);
}

static void alloc_lock_slow(struct hcs_region *r, uint32_t me) {
    _Atomic uint32_t *w = &r->hdr->alloc_lock;
    for (int n = 0; n < 100; n++) { /* short spin: the critical section is a few dozen instructions */
        uint32_t cur = atomic_load_explicit(w, memory_order_relaxed);
        if (cur == 0 &&
            atomic_compare_exchange_weak_explicit(w, &cur, me, memory_order_acquire, memory_order_relaxed))
            return;
        cpu_relax();
    }
    for (unsigned rounds = 0;; rounds++) {
        uint32_t cur = atomic_load_explicit(w, memory_order_relaxed);
        if (cur == 0) {
            /* others may be asleep: keep the waiters bit so that our unlock wakes one */
            if (atomic_compare_exchange_weak_explicit(w, &cur, me | LOCK_WAITERS, memory_order_acquire,
                                                      memory_order_relaxed))
                return;
            continue;
        }
        if (!(cur & LOCK_WAITERS) &&
            !atomic_compare_exchange_weak_explicit(w, &cur, cur | LOCK_WAITERS, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        futex_wait(w, cur | LOCK_WAITERS, 5 * 1000 * 1000); /* 5 ms, then look at the holder */
        uint32_t owner = LOCK_OWNER(cur);
        if ((rounds & 3) == 3 && owner != me && owner <= HCS_MAX_SLOTS && !slot_owner_alive(r->fd, (int)owner - 1)) {
            uint32_t seen = atomic_load_explicit(w, memory_order_relaxed);
            if (LOCK_OWNER(seen) == owner &&
                atomic_compare_exchange_strong_explicit(w, &seen, me | LOCK_WAITERS, memory_order_acquire,
                                                        memory_order_relaxed)) {
                atomic_fetch_add_explicit(&r->hdr->lock_steals, 1, memory_order_relaxed);
                return;
            }
        }
    }
}

void hcs_region_alloc_lock(struct hcs_region *r) {
    uint32_t me = (uint32_t)r->slot + 1;
    uint32_t expected = 0;
    if (__builtin_expect(atomic_compare_exchange_strong_explicit(&r->hdr->alloc_lock, &expected, me,
                                                                 memory_order_acquire, memory_order_relaxed),
                         1))
        return;
    alloc_lock_slow(r, me);
}

void hcs_region_alloc_unlock(struct hcs_region *r) {
    uint32_t me = (uint32_t)r->slot + 1;
    uint32_t expected = me;
    if (__builtin_expect(atomic_compare_exchange_strong_explicit(&r->hdr->alloc_lock, &expected, 0,
                                                                 memory_order_release, memory_order_relaxed),
                         1))
        return;
    atomic_store_explicit(&r->hdr->alloc_lock, 0, memory_order_release); /* waiters bit was set */
    futex_wake(&r->hdr->alloc_lock, 1);
}

void hcs_region_lock(struct hcs_region *r) {
    int rc = pthread_mutex_lock(&r->hdr->lock);
    if (rc == EOWNERDEAD) {
        /* The previous holder died inside the critical section. Slot counters are only changed by
         * single atomic operations, so they are exact; the dead holder's own slot is reclaimed here
         * (its liveness lock is gone), then the mutex is usable again. */
        atomic_fetch_add_explicit(&r->hdr->owner_died, 1, memory_order_relaxed);
        hcs_region_reclaim_locked(r);
        pthread_mutex_consistent(&r->hdr->lock);
    }
    /* ENOTRECOVERABLE cannot happen: every EOWNERDEAD is made consistent above. */
}

void hcs_region_unlock(struct hcs_region *r) {
    pthread_mutex_unlock(&r->hdr->lock);
}

static uint64_t sum_used(const struct hcs_region *r, int dev) {
    uint64_t total = 0;
    uint32_t hwm = atomic_load_explicit(&r->hdr->hwm, memory_order_acquire);
    if (hwm > HCS_MAX_SLOTS)
        hwm = HCS_MAX_SLOTS;
    for (uint32_t i = 0; i < hwm; i++) {
        uint64_t u = atomic_load_explicit(&r->slots[i].used[dev], memory_order_relaxed);
        total = (total + u < total) ? UINT64_MAX : total + u; /* saturate, never wrap */
    }
    return total;
}

static void note_peak(struct hcs_region *r, int dev, uint64_t now) {
    uint64_t p = atomic_load_explicit(&r->hdr->peak[dev], memory_order_relaxed);
    if (now > p)
        atomic_store_explicit(&r->hdr->peak[dev], now, memory_order_relaxed);
}

#ifdef HCS_FAULT_INJECTION
#include <stdlib.h>
/* Test builds only: HCS_TEST_STALL_IN_LOCK=<file> makes the next reservation create <file> and
 * sleep while holding the mutex, so a test can SIGKILL the process inside the critical section. */
static void maybe_stall_in_lock(void) {
    const char *f = getenv("HCS_TEST_STALL_IN_LOCK");
    if (f == NULL || *f == '\0')
        return;
    int fd = open(f, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    for (;;)
        pause();
}
#endif

bool hcs_region_reserve(struct hcs_region *r, int dev, uint64_t size, uint64_t limit) {
    struct hcs_slot *me = &r->slots[r->slot];
    hcs_region_alloc_lock(r);
    uint64_t used = sum_used(r, dev);
    if (used > limit || size > limit - used) {
        /* before refusing, give back what dead processes held (lock order: alloc, then slot) */
        hcs_region_lock(r);
        int n = hcs_region_reclaim_locked(r);
        hcs_region_unlock(r);
        if (n > 0)
            used = sum_used(r, dev);
        if (used > limit || size > limit - used) {
            hcs_region_alloc_unlock(r);
            return false;
        }
    }
    atomic_fetch_add_explicit(&me->used[dev], size, memory_order_relaxed);
    note_peak(r, dev, used + size);
#ifdef HCS_FAULT_INJECTION
    maybe_stall_in_lock();
#endif
    hcs_region_alloc_unlock(r);
    return true;
}

void hcs_region_add(struct hcs_region *r, int dev, uint64_t size) {
    atomic_fetch_add_explicit(&r->slots[r->slot].used[dev], size, memory_order_relaxed);
}

void hcs_region_release(struct hcs_region *r, int dev, uint64_t size) {
    _Atomic uint64_t *u = &r->slots[r->slot].used[dev];
    uint64_t old = atomic_load_explicit(u, memory_order_relaxed);
    uint64_t next;
    do {
        next = old >= size ? old - size : 0;
    } while (!atomic_compare_exchange_weak_explicit(u, &old, next, memory_order_release,
                                                    memory_order_relaxed));
}

uint64_t hcs_region_used(const struct hcs_region *r, int dev) {
    return sum_used(r, dev);
}

uint64_t hcs_region_used_locked(struct hcs_region *r, int dev) {
    hcs_region_alloc_lock(r);
    uint64_t u = sum_used(r, dev);
    hcs_region_alloc_unlock(r);
    return u;
}

int hcs_region_claim_slot(struct hcs_region *r, char *err, size_t errlen) {
    int chosen = -1;
    hcs_region_lock(r);
    for (int i = 0; i < HCS_MAX_SLOTS; i++) {
        uint32_t st = atomic_load_explicit(&r->slots[i].state, memory_order_acquire);
        if (st == HCS_SLOT_ACTIVE && slot_owner_alive(r->fd, i))
            continue;
        /* free, or active with a dead owner: take its liveness lock (fails if someone alive has it) */
        if (ofd_lock(r->fd, HCS_SLOT_LOCK_BASE + i, F_WRLCK, F_OFD_SETLK) != 0)
            continue;
        if (st == HCS_SLOT_ACTIVE)
            reclaim_slot_locked(r, i);
        /* a dead previous owner of this slot may have died holding the allocation lock */
        uint32_t held = atomic_load(&r->hdr->alloc_lock);
        if (LOCK_OWNER(held) == (uint32_t)i + 1 && atomic_compare_exchange_strong(&r->hdr->alloc_lock, &held, 0)) {
            atomic_fetch_add_explicit(&r->hdr->lock_steals, 1, memory_order_relaxed);
            futex_wake(&r->hdr->alloc_lock, 1 << 30);
        }
        struct hcs_slot *s = &r->slots[i];
        for (int d = 0; d < HCS_MAX_DEVICES; d++)
            atomic_store_explicit(&s->used[d], 0, memory_order_relaxed);
        s->pid = (int32_t)getpid();
        s->pidns = self_pidns();
        atomic_store_explicit(&s->state, HCS_SLOT_ACTIVE, memory_order_release);
        uint32_t hwm = atomic_load_explicit(&r->hdr->hwm, memory_order_relaxed);
        if ((uint32_t)i + 1 > hwm)
            atomic_store_explicit(&r->hdr->hwm, (uint32_t)i + 1, memory_order_release);
        chosen = i;
        break;
    }
    hcs_region_unlock(r);
    if (chosen < 0) {
        snprintf(err, errlen, "shared accounting region: all %d process slots are in use by live "
                 "processes; fewer concurrent GPU processes per container are supported", HCS_MAX_SLOTS);
        return -1;
    }
    r->slot = chosen;
    return 0;
}
