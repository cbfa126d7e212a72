/*
 * region.h - the container-wide VRAM accounting region shared by every process of a container.
 *
 * A file <dir>/hcs-vram-v1.region, mmap'ed MAP_SHARED by each process. Layout: one header page,
 * then HCS_MAX_SLOTS per-process slots. Each slot holds the bytes its process has allocated per
 * device index. The container's usage of device d is the sum of used[d] over all slots.
 *
 * Invariants and why they hold (see interceptor/README.md for the long version):
 *  - A slot's counters are only ever changed by single atomic operations, so a process killed at any
 *    instruction leaves them exact: there is no "global total" that could drift from the slots.
 *  - Every increase happens with the allocation lock held and after checking sum + size <= limit;
 *    decreases (frees, reclaiming a dead process's slot) are lock-free. So the sum read under the
 *    allocation lock never exceeds the limit.
 *  - The allocation lock is one word holding the holder's slot number (+ a waiters bit). It costs
 *    two CAS uncontended; waiters sleep on a shared futex. A holder killed with SIGKILL is detected
 *    by its waiters through its slot's liveness lock and the lock is taken over (nothing to repair:
 *    counters are exact).
 *  - Claiming and reclaiming slots is serialised by a PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST
 *    mutex (EOWNERDEAD -> reclaim dead slots, mark consistent).
 *  - Liveness of a slot's owner is an open-file-description lock (F_OFD_SETLK) on a byte of the
 *    region file named after the slot. The kernel drops it when the owner dies, whatever PID
 *    namespace the observer lives in and whatever PID reuse happened: no kill(pid,0) guessing.
 */
#ifndef HCS_REGION_H
#define HCS_REGION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HCS_MAX_DEVICES 32
#define HCS_MAX_SLOTS 1024
#define HCS_REGION_MAGIC 0x3176676572534348ULL /* "HCSregv1" little-endian */
#define HCS_REGION_VERSION 1u
#define HCS_REGION_FILE "hcs-vram-v1.region"
#define HCS_REGION_HEADER_SIZE 4096u
#define HCS_SLOT_LOCK_BASE (1LL << 30) /* byte HCS_SLOT_LOCK_BASE + i is slot i's liveness lock */
#define HCS_INIT_LOCK_BYTE ((1LL << 30) - 1)

#define HCS_SLOT_FREE 0u
#define HCS_SLOT_ACTIVE 1u

struct hcs_slot {
    _Atomic uint32_t state; /* HCS_SLOT_FREE / HCS_SLOT_ACTIVE */
    int32_t pid;            /* owner's pid in its own namespace (informational only) */
    uint64_t pidns;         /* inode of the owner's pid namespace (informational only) */
    _Atomic uint64_t used[HCS_MAX_DEVICES];
} __attribute__((aligned(64)));

struct hcs_region_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint32_t slot_size;
    uint32_t max_slots;
    uint32_t max_devices;
    _Atomic uint32_t hwm;             /* slots [0, hwm) have ever been used */
    _Atomic uint64_t reclaimed_slots; /* statistics: dead processes reclaimed */
    _Atomic uint64_t reclaimed_bytes; /* statistics: bytes returned from dead processes */
    _Atomic uint64_t owner_died;      /* statistics: EOWNERDEAD recoveries */
    _Atomic uint64_t peak[HCS_MAX_DEVICES]; /* highest container usage ever granted, per device */
    _Atomic uint64_t lock_steals;     /* statistics: allocation locks taken over from dead holders */
    /* Allocation lock (hot path): 0 = free, else holder's slot + 1. A waiter that finds the holder's
     * slot dead (liveness lock gone) takes it over; see hcs_region_alloc_lock(). */
    _Atomic uint32_t alloc_lock __attribute__((aligned(64)));
    /* Slot lock (cold path: claiming and reclaiming slots): robust + process-shared. */
    pthread_mutex_t lock __attribute__((aligned(64)));
};

struct hcs_region {
    int fd;                /* O_CLOEXEC; holds this process's slot lock */
    size_t map_size;
    struct hcs_region_header *hdr;
    struct hcs_slot *slots;
    int slot;              /* this process's slot index, -1 = none (observer) */
};

/* Open (creating and initialising if needed) the region in dir. Returns 0, or -1 with a message
 * in err naming the file and what to do. Does not claim a slot. */
int hcs_region_open(struct hcs_region *r, const char *dir, char *err, size_t errlen);
/* Claim a slot for the calling process (reusing a free or dead one). 0 or -1 with message. */
int hcs_region_claim_slot(struct hcs_region *r, char *err, size_t errlen);
/* Drop the mapping and fd without touching the slot (the kernel releases the liveness lock when
 * the last fd of the open file description closes). */
void hcs_region_close(struct hcs_region *r);

/* Lock / unlock the slot mutex (claim / reclaim), recovering from a dead owner. */
void hcs_region_lock(struct hcs_region *r);
void hcs_region_unlock(struct hcs_region *r);
/* Lock / unlock the allocation lock. The caller must own a slot. */
void hcs_region_alloc_lock(struct hcs_region *r);
void hcs_region_alloc_unlock(struct hcs_region *r);

/* Reserve size bytes on device dev for the calling process if the container total stays
 * <= limit. Exact: sum + size == limit succeeds. Reclaims dead processes' slots before failing.
 * Returns true when reserved. */
bool hcs_region_reserve(struct hcs_region *r, int dev, uint64_t size, uint64_t limit);
/* Unconditionally account size bytes (unlimited devices, and pitch corrections). */
void hcs_region_add(struct hcs_region *r, int dev, uint64_t size);
/* Give back size bytes (lock-free; clamps at zero, never wraps). */
void hcs_region_release(struct hcs_region *r, int dev, uint64_t size);
/* Container usage of device dev right now (lock-free snapshot; for queries). */
uint64_t hcs_region_used(const struct hcs_region *r, int dev);
/* Same, read under the allocation lock (caller owns a slot): never exceeds a limit enforced by
 * reserve. */
uint64_t hcs_region_used_locked(struct hcs_region *r, int dev);
/* Reclaim the slots of dead processes. Caller holds the slot mutex. Returns slots reclaimed. */
int hcs_region_reclaim_locked(struct hcs_region *r);

#endif /* HCS_REGION_H */
