/* ptrmap.c - see ptrmap.h. Linear probing with backward-shift deletion (no tombstones). */
#include "ptrmap.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

static inline void stripe_lock(struct hcs_ptr_stripe *s) {
    for (unsigned n = 0;; n++) {
        int expected = 0;
        if (atomic_compare_exchange_weak_explicit(&s->lock, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        if (n < 100) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
}

static inline void stripe_unlock(struct hcs_ptr_stripe *s) {
    atomic_store_explicit(&s->lock, 0, memory_order_release);
}

static inline uint64_t mix(uint64_t key, uint32_t kind) {
    uint64_t h = (key ^ ((uint64_t)kind << 59)) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static inline struct hcs_ptr_stripe *stripe_of(struct hcs_ptrmap *m, uint64_t h) {
    return &m->stripes[(h >> 58) & (HCS_PTRMAP_STRIPES - 1)];
}

void hcs_ptrmap_init(struct hcs_ptrmap *m) {
    for (int i = 0; i < HCS_PTRMAP_STRIPES; i++) {
        atomic_init(&m->stripes[i].lock, 0);
        m->stripes[i].tab = NULL;
        m->stripes[i].cap = 0;
        m->stripes[i].count = 0;
    }
}

void hcs_ptrmap_reset_after_fork(struct hcs_ptrmap *m) {
    /* The parent's tables describe the parent's allocations; the child owns none of them. The old
     * tables are leaked on purpose (their stripe locks may be held by threads that do not exist
     * in the child). */
    hcs_ptrmap_init(m);
}

static inline __attribute__((always_inline)) bool insert_raw(struct hcs_ptr_entry *tab, uint32_t cap,
                                                             const struct hcs_ptr_entry *e, uint64_t h,
                                                             struct hcs_ptr_entry *old) {
    uint32_t mask = cap - 1;
    for (uint32_t i = (uint32_t)h & mask, n = 0; n < cap; i = (i + 1) & mask, n++) {
        if (tab[i].key == 0) {
            tab[i] = *e;
            return true;
        }
        if (tab[i].key == e->key && tab[i].kind == e->kind) {
            if (old != NULL)
                *old = tab[i];
            tab[i] = *e;
            return false;
        }
    }
    return false; /* unreachable: load factor <= 1/2 */
}

static bool grow(struct hcs_ptr_stripe *s) {
    uint32_t ncap = s->cap ? s->cap * 2 : 64;
    struct hcs_ptr_entry *nt = calloc(ncap, sizeof *nt);
    if (nt == NULL)
        return false;
    for (uint32_t i = 0; i < s->cap; i++)
        if (s->tab[i].key != 0)
            (void)insert_raw(nt, ncap, &s->tab[i], mix(s->tab[i].key, s->tab[i].kind), NULL);
    free(s->tab);
    s->tab = nt;
    s->cap = ncap;
    return true;
}

enum hcs_put_result hcs_ptrmap_put(struct hcs_ptrmap *m, uint64_t key, uint32_t kind, uint64_t size, uint32_t dev,
                                   struct hcs_ptr_entry *old) {
    uint64_t h = mix(key, kind);
    struct hcs_ptr_stripe *s = stripe_of(m, h);
    struct hcs_ptr_entry e = {.key = key, .size = size, .dev = dev, .kind = kind};
    if (key == 0)
        return HCS_PUT_NEW; /* a NULL pointer is never freed back to us */
    stripe_lock(s);
    if ((s->count + 1) * 2 > s->cap && !grow(s)) {
        stripe_unlock(s);
        return HCS_PUT_NOMEM;
    }
    enum hcs_put_result r = HCS_PUT_REPLACED;
    if (insert_raw(s->tab, s->cap, &e, h, old)) {
        s->count++;
        r = HCS_PUT_NEW;
    }
    stripe_unlock(s);
    return r;
}

bool hcs_ptrmap_take(struct hcs_ptrmap *m, uint64_t key, uint32_t kind, uint64_t *size, uint32_t *dev) {
    uint64_t h = mix(key, kind);
    struct hcs_ptr_stripe *s = stripe_of(m, h);
    bool found = false;
    stripe_lock(s);
    if (s->cap != 0) {
        uint32_t mask = s->cap - 1;
        uint32_t i = (uint32_t)h & mask;
        for (uint32_t n = 0; n < s->cap && s->tab[i].key != 0; n++, i = (i + 1) & mask) {
            if (s->tab[i].key == key && s->tab[i].kind == kind) {
                *size = s->tab[i].size;
                *dev = s->tab[i].dev;
                found = true;
                /* backward-shift deletion keeps probe chains intact without tombstones */
                uint32_t hole = i;
                uint32_t j = (i + 1) & mask;
                while (s->tab[j].key != 0) {
                    uint32_t home = (uint32_t)mix(s->tab[j].key, s->tab[j].kind) & mask;
                    /* move j into hole when home is not cyclically in (hole, j] */
                    bool in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
                    if (!in_range) {
                        s->tab[hole] = s->tab[j];
                        hole = j;
                    }
                    j = (j + 1) & mask;
                }
                memset(&s->tab[hole], 0, sizeof s->tab[hole]);
                s->count--;
                break;
            }
        }
    }
    stripe_unlock(s);
    return found;
}
