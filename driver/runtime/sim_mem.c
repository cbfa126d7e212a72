/* sim_mem.c - see sim_mem.h. */
#define _GNU_SOURCE
#include "sim_mem.h"

#include <pthread.h>
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
    int32_t gen; /* remap generation dev was charged in (sim_mem_remap) */
    void *owner;
};

_Static_assert(sizeof(struct blk) <= HDR, "header fits");

static _Atomic uint64_t used[SIM_VENDOR_COUNT][SIM_MAX_DEVICES];

/* Device re-mapping (sim_mem_remap): a charge recorded with (generation g, index i) is now on device
 * gen_map[g][vendor][i]; the current generation's indices are current (no table look-up). */
static pthread_mutex_t remap_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int remap_gen;
static int8_t gen_map[SIM_REMAP_GENS][SIM_VENDOR_COUNT][SIM_MAX_DEVICES];

static int cur_dev(int vendor, int gen, int dev) {
    if (gen == atomic_load_explicit(&remap_gen, memory_order_acquire))
        return dev;
    if (gen < 0 || gen >= SIM_REMAP_GENS || vendor < 0 || vendor >= SIM_VENDOR_COUNT || dev < 0 ||
        dev >= SIM_MAX_DEVICES)
        return dev;
    return gen_map[gen][vendor][dev];
}

int sim_mem_generation(void) {
    return atomic_load_explicit(&remap_gen, memory_order_acquire);
}

int sim_mem_current_dev(sim_vendor_t vendor, int gen, int dev) {
    return cur_dev((int)vendor, gen, dev);
}

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

int sim_mem_charge(sim_vendor_t vendor, int dev, uint64_t size) {
    uint64_t cap = 0, total = 0;
    int rc = capacity(vendor, dev, &cap, &total);
    if (rc != SIM_MEM_OK)
        return rc;
    _Atomic uint64_t *u = &used[vendor][dev];
    uint64_t old = atomic_load(u);
    do {
        if (old > cap || size > cap - old)
            return SIM_MEM_OOM;
    } while (!atomic_compare_exchange_weak(u, &old, old + size));
    return SIM_MEM_OK;
}

void sim_mem_uncharge(sim_vendor_t vendor, int dev, uint64_t size) {
    atomic_fetch_sub(&used[vendor][dev], size);
}

int sim_mem_alloc(sim_vendor_t vendor, int dev, size_t size, int counted, void **out) {
    return sim_mem_alloc_owned(vendor, dev, size, counted, NULL, out);
}

int sim_mem_alloc_owned(sim_vendor_t vendor, int dev, size_t size, int counted, void *owner, void **out) {
    if (counted) {
        int rc = sim_mem_charge(vendor, dev, size);
        if (rc != SIM_MEM_OK)
            return rc;
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
    b->gen = sim_mem_generation();
    b->counted = counted;
    b->owner = owner;
    *out = base + HDR;
    return SIM_MEM_OK;
}

size_t sim_mem_size(const void *ptr) {
    if (ptr == NULL)
        return 0;
    const struct blk *b = (const struct blk *)((const char *)ptr - HDR);
    return b->magic == MAGIC ? b->size : 0;
}

void *sim_mem_owner(const void *ptr) {
    if (ptr == NULL)
        return NULL;
    const struct blk *b = (const struct blk *)((const char *)ptr - HDR);
    return b->magic == MAGIC ? b->owner : NULL;
}

int sim_mem_free(void *ptr) {
    if (ptr == NULL)
        return SIM_MEM_OK;
    struct blk *b = (struct blk *)((char *)ptr - HDR);
    if (b->magic != MAGIC)
        return SIM_MEM_BADPTR;
    b->magic = 0;
    if (b->counted)
        atomic_fetch_sub(&used[b->vendor][cur_dev(b->vendor, b->gen, b->dev)], b->size);
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

/* ------------------------------------------------------------------ virtual memory management */

#define VMM_MAGIC 0x48435356u /* "HCSV" */

struct vmm_phys {
    uint32_t magic;
    int32_t vendor;
    int32_t dev;
    int32_t counted;
    int32_t gen; /* remap generation dev was charged in */
    size_t size;
    int refs;     /* the creator's reference + retains + one per mapping */
    int released; /* the creator's reference was dropped */
};

struct vmm_res {
    char *base;
    size_t size;
};

struct vmm_map {
    char *va;
    size_t size;
    struct vmm_phys *h;
};

static pthread_mutex_t vmm_mu = PTHREAD_MUTEX_INITIALIZER;
static struct vmm_res *res_tab;
static size_t res_n, res_cap;
static struct vmm_map *map_tab;
static size_t map_n, map_cap;

static void *grow(void *tab, size_t *cap, size_t elem) {
    size_t nc = *cap ? *cap * 2 : 64;
    void *t = realloc(tab, nc * elem);
    if (t != NULL)
        *cap = nc;
    return t;
}

int sim_vmm_create(sim_vendor_t vendor, int dev, size_t size, int counted, void **handle) {
    if (handle == NULL || size == 0 || size % SIM_VMM_GRANULE != 0)
        return SIM_MEM_BADVAL;
    if (counted) {
        int rc = sim_mem_charge(vendor, dev, size);
        if (rc != SIM_MEM_OK)
            return rc;
    }
    struct vmm_phys *h = calloc(1, sizeof *h);
    if (h == NULL) {
        if (counted)
            sim_mem_uncharge(vendor, dev, size);
        return SIM_MEM_HOSTOOM;
    }
    h->magic = VMM_MAGIC;
    h->vendor = vendor;
    h->dev = dev;
    h->gen = sim_mem_generation();
    h->counted = counted;
    h->size = size;
    h->refs = 1;
    *handle = h;
    return SIM_MEM_OK;
}

static void unref_locked(struct vmm_phys *h) {
    if (--h->refs > 0)
        return;
    if (h->counted)
        sim_mem_uncharge((sim_vendor_t)h->vendor, cur_dev(h->vendor, h->gen, h->dev), h->size);
    h->magic = 0;
    free(h);
}

static int valid_handle(const struct vmm_phys *h) {
    return h != NULL && h->magic == VMM_MAGIC;
}

int sim_vmm_release(void *handle) {
    struct vmm_phys *h = handle;
    pthread_mutex_lock(&vmm_mu);
    int rc = SIM_MEM_BADVAL;
    if (valid_handle(h) && h->refs > 0) {
        h->released = 1;
        unref_locked(h);
        rc = SIM_MEM_OK;
    }
    pthread_mutex_unlock(&vmm_mu);
    return rc;
}

int sim_vmm_reserve(size_t size, size_t alignment, void **va) {
    if (va == NULL || size == 0 || size % SIM_VMM_GRANULE != 0 || (alignment & (alignment - 1)) != 0)
        return SIM_MEM_BADVAL;
    size_t align = alignment > SIM_VMM_GRANULE ? alignment : SIM_VMM_GRANULE;
    /* address space only: PROT_NONE, never backed */
    char *m = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return SIM_MEM_HOSTOOM;
    char *base = (char *)(((uintptr_t)m + align - 1) & ~(uintptr_t)(align - 1));
    if (base > m)
        munmap(m, (size_t)(base - m));
    if (base + size < m + size + align)
        munmap(base + size, (size_t)(m + size + align - (base + size)));
    pthread_mutex_lock(&vmm_mu);
    if (res_n == res_cap) {
        void *t = grow(res_tab, &res_cap, sizeof *res_tab);
        if (t == NULL) {
            pthread_mutex_unlock(&vmm_mu);
            munmap(base, size);
            return SIM_MEM_HOSTOOM;
        }
        res_tab = t;
    }
    res_tab[res_n++] = (struct vmm_res){base, size};
    pthread_mutex_unlock(&vmm_mu);
    *va = base;
    return SIM_MEM_OK;
}

int sim_vmm_free_va(void *va, size_t size) {
    pthread_mutex_lock(&vmm_mu);
    int rc = SIM_MEM_BADVAL;
    for (size_t i = 0; i < res_n; i++) {
        if (res_tab[i].base != va || (size != 0 && res_tab[i].size != size))
            continue;
        for (size_t j = 0; j < map_n; j++) /* still mapped: refuse, as the drivers do */
            if (map_tab[j].va >= res_tab[i].base && map_tab[j].va < res_tab[i].base + res_tab[i].size)
                goto out;
        munmap(res_tab[i].base, res_tab[i].size);
        res_tab[i] = res_tab[--res_n];
        rc = SIM_MEM_OK;
        break;
    }
out:
    pthread_mutex_unlock(&vmm_mu);
    return rc;
}

int sim_vmm_map(void *va, size_t size, size_t offset, void *handle) {
    struct vmm_phys *h = handle;
    char *p = va;
    pthread_mutex_lock(&vmm_mu);
    int rc = SIM_MEM_BADVAL;
    if (!valid_handle(h) || size == 0 || offset > h->size || size > h->size - offset ||
        size % SIM_VMM_GRANULE != 0 || offset % SIM_VMM_GRANULE != 0 || (uintptr_t)p % SIM_VMM_GRANULE != 0)
        goto out;
    int inside = 0;
    for (size_t i = 0; i < res_n && !inside; i++)
        inside = p >= res_tab[i].base && size <= res_tab[i].size &&
                 p - res_tab[i].base <= (ptrdiff_t)(res_tab[i].size - size);
    if (!inside)
        goto out;
    for (size_t j = 0; j < map_n; j++)
        if (p < map_tab[j].va + map_tab[j].size && map_tab[j].va < p + size)
            goto out; /* overlaps an existing mapping */
    if (map_n == map_cap) {
        void *t = grow(map_tab, &map_cap, sizeof *map_tab);
        if (t == NULL) {
            rc = SIM_MEM_HOSTOOM;
            goto out;
        }
        map_tab = t;
    }
    map_tab[map_n++] = (struct vmm_map){p, size, h};
    h->refs++;
    rc = SIM_MEM_OK;
out:
    pthread_mutex_unlock(&vmm_mu);
    return rc;
}

int sim_vmm_unmap(void *va, size_t size) {
    char *p = va;
    pthread_mutex_lock(&vmm_mu);
    int rc = SIM_MEM_BADVAL;
    if (size == 0) {
        for (size_t j = 0; j < map_n; j++)
            if (map_tab[j].va == p) {
                size = map_tab[j].size;
                break;
            }
        if (size == 0)
            goto out;
    }
    /* whole mappings only, and the range must be fully mapped */
    size_t covered = 0;
    for (size_t j = 0; j < map_n; j++) {
        if (map_tab[j].va >= p && map_tab[j].va < p + size) {
            if (map_tab[j].va + map_tab[j].size > p + size)
                goto out;
            covered += map_tab[j].size;
        } else if (map_tab[j].va < p && map_tab[j].va + map_tab[j].size > p) {
            goto out;
        }
    }
    if (covered != size)
        goto out;
    for (size_t j = 0; j < map_n;) {
        if (map_tab[j].va >= p && map_tab[j].va < p + size) {
            struct vmm_phys *h = map_tab[j].h;
            map_tab[j] = map_tab[--map_n];
            unref_locked(h);
        } else {
            j++;
        }
    }
    rc = SIM_MEM_OK;
out:
    pthread_mutex_unlock(&vmm_mu);
    return rc;
}

int sim_vmm_check_mapped(const void *va, size_t size) {
    const char *p = va;
    pthread_mutex_lock(&vmm_mu);
    size_t covered = 0;
    for (size_t j = 0; j < map_n; j++) {
        const char *a = map_tab[j].va, *b = map_tab[j].va + map_tab[j].size;
        const char *lo = a > p ? a : p, *hi = b < p + size ? b : p + size;
        if (lo < hi)
            covered += (size_t)(hi - lo);
    }
    pthread_mutex_unlock(&vmm_mu);
    return size != 0 && covered == size ? SIM_MEM_OK : SIM_MEM_BADVAL;
}

int sim_vmm_retain(const void *va, void **handle) {
    const char *p = va;
    pthread_mutex_lock(&vmm_mu);
    int rc = SIM_MEM_BADVAL;
    for (size_t j = 0; j < map_n; j++) {
        if (p >= map_tab[j].va && p < map_tab[j].va + map_tab[j].size) {
            map_tab[j].h->refs++;
            *handle = map_tab[j].h;
            rc = SIM_MEM_OK;
            break;
        }
    }
    pthread_mutex_unlock(&vmm_mu);
    return rc;
}

int sim_mem_remap(sim_vendor_t vendor, const int *old_to_new, int n, const sim_profile_t *profile) {
    if ((int)vendor < 0 || vendor >= SIM_VENDOR_COUNT || n < 0 || n > SIM_MAX_DEVICES || profile == NULL)
        return SIM_MEM_BADDEV;
    pthread_mutex_lock(&remap_mu);
    int g = atomic_load(&remap_gen);
    if (g + 1 >= SIM_REMAP_GENS) {
        pthread_mutex_unlock(&remap_mu);
        return SIM_MEM_BADDEV; /* moved too often: the caller keeps the old mapping */
    }
    int map[SIM_MAX_DEVICES];
    for (int k = 0; k < SIM_MAX_DEVICES; k++)
        map[k] = (k < n && old_to_new[k] >= 0 && old_to_new[k] < SIM_MAX_DEVICES) ? old_to_new[k] : k;
    /* earlier generations' charges follow the move; the current generation's are mapped directly */
    for (int e = 0; e < g; e++)
        for (int k = 0; k < SIM_MAX_DEVICES; k++)
            gen_map[e][vendor][k] = (int8_t)map[(int)gen_map[e][vendor][k]];
    for (int v = 0; v < SIM_VENDOR_COUNT; v++)
        for (int k = 0; k < SIM_MAX_DEVICES; k++)
            gen_map[g][v][k] = (int8_t)(v == (int)vendor ? map[k] : k);
    uint64_t moved[SIM_MAX_DEVICES] = {0};
    for (int k = 0; k < SIM_MAX_DEVICES; k++)
        moved[map[k]] += atomic_exchange(&used[vendor][k], 0);
    for (int k = 0; k < SIM_MAX_DEVICES; k++)
        atomic_fetch_add(&used[vendor][k], moved[k]);
    atomic_store_explicit(&cached, profile, memory_order_release); /* the old one stays allocated: readers */
    atomic_store_explicit(&remap_gen, g + 1, memory_order_release);
    pthread_mutex_unlock(&remap_mu);
    return SIM_MEM_OK;
}
