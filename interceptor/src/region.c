/* region.c - see region.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIN_LEN 4096

static int lock_range(int fd, short type, int cmd, uint64_t start, uint64_t len) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)start;
    fl.l_len = (off_t)len;
    fl.l_pid = 0; /* must be 0 for OFD locks */
    int rc;
    do {
        rc = fcntl(fd, cmd, &fl);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

static uint64_t cell_start(int dev, int slot) {
    return (uint64_t)HCS_LEASE_BASE + ((uint64_t)dev * HCS_MAX_SLOTS + (uint64_t)slot) * HCS_LEASE_SPAN;
}

static int ledger_lock(int fd) {
    int rc;
    do {
        rc = flock(fd, LOCK_EX);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

static void ledger_unlock(int fd) {
    (void)flock(fd, LOCK_UN);
}

int hcs_region_open(struct hcs_region *r, const char *dir, bool create, char *err, size_t errlen) {
    return hcs_region_open_at(r, AT_FDCWD, dir, create, err, errlen);
}

int hcs_region_open_at(struct hcs_region *r, int dirfd, const char *dir, bool create, char *err, size_t errlen) {
    char path[4096];
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->slot = -1;
    r->pin = MAP_FAILED;
    pthread_mutex_init(&r->mu, NULL);
    if (snprintf(path, sizeof path, "%s/%s", dir, HCS_LEDGER_FILE) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: accounting directory path too long", dir);
        return -1;
    }
    /* dirfd given: the ledger file is named relative to that (already checked) directory */
    const char *name = dirfd == AT_FDCWD ? path : HCS_LEDGER_FILE;
    int fd = -1;
    if (create) {
        fd = openat(dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (fd >= 0)
            (void)fchmod(fd, 0666); /* every uid of the container must open it; fails if not owner */
    }
    if (fd < 0) /* read-only is all the ledger needs (read locks, flock) */
        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(err, errlen,
                 "%s: cannot open the container's VRAM ledger: %s; %s", path, strerror(errno),
                 create ? "mount a writable directory there or point HCS_SHM_DIR at one"
                        : "the node agent creates it and mounts its directory read-only; check the mounts");
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file; the VRAM ledger must be one", path);
        close(fd);
        return -1;
    }
    void *pin = mmap(NULL, PIN_LEN, PROT_READ, MAP_SHARED, fd, 0);
    if (pin == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    (void)madvise(pin, PIN_LEN, MADV_DONTFORK); /* a child must not keep the parent's locks alive */
    /* the ledger lock must work here (tmpfs, ext4, xfs, overlay: yes) */
    struct flock probe;
    memset(&probe, 0, sizeof probe);
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    probe.l_start = HCS_LIVE_BASE;
    probe.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &probe) != 0) {
        snprintf(err, errlen, "%s: byte-range locks (F_OFD_GETLK) unsupported: %s; the ledger needs a "
                 "local filesystem (tmpfs, ext4, xfs, overlay)", path, strerror(errno));
        munmap(pin, PIN_LEN);
        close(fd);
        return -1;
    }
    r->fd = fd;
    r->pin = pin;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    return 0;
}

void hcs_region_close(struct hcs_region *r) {
    if (r->pin != MAP_FAILED && r->pin != NULL)
        munmap(r->pin, PIN_LEN);
    if (r->fd >= 0)
        close(r->fd);
    r->pin = MAP_FAILED;
    r->fd = -1;
    r->slot = -1;
    for (int d = 0; d < HCS_MAX_DEVICES; d++) {
        atomic_store(&r->used[d], 0);
        atomic_store(&r->lease[d], 0);
    }
}

enum identity { ID_OK, ID_MOVED, ID_BROKEN };

/* ID_OK while r->fd still refers to the ledger file (an application may close or reuse fds);
 * ID_MOVED when it names another file and on_moved re-attached (restore into a new container).
 * Called with r->mu held. */
static enum identity identity_check(struct hcs_region *r) {
    struct stat st;
    if (atomic_load(&r->broken))
        return ID_BROKEN;
    if (fstat(r->fd, &st) == 0) {
        if (st.st_dev == r->dev && st.st_ino == r->ino)
            return ID_OK;
        if (r->on_moved != NULL && r->on_moved(r)) {
            atomic_store(&r->reattached, true);
            return ID_MOVED;
        }
    }
    atomic_store(&r->broken, true);
    return ID_BROKEN;
}

static bool identity_ok(struct hcs_region *r) {
    return identity_check(r) != ID_BROKEN;
}

bool hcs_region_check(struct hcs_region *r) {
    if (r->fd < 0)
        return false;
    pthread_mutex_lock(&r->mu);
    bool ok = identity_ok(r);
    pthread_mutex_unlock(&r->mu);
    return ok;
}

int hcs_region_move_locked(struct hcs_region *r, int dirfd, const char *dir, bool create, char *err, size_t errlen) {
    struct hcs_region n;
    if (hcs_region_open_at(&n, dirfd, dir, create, err, errlen) != 0)
        return -1;
    pthread_mutex_destroy(&n.mu);
    struct stat st;
    if (fstat(r->fd, &st) != 0 || st.st_dev != n.dev || st.st_ino != n.ino) {
        snprintf(err, errlen, "%s/%s: the ledger descriptor names another file than the ledger there: not a "
                 "restore; the region stays broken", dir, HCS_LEDGER_FILE);
        goto fail;
    }
    if (hcs_region_claim_slot(&n, err, errlen) != 0)
        goto fail;
    if (ledger_lock(n.fd) != 0) {
        snprintf(err, errlen, "VRAM ledger: flock: %s", strerror(errno));
        goto fail;
    }
    for (int d = 0; d < HCS_MAX_DEVICES; d++) {
        /* as in hcs_region_trim: lower the lease the fast path trusts to what is used, look at used
         * again (an allocation that raced the lowering is either seen here or backs out), then
         * register exactly that in the new ledger */
        uint64_t lease = atomic_load_explicit(&r->lease[d], memory_order_seq_cst);
        uint64_t want = atomic_load_explicit(&r->used[d], memory_order_seq_cst);
        atomic_store_explicit(&r->lease[d], want, memory_order_seq_cst);
        uint64_t now = atomic_load_explicit(&r->used[d], memory_order_seq_cst);
        uint64_t final = now > want ? now : want;
        if (final > HCS_LEASE_MAX)
            final = HCS_LEASE_MAX;
        if (final > 0 && lock_range(n.fd, F_RDLCK, F_OFD_SETLK, cell_start(d, n.slot), final) != 0) {
            atomic_store_explicit(&r->lease[d], lease, memory_order_seq_cst);
            snprintf(err, errlen, "VRAM ledger: re-registering %llu bytes of device %d: %s",
                     (unsigned long long)final, d, strerror(errno));
            ledger_unlock(n.fd);
            goto fail;
        }
        atomic_store_explicit(&r->lease[d], final, memory_order_seq_cst);
    }
    ledger_unlock(n.fd);
    /* only now drop the old description (whatever locks a restore put on it); the descriptor number
     * stays (dup3 swaps what it refers to in one step), so a reader without the mutex never finds it
     * closed or reused by the application */
    if (dup3(n.fd, r->fd, O_CLOEXEC) == 0) {
        close(n.fd);
    } else {
        close(r->fd);
        r->fd = n.fd;
    }
    if (r->pin != MAP_FAILED && r->pin != NULL)
        munmap(r->pin, PIN_LEN);
    r->pin = n.pin;
    r->dev = n.dev;
    r->ino = n.ino;
    r->slot = n.slot;
    return 0;
fail:
    munmap(n.pin, PIN_LEN);
    close(n.fd);
    return -1;
}

int hcs_region_claim_slot(struct hcs_region *r, char *err, size_t errlen) {
    if (ledger_lock(r->fd) != 0) {
        snprintf(err, errlen, "VRAM ledger: flock: %s", strerror(errno));
        return -1;
    }
    int chosen = -1;
    int start = (int)((unsigned)getpid() % HCS_MAX_SLOTS);
    for (int k = 0; k < HCS_MAX_SLOTS; k++) {
        int s = (start + k) % HCS_MAX_SLOTS;
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = HCS_LIVE_BASE + s;
        fl.l_len = 1;
        if (fcntl(r->fd, F_OFD_GETLK, &fl) != 0)
            break;
        if (fl.l_type != F_UNLCK)
            continue; /* a live process has it */
        if (lock_range(r->fd, F_RDLCK, F_OFD_SETLK, (uint64_t)HCS_LIVE_BASE + (uint64_t)s, 1) != 0)
            break;
        chosen = s;
        break;
    }
    int e = errno;
    ledger_unlock(r->fd);
    if (chosen < 0) {
        snprintf(err, errlen, "VRAM ledger: no free process slot (%d live processes?): %s", HCS_MAX_SLOTS,
                 strerror(e));
        return -1;
    }
    r->slot = chosen;
    return 0;
}

/* Sum of the lengths of every lock held by OTHER open file descriptions in device dev's cells.
 * Each answer of F_OFD_GETLK names one conflicting lock; the cells it touches are then excluded
 * and both sides searched again (at most 2n+1 calls for n locks). Returns false when the kernel
 * cannot be asked; the caller then refuses (fail closed). */
struct interval {
    uint64_t lo, hi;
};
#define LOCAL_INTERVALS 32
#define MAX_INTERVALS (HCS_MAX_SLOTS + 2) /* each answer removes >= 1 cell: never more pending */

static bool sum_others(struct hcs_region *r, int dev, uint64_t *out) {
    uint64_t lo0 = cell_start(dev, 0), hi0 = cell_start(dev, HCS_MAX_SLOTS);
    struct interval local[LOCAL_INTERVALS];
    struct interval *st = local;
    int cap = LOCAL_INTERVALS, top = 0;
    bool ok = false;
    uint64_t total = 0;
    st[top++] = (struct interval){lo0, hi0};
    int budget = 4 * HCS_MAX_SLOTS + 8;
    while (top > 0) {
        if (--budget < 0)
            goto out;
        top--;
        uint64_t lo = st[top].lo, hi = st[top].hi;
        if (lo >= hi)
            continue;
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = (off_t)lo;
        fl.l_len = (off_t)(hi - lo);
        int rc;
        do {
            rc = fcntl(r->fd, F_OFD_GETLK, &fl);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0)
            goto out;
        if (fl.l_type == F_UNLCK)
            continue;
        uint64_t ls = (uint64_t)fl.l_start;
        uint64_t le = fl.l_len == 0 ? UINT64_MAX : ls + (uint64_t)fl.l_len; /* 0: to the end of file */
        if (le < ls)
            le = UINT64_MAX;
        uint64_t a = ls > lo ? ls : lo, b = le < hi ? le : hi; /* the part inside the query */
        uint64_t n = b > a ? b - a : 0;
        total = total + n < total ? UINT64_MAX : total + n; /* saturate: a forged giant lock refuses */
        /* exclude the whole cells touched by [a, b) and search what is left on either side */
        uint64_t ca = lo0 + ((a - lo0) / HCS_LEASE_SPAN) * HCS_LEASE_SPAN;
        uint64_t cb = b == 0 ? 0 : lo0 + ((b - 1 - lo0) / HCS_LEASE_SPAN + 1) * HCS_LEASE_SPAN;
        if (top + 2 > cap) { /* many processes hold leases: move the pending intervals to the heap */
            if (st != local)
                goto out;
            struct interval *big = malloc(sizeof *big * MAX_INTERVALS);
            if (big == NULL)
                goto out;
            memcpy(big, local, sizeof local);
            st = big;
            cap = MAX_INTERVALS;
        }
        if (lo < ca)
            st[top++] = (struct interval){lo, ca};
        if (cb < hi)
            st[top++] = (struct interval){cb, hi};
    }
    *out = total;
    ok = true;
out:
    if (st != local)
        free(st);
    return ok;
}

/* Make this process's lock in its (dev) cell exactly new_len long. */
static bool set_lease_lock(struct hcs_region *r, int dev, uint64_t old_len, uint64_t new_len) {
    uint64_t c = cell_start(dev, r->slot);
    if (new_len > old_len)
        return lock_range(r->fd, F_RDLCK, F_OFD_SETLK, c, new_len) == 0; /* merges with the old range */
    if (new_len < old_len)
        return lock_range(r->fd, F_UNLCK, F_OFD_SETLK, c + new_len, old_len - new_len) == 0;
    return true;
}

#ifdef HCS_FAULT_INJECTION
#include <stdlib.h>
/* Test builds only: HCS_TEST_STALL_IN_LOCK=<file> makes the next slow-path reservation create
 * <file> and sleep while holding the ledger lock, so a test can SIGKILL it there. */
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

bool hcs_region_reserve_slow(struct hcs_region *r, int dev, uint64_t size, uint64_t limit) {
    if (r->slot < 0 || dev < 0 || dev >= HCS_MAX_DEVICES)
        return false;
    if (limit > HCS_LEASE_MAX)
        limit = HCS_LEASE_MAX; /* a lease longer than a cell cannot be represented */
    pthread_mutex_lock(&r->mu);
    bool granted = false;
    /* moved: limit is the old container's; refused here, the caller retries with the new one */
    if (identity_check(r) != ID_OK || ledger_lock(r->fd) != 0)
        goto out;
    uint64_t others;
    if (!sum_others(r, dev, &others) || others > limit)
        goto unlock;
    uint64_t room = limit - others;
    for (;;) {
        uint64_t cur = atomic_load_explicit(&r->used[dev], memory_order_seq_cst);
        if (cur > room || size > room - cur)
            goto unlock;
        uint64_t need = cur + size;
        uint64_t lease = atomic_load_explicit(&r->lease[dev], memory_order_seq_cst);
        if (need > lease) {
            /* the kernel's ledger first, then the counter the fast path trusts */
            if (!set_lease_lock(r, dev, lease, need))
                goto unlock;
            atomic_store_explicit(&r->lease[dev], need, memory_order_seq_cst);
        }
        if (atomic_compare_exchange_strong_explicit(&r->used[dev], &cur, need, memory_order_seq_cst,
                                                    memory_order_relaxed))
            break;
    }
    granted = true;
#ifdef HCS_FAULT_INJECTION
    maybe_stall_in_lock();
#endif
unlock:
    ledger_unlock(r->fd);
out:
    pthread_mutex_unlock(&r->mu);
    return granted;
}

void hcs_region_trim(struct hcs_region *r, int dev) {
    if (r->slot < 0)
        return;
    pthread_mutex_lock(&r->mu);
    uint64_t lease = atomic_load_explicit(&r->lease[dev], memory_order_seq_cst);
    uint64_t want = atomic_load_explicit(&r->used[dev], memory_order_seq_cst);
    if (want < lease && identity_ok(r)) {
        /* Lower the counter first, then look at used again: a fast-path allocation that read the
         * old lease either shows up in that second look (and is kept) or reads the lowered lease
         * when it re-checks after its compare-and-swap (and backs out). Only then shrink the lock. */
        atomic_store_explicit(&r->lease[dev], want, memory_order_seq_cst);
        uint64_t now = atomic_load_explicit(&r->used[dev], memory_order_seq_cst);
        uint64_t final = now > want ? now : want;
        if (final > lease)
            final = lease;
        atomic_store_explicit(&r->lease[dev], final, memory_order_seq_cst);
        if (!set_lease_lock(r, dev, lease, final))
            atomic_store_explicit(&r->lease[dev], lease, memory_order_seq_cst); /* kept: still safe */
    }
    pthread_mutex_unlock(&r->mu);
}

uint64_t hcs_region_used(struct hcs_region *r, int dev, bool *ok) {
    uint64_t others = 0;
    *ok = !atomic_load(&r->broken) && sum_others(r, dev, &others);
    if (!*ok)
        return UINT64_MAX;
    uint64_t own = atomic_load_explicit(&r->used[dev], memory_order_relaxed);
    return others + own < others ? UINT64_MAX : others + own;
}

int hcs_region_observe(struct hcs_region *r, int dev, uint64_t *out) {
    if (ledger_lock(r->fd) != 0)
        return -1;
    bool ok = sum_others(r, dev, out);
    ledger_unlock(r->fd);
    return ok ? 0 : -1;
}
