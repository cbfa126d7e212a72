/* ptrmap.h - per-process map from allocation (pointer or handle) to its accounted size and device.
 * Striped: HCS_PTRMAP_STRIPES independent open-addressing tables, each under its own spinlock (held
 * for a few dozen instructions; yields after a short spin), so threads rarely contend. */
#ifndef HCS_PTRMAP_H
#define HCS_PTRMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define HCS_PTRMAP_STRIPES 64

/* Allocation kinds: the same numeric pointer may be a CUDA pointer and a VMM handle, etc. */
enum hcs_kind {
    HCS_KIND_CUDA_PTR = 1,
    HCS_KIND_CUDA_HANDLE = 2,
    HCS_KIND_ACL = 3,
    HCS_KIND_HIP = 4,
    HCS_KIND_CNRT = 5
};

struct hcs_ptr_entry {
    uint64_t key;  /* 0 = empty */
    uint64_t size;
    uint32_t dev;
    uint32_t kind;
};

struct hcs_ptr_stripe {
    _Atomic int lock;
    struct hcs_ptr_entry *tab;
    uint32_t cap; /* power of two, 0 before first insert */
    uint32_t count;
} __attribute__((aligned(64)));

struct hcs_ptrmap {
    struct hcs_ptr_stripe stripes[HCS_PTRMAP_STRIPES];
};

void hcs_ptrmap_init(struct hcs_ptrmap *m);
/* Forget everything without freeing (used in a fork child, where other threads' locks may be held). */
void hcs_ptrmap_reset_after_fork(struct hcs_ptrmap *m);
/* Insert. If the key was already there (the runtime reused an address whose free bypassed us), the
 * old entry is replaced and returned in *old (the caller gives its charge back). */
enum hcs_put_result { HCS_PUT_NEW, HCS_PUT_REPLACED, HCS_PUT_NOMEM };
enum hcs_put_result hcs_ptrmap_put(struct hcs_ptrmap *m, uint64_t key, uint32_t kind, uint64_t size, uint32_t dev,
                                   struct hcs_ptr_entry *old);
/* Remove and return the entry; false when unknown. */
bool hcs_ptrmap_take(struct hcs_ptrmap *m, uint64_t key, uint32_t kind, uint64_t *size, uint32_t *dev);

#endif /* HCS_PTRMAP_H */
