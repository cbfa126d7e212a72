/* sim_mem.c - see sim_mem.h. */
#define _GNU_SOURCE
#include "sim_mem.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HDR 64u
#define MAGIC 0x48435353494d4d31ULL /* "HCSSIMM1" */
#define BIG (1u << 20)

struct blk {
    uint64_t magic;
    uint64_t size;
    uint64_t map_len; /* 0 = malloc'ed */
    int32_t vendor;
    int32_t dev;
    int32_t counted;
};

_Static_assert(sizeof(struct blk) <= HDR, "header fits");

static _Atomic uint64_t used[SIM_VENDOR_COUNT][SIM_MAX_DEVICES];

/* The profile is loaded once per process and then read without locking (the runtimes are on the
 * allocation hot path that bench/interceptor.py measures against). */
static _Atomic(const sim_profile_t *) cached;

int sim_mem_profile(const sim_profile_t **p) {
    const sim_profile_t *c = atomic_load_explicit(&cached, memory_order_acquire);
    if (c != NULL) {
        *p = c;
        return SIM_MEM_OK;
    }
    if (sim_profile_load(p, NULL, 0) != 0)
        return SIM_MEM_NOPROFILE;
    atomic_store_explicit(&cached, *p, memory_order_release);
    return SIM_MEM_OK;
}

int sim_mem_count(sim_vendor_t vendor) {
    const sim_profile_t *p;
    if (sim_mem_profile(&p) != SIM_MEM_OK)
        return -1;
    return sim_vendor_count(p, vendor);
}

static int capacity(sim_vendor_t vendor, int dev, uint64_t *cap, uint64_t *total) {
    const sim_profile_t *p;
    if (sim_mem_profile(&p) != SIM_MEM_OK)
        return SIM_MEM_NOPROFILE;
    const sim_device_t *d = sim_vendor_device(p, vendor, dev);
    if (d == NULL)
        return SIM_MEM_BADDEV;
    *total = d->memory_bytes;
    *cap = d->memory_bytes > d->memory_used_bytes ? d->memory_bytes - d->memory_used_bytes : 0;
    return SIM_MEM_OK;
}

int sim_mem_alloc(sim_vendor_t vendor, int dev, size_t size, int counted, void **out) {
    uint64_t cap = 0, total = 0;
    if (counted) {
        int rc = capacity(vendor, dev, &cap, &total);
        if (rc != SIM_MEM_OK)
            return rc;
        _Atomic uint64_t *u = &used[vendor][dev];
        uint64_t old = atomic_load(u);
        do {
            if (old > cap || size > cap - old)
                return SIM_MEM_OOM;
        } while (!atomic_compare_exchange_weak(u, &old, old + size));
    }
    size_t len = size + HDR;
    char *base;
    uint64_t map_len = 0;
    if (len >= BIG) {
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        base = m == MAP_FAILED ? NULL : m;
        map_len = len;
    } else {
        base = malloc(len);
    }
    if (base == NULL) {
        if (counted)
            atomic_fetch_sub(&used[vendor][dev], size);
        return SIM_MEM_HOSTOOM;
    }
    struct blk *b = (struct blk *)base;
    b->magic = MAGIC;
    b->size = size;
    b->map_len = map_len;
    b->vendor = vendor;
    b->dev = dev;
    b->counted = counted;
    *out = base + HDR;
    return SIM_MEM_OK;
}

size_t sim_mem_size(const void *ptr) {
    if (ptr == NULL)
        return 0;
    const struct blk *b = (const struct blk *)((const char *)ptr - HDR);
    return b->magic == MAGIC ? b->size : 0;
}

int sim_mem_free(void *ptr) {
    if (ptr == NULL)
        return SIM_MEM_OK;
    struct blk *b = (struct blk *)((char *)ptr - HDR);
    if (b->magic != MAGIC)
        return SIM_MEM_BADPTR;
    b->magic = 0;
    if (b->counted)
        atomic_fetch_sub(&used[b->vendor][b->dev], b->size);
    if (b->map_len)
        munmap(b, b->map_len);
    else
        free(b);
    return SIM_MEM_OK;
}

int sim_mem_info(sim_vendor_t vendor, int dev, size_t *free_b, size_t *total_b) {
    uint64_t cap = 0, total = 0;
    int rc = capacity(vendor, dev, &cap, &total);
    if (rc != SIM_MEM_OK)
        return rc;
    uint64_t u = atomic_load(&used[vendor][dev]);
    *total_b = (size_t)total;
    *free_b = (size_t)(cap > u ? cap - u : 0);
    return SIM_MEM_OK;
}
