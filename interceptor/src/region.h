/*
 * region.h - the container-wide VRAM ledger shared by every process of a container.
 *
 * The ledger is kept by the KERNEL, not in shared memory: it is the table of open-file-description
 * (OFD) byte-range locks on one file, <dir>/hcs-vram.ledger. Nothing is ever written to the file;
 * it can be (and in a managed container is) mounted read-only, so a process of the container
 * cannot zero, truncate, replace or forge the accounting, whatever tools it has.
 *
 *  - Each process claims a slot s (a read lock on byte HCS_LIVE_BASE + s, taken under the ledger
 *    lock, so slots are unique among live processes).
 *  - A process's LEASE on device d is a read lock on [cell(d, s), cell(d, s) + lease): its length is
 *    the number of bytes of quota the process holds. The container's usage of d, as another process
 *    sees it, is the sum of the lengths of every lock in device d's cells (F_OFD_GETLK, which the
 *    kernel answers from locks nobody but their owner can change).
 *  - The ledger lock (serialising lease growth across processes) is flock(LOCK_EX) on the file.
 *  - A process that dies - SIGKILL included, at any instruction - loses all its locks: its lease,
 *    its slot and the ledger lock come back by themselves. No PID, no reclamation code, no repair.
 *
 * Hot path: each process keeps its own used[d] and lease[d] counters. An allocation that fits in
 * the process's lease is one compare-and-swap (no system call); a larger one takes the slow path
 * (flock, sum the others' leases, extend the own lease exactly to what is needed). A free lowers
 * used[d]; when more than limit/64 of the lease is unused it is trimmed back to used[d] (one
 * fcntl). So usage never exceeds the quota, and the boundary is exact for one process; another
 * process of the same container may find up to limit/64 less room per process that freed memory
 * recently (slack kept to make alloc/free loops free of system calls).
 */
#ifndef HCS_REGION_H
#define HCS_REGION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HCS_MAX_DEVICES 32
#define HCS_MAX_SLOTS 1024
#define HCS_LEDGER_FILE "hcs-vram.ledger"
#define HCS_LIVE_BASE (1LL << 30)     /* byte HCS_LIVE_BASE + s: slot s is taken */
#define HCS_LEASE_BASE (1LL << 40)    /* device d, slot s: [cell, cell + lease) */
#define HCS_LEASE_SPAN (1ULL << 47)   /* a cell; the largest lease a process can hold on a device */
#define HCS_LEASE_MAX (HCS_LEASE_SPAN - 1)

struct hcs_region {
    int fd;                /* O_CLOEXEC; its open file description owns this process's locks */
    void *pin;             /* PROT_READ mapping of the file: keeps the description (and so the
                              locks) alive if the application closes fd; MADV_DONTFORK */
    dev_t dev;             /* identity of the ledger file, checked on the slow path */
    ino_t ino;
    int slot;              /* this process's slot, -1 = none (observer) */
    _Atomic bool broken;   /* fd no longer names the ledger: every further allocation is refused */
    pthread_mutex_t mu;    /* slow path of this process's threads */
    _Atomic uint64_t used[HCS_MAX_DEVICES];  /* bytes this process has allocated */
    _Atomic uint64_t lease[HCS_MAX_DEVICES]; /* bytes of quota it holds in the ledger (>= used) */
    /* Restore (checkpoint recovery): fd still names a file, but not the one opened - the process was
     * restored (CRIU re-opens files by path) into a new container whose ledger is another file.
     * on_moved (set by the owner; NULL: such a change breaks the region as any other) re-attaches,
     * normally with hcs_region_move_locked; true = done. reattached is then set: a caller holding a
     * limit read before the move re-reads it (the new container's quota may differ). */
    bool (*on_moved)(struct hcs_region *r);
    _Atomic bool reattached;
};

/* Open the ledger in dir (create=true: create the file when absent; false: it must exist, as the
 * node agent creates it for a managed container). 0, or -1 with a message in err naming the file. */
int hcs_region_open(struct hcs_region *r, const char *dir, bool create, char *err, size_t errlen);
/* Same, with the directory given as an open descriptor (dir only names it in messages). */
int hcs_region_open_at(struct hcs_region *r, int dirfd, const char *dir, bool create, char *err, size_t errlen);
/* Claim a slot for the calling process. 0 or -1 with message. */
int hcs_region_claim_slot(struct hcs_region *r, char *err, size_t errlen);
/* Re-attach to the ledger at dir after a restore (call with r->mu held, as on_moved is): opens it,
 * requires that r->fd now names that same file (what a restore does; anything else is refused),
 * claims a fresh slot there, re-registers this process's live allocations (its lease on each
 * device = what it uses, whatever the limit: the memory exists) and only then drops the old
 * description and pin, so the usage is never uncounted. 0, or -1 with a message. */
int hcs_region_move_locked(struct hcs_region *r, int dirfd, const char *dir, bool create, char *err, size_t errlen);
/* Check (cold paths: memory queries) whether the ledger moved under this process and re-attach
 * (on_moved); false when the region is broken. */
bool hcs_region_check(struct hcs_region *r);
/* Drop the pin and fd (the kernel releases this process's locks when the description goes). */
void hcs_region_close(struct hcs_region *r);

/* Reserve size bytes on device dev if the container total stays <= limit. */
bool hcs_region_reserve_slow(struct hcs_region *r, int dev, uint64_t size, uint64_t limit);
static inline bool hcs_region_reserve(struct hcs_region *r, int dev, uint64_t size, uint64_t limit) {
    _Atomic uint64_t *u = &r->used[dev];
    uint64_t cur = atomic_load_explicit(u, memory_order_relaxed);
    for (;;) {
        uint64_t lease = atomic_load_explicit(&r->lease[dev], memory_order_seq_cst);
        if (cur > lease || size > lease - cur)
            return hcs_region_reserve_slow(r, dev, size, limit);
        if (atomic_compare_exchange_weak_explicit(u, &cur, cur + size, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            /* a concurrent trim may have lowered the lease after we read it (see region.c) */
            if (__builtin_expect(cur + size <= atomic_load_explicit(&r->lease[dev], memory_order_seq_cst), 1))
                return true;
            atomic_fetch_sub_explicit(u, size, memory_order_seq_cst);
            return hcs_region_reserve_slow(r, dev, size, limit);
        }
    }
}

/* Trim the lease of dev down to what is used (cold). */
void hcs_region_trim(struct hcs_region *r, int dev);
/* Give back size bytes (clamps at zero, never wraps); trims the lease when over limit/64 is idle. */
static inline void hcs_region_release(struct hcs_region *r, int dev, uint64_t size, uint64_t limit) {
    _Atomic uint64_t *u = &r->used[dev];
    uint64_t old = atomic_load_explicit(u, memory_order_relaxed);
    uint64_t next;
    do {
        next = old >= size ? old - size : 0;
    } while (!atomic_compare_exchange_weak_explicit(u, &old, next, memory_order_seq_cst, memory_order_relaxed));
    uint64_t lease = atomic_load_explicit(&r->lease[dev], memory_order_relaxed);
    if (__builtin_expect(lease > next && lease - next > limit / 64, 0))
        hcs_region_trim(r, dev);
}

/* Container usage of dev as this process sees it: its own used bytes + the other processes'
 * leases. *ok=false when the kernel could not be asked (callers then assume the worst). */
uint64_t hcs_region_used(struct hcs_region *r, int dev, bool *ok);
/* Observer (no slot needed): under the ledger lock, the sum of every process's lease on dev.
 * 0, or -1 when the ledger could not be read. */
int hcs_region_observe(struct hcs_region *r, int dev, uint64_t *out);

#endif /* HCS_REGION_H */
