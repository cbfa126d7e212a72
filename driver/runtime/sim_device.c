/* sim_device.c - see sim_device.h. */
#define _GNU_SOURCE
#include "sim_device.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sim_mem.h"

#define SHM_MAGIC 0x48435344u /* "HCSD" */
#define SHM_VERSION 2u
#define GC_EVERY_NS 100000000ull /* look for dead processes' contexts every 100 ms */
#define WAIT_MAX_NS 50000000ull  /* re-check at least every 50 ms while waiting */

struct ctx {
    int32_t pid;
    int32_t pad;
    uint64_t start; /* the process's start time (/proc/<pid>/stat): same pid + start = same process */
    uint64_t submitted_ns; /* cumulative device time queued */
    uint64_t done_ns;      /* cumulative device time executed */
    uint64_t launches;
};

struct shm {
    _Atomic uint32_t magic;
    uint32_t version;
    pthread_mutex_t mu; /* robust, process-shared */
    uint64_t now_ns;    /* simulated up to */
    uint64_t last_gc_ns;
    uint64_t busy_ns;
    uint64_t slice_ns;
    uint64_t slice_left_ns;
    double ns_per_flop;
    int32_t cur; /* context holding the device, -1 none */
    int32_t pad;
    struct ctx ctx[SIM_DEV_MAX_CTX];
};

struct local {
    struct shm *s;
    int slot;
    pid_t pid;
    char path[4096]; /* the file mapped (an observer re-maps when the profile or directory changed) */
};

static pthread_mutex_t setup_mu = PTHREAD_MUTEX_INITIALIZER;

/* Field 22 of /proc/self/stat (start time in clock ticks since boot); 0 when unreadable. Every
 * simulated runtime links its own copy of this file: a process using two of them (CNRT and CNDrv,
 * ACL and its operator libraries) must find its one context, not reset it as a recycled pid's. */
static uint64_t self_start(void) {
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    /* after ") ": field 3 (state) onwards; start time is field 22 */
    int field = 2;
    for (p++; *p != '\0' && field < 22; p++)
        if (*p == ' ')
            field++;
    return strtoull(p, NULL, 10);
}
static struct local locals[SIM_VENDOR_COUNT][SIM_MAX_DEVICES];

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void lock(struct shm *s) {
    int rc = pthread_mutex_lock(&s->mu);
    if (rc == EOWNERDEAD) /* a process died holding it: every field is valid at any instant */
        pthread_mutex_consistent(&s->mu);
}

static void unlock(struct shm *s) {
    pthread_mutex_unlock(&s->mu);
}

static void device_path(const sim_device_t *d, char *path, size_t len) {
    const char *dir = getenv("HCS_SIM_DEVICE_DIR");
    if (dir == NULL || *dir == '\0')
        dir = "/dev/shm";
    snprintf(path, len, "%s/hcs-simdev-%s", dir, d->uuid);
}

static struct shm *map_device(const sim_device_t *d) {
    char path[4096];
    device_path(d, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0) {
        fprintf(stderr, "hcs-sim: %s: %s (set HCS_SIM_DEVICE_DIR to a writable directory)\n", path,
                strerror(errno));
        return NULL;
    }
    (void)fchmod(fd, 0666);
    while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
    }
    struct stat st;
    struct shm *s = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (st.st_size >= (off_t)sizeof *s || ftruncate(fd, sizeof *s) == 0))
        s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s != MAP_FAILED && (atomic_load(&s->magic) != SHM_MAGIC || s->version != SHM_VERSION)) {
        memset(s, 0, sizeof *s);
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&s->mu, &a);
        pthread_mutexattr_destroy(&a);
        s->version = SHM_VERSION;
        s->now_ns = mono_ns();
        s->cur = -1;
        s->slice_ns = (uint64_t)d->timeslice_us * 1000ull;
        s->ns_per_flop = 1.0 / ((double)d->tflops_fp16 * 1e3); /* tflops*1e12 flop/s = tflops*1e3 flop/ns */
        atomic_store(&s->magic, SHM_MAGIC);
    }
    (void)flock(fd, LOCK_UN);
    close(fd);
    if (s == MAP_FAILED) {
        fprintf(stderr, "hcs-sim: %s: cannot map the device state: %s\n", path, strerror(errno));
        return NULL;
    }
    return s;
}

/* Round-robin execution from s->now_ns up to `until`; `stop`: return as soon as ctx[stop_ctx] has
 * executed stop_ticket (prediction). Returns the simulated time reached. */
static uint64_t run(struct shm *s, struct ctx *c, uint64_t *now, int32_t *cur, uint64_t *left, uint64_t *busy,
                    uint64_t until, int stop_ctx, uint64_t stop_ticket) {
    while (*now < until) {
        if (stop_ctx >= 0 && c[stop_ctx].done_ns >= stop_ticket)
            break;
        int k = *cur;
        if (k < 0 || c[k].submitted_ns <= c[k].done_ns || *left == 0) {
            int next = -1;
            for (int i = 1; i <= SIM_DEV_MAX_CTX; i++) {
                int j = ((k < 0 ? -1 : k) + i + SIM_DEV_MAX_CTX) % SIM_DEV_MAX_CTX;
                if (c[j].pid != 0 && c[j].submitted_ns > c[j].done_ns) {
                    next = j;
                    break;
                }
            }
            if (next < 0) { /* idle */
                *cur = -1;
                *now = until;
                break;
            }
            *cur = k = next;
            *left = s->slice_ns;
        }
        uint64_t step = c[k].submitted_ns - c[k].done_ns;
        if (*left < step)
            step = *left;
        if (until - *now < step)
            step = until - *now;
        if (stop_ctx == k && stop_ticket - c[k].done_ns < step)
            step = stop_ticket - c[k].done_ns;
        c[k].done_ns += step;
        *now += step;
        *left -= step;
        *busy += step;
        if (c[k].done_ns >= c[k].submitted_ns)
            *left = 0; /* queue drained: the next context gets the device */
    }
    return *now;
}

static void gc(struct shm *s) {
    for (int i = 0; i < SIM_DEV_MAX_CTX; i++)
        if (s->ctx[i].pid != 0 && kill(s->ctx[i].pid, 0) != 0 && errno == ESRCH)
            memset(&s->ctx[i], 0, sizeof s->ctx[i]);
}

/* Catch the device up to the present (lock held). */
static void advance(struct shm *s) {
    uint64_t now = mono_ns();
    if (now - s->last_gc_ns > GC_EVERY_NS) {
        s->last_gc_ns = now;
        gc(s);
    }
    if (now > s->now_ns)
        run(s, s->ctx, &s->now_ns, &s->cur, &s->slice_left_ns, &s->busy_ns, now, -1, 0);
}

/* When ctx k's work up to ticket finishes if nothing else is queued meanwhile (lock held). */
static uint64_t predict(struct shm *s, int k, uint64_t ticket) {
    struct ctx c[SIM_DEV_MAX_CTX];
    memcpy(c, s->ctx, sizeof c);
    uint64_t now = s->now_ns, left = s->slice_left_ns, busy = 0;
    int32_t cur = s->cur;
    return run(s, c, &now, &cur, &left, &busy, UINT64_MAX, k, ticket);
}

static int attach(sim_vendor_t v, int dev, struct local **out) {
    if ((int)v < 0 || v >= SIM_VENDOR_COUNT || dev < 0 || dev >= SIM_MAX_DEVICES)
        return SIM_DEV_BADDEV;
    struct local *l = &locals[v][dev];
    pid_t me = getpid();
    if (l->s != NULL && l->pid == me) {
        *out = l;
        return SIM_DEV_OK;
    }
    pthread_mutex_lock(&setup_mu);
    int rc = SIM_DEV_OK;
    if (l->s == NULL || l->pid != me) {
        const sim_profile_t *p;
        if (sim_mem_profile(&p) != SIM_MEM_OK) {
            rc = SIM_DEV_NOPROFILE;
            goto out;
        }
        const sim_device_t *d = sim_vendor_device(p, v, dev);
        if (d == NULL) {
            rc = SIM_DEV_BADDEV;
            goto out;
        }
        struct shm *s = l->s != NULL ? l->s : map_device(d); /* a forked child keeps the mapping */
        if (s == NULL) {
            rc = SIM_DEV_IO;
            goto out;
        }
        lock(s);
        advance(s);
        int slot = -1;
        uint64_t start = self_start();
        bool mine = false;
        for (int i = 0; i < SIM_DEV_MAX_CTX && slot < 0; i++)
            if (s->ctx[i].pid == me) {
                slot = i; /* ours (another runtime library of this process), or a recycled pid's */
                mine = start != 0 && s->ctx[i].start == start;
            }
        for (int i = 0; i < SIM_DEV_MAX_CTX && slot < 0; i++)
            if (s->ctx[i].pid == 0)
                slot = i;
        if (slot < 0) {
            gc(s);
            for (int i = 0; i < SIM_DEV_MAX_CTX && slot < 0; i++)
                if (s->ctx[i].pid == 0)
                    slot = i;
        }
        if (slot >= 0 && !mine) {
            memset(&s->ctx[slot], 0, sizeof s->ctx[slot]);
            s->ctx[slot].pid = me;
            s->ctx[slot].start = start;
        }
        unlock(s);
        if (slot < 0) {
            fprintf(stderr, "hcs-sim: device %s: all %d contexts in use\n", d->uuid, SIM_DEV_MAX_CTX);
            rc = SIM_DEV_FULL;
            goto out;
        }
        l->s = s;
        l->slot = slot;
        l->pid = me;
    }
out:
    pthread_mutex_unlock(&setup_mu);
    *out = l;
    return rc;
}

uint64_t sim_dev_cost_ns(sim_vendor_t v, int dev, uint64_t flops) {
    struct local *l;
    if (attach(v, dev, &l) != SIM_DEV_OK)
        return 0;
    double ns = (double)flops * l->s->ns_per_flop;
    return ns < 1.0 ? 1 : (uint64_t)ns;
}

int sim_dev_launch_ns(sim_vendor_t v, int dev, uint64_t ns, sim_ticket_t *ticket) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return rc;
    struct shm *s = l->s;
    lock(s);
    advance(s);
    struct ctx *c = &s->ctx[l->slot];
    if (c->pid != l->pid) { /* our context was collected (cannot happen while we live): re-take it */
        memset(c, 0, sizeof *c);
        c->pid = l->pid;
    }
    c->submitted_ns += ns;
    c->launches++;
    if (ticket != NULL)
        *ticket = c->submitted_ns;
    unlock(s);
    return SIM_DEV_OK;
}

int sim_dev_launch(sim_vendor_t v, int dev, uint64_t flops, sim_ticket_t *ticket) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return rc;
    double ns = (double)flops * l->s->ns_per_flop;
    return sim_dev_launch_ns(v, dev, ns < 1.0 ? 1 : (uint64_t)ns, ticket);
}

int sim_dev_mark(sim_vendor_t v, int dev, sim_ticket_t *ticket) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return rc;
    lock(l->s);
    *ticket = l->s->ctx[l->slot].submitted_ns;
    unlock(l->s);
    return SIM_DEV_OK;
}

int sim_dev_done(sim_vendor_t v, int dev, sim_ticket_t ticket) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return -rc;
    lock(l->s);
    advance(l->s);
    int done = l->s->ctx[l->slot].done_ns >= ticket;
    unlock(l->s);
    return done;
}

int sim_dev_wait(sim_vendor_t v, int dev, sim_ticket_t ticket) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return rc;
    struct shm *s = l->s;
    for (;;) {
        lock(s);
        advance(s);
        struct ctx *c = &s->ctx[l->slot];
        if (c->done_ns >= ticket || c->submitted_ns < ticket) {
            unlock(s);
            return SIM_DEV_OK;
        }
        uint64_t at = predict(s, l->slot, ticket);
        uint64_t now = s->now_ns;
        unlock(s);
        if (at - now > WAIT_MAX_NS)
            at = now + WAIT_MAX_NS;
        struct timespec ts = {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
    }
}

int sim_dev_sync(sim_vendor_t v, int dev) {
    sim_ticket_t t;
    int rc = sim_dev_mark(v, dev, &t);
    return rc != SIM_DEV_OK ? rc : sim_dev_wait(v, dev, t);
}

int sim_dev_time(sim_vendor_t v, int dev, uint64_t *done_ns, uint64_t *pending_ns) {
    struct local *l;
    int rc = attach(v, dev, &l);
    if (rc != SIM_DEV_OK)
        return rc;
    lock(l->s);
    advance(l->s);
    struct ctx *c = &l->s->ctx[l->slot];
    if (done_ns != NULL)
        *done_ns = c->done_ns;
    if (pending_ns != NULL)
        *pending_ns = c->submitted_ns - c->done_ns;
    unlock(l->s);
    return SIM_DEV_OK;
}

int sim_dev_accounting(sim_vendor_t v, int dev, struct hcs_sim_acct *out, int max, uint64_t *now_ns,
                       uint64_t *busy_ns) {
    const sim_profile_t *p;
    if ((int)v < 0 || v >= SIM_VENDOR_COUNT || dev < 0 || dev >= SIM_MAX_DEVICES)
        return -SIM_DEV_BADDEV;
    if (sim_profile_load(&p, NULL, 0) != 0) /* an observer follows $HCS_SIM_PROFILE (cached per file) */
        return -SIM_DEV_NOPROFILE;
    const sim_device_t *d = sim_vendor_device(p, v, dev);
    if (d == NULL)
        return -SIM_DEV_BADDEV;
    /* an observer maps the device without taking a context */
    pthread_mutex_lock(&setup_mu);
    struct local *l = &locals[v][dev];
    struct shm *s = l->s;
    char path[4096];
    device_path(d, path, sizeof path);
    if (s == NULL || (l->pid == -1 && strcmp(path, l->path) != 0)) {
        s = map_device(d);
        l->s = s;
        l->pid = -1; /* mapped, no context yet */
        snprintf(l->path, sizeof l->path, "%s", path);
    }
    pthread_mutex_unlock(&setup_mu);
    if (s == NULL)
        return -SIM_DEV_IO;
    int n = 0;
    lock(s);
    advance(s);
    for (int i = 0; i < SIM_DEV_MAX_CTX && n < max; i++) {
        if (s->ctx[i].pid == 0)
            continue;
        out[n].pid = s->ctx[i].pid;
        out[n].pad = 0;
        out[n].done_ns = s->ctx[i].done_ns;
        out[n].pending_ns = s->ctx[i].submitted_ns - s->ctx[i].done_ns;
        out[n].launches = s->ctx[i].launches;
        n++;
    }
    if (now_ns != NULL)
        *now_ns = s->now_ns;
    if (busy_ns != NULL)
        *busy_ns = s->busy_ns;
    unlock(s);
    return n;
}

struct sim_event *sim_event_new(void) {
    struct sim_event *e = calloc(1, sizeof *e);
    if (e != NULL)
        e->magic = SIM_EVENT_MAGIC;
    return e;
}

int sim_event_record(struct sim_event *e, sim_vendor_t v, int dev) {
    if (e == NULL || e->magic != SIM_EVENT_MAGIC)
        return SIM_DEV_BADDEV;
    int rc = sim_dev_mark(v, dev, &e->ticket);
    if (rc == SIM_DEV_OK) {
        e->vendor = (int)v;
        e->dev = dev;
        e->recorded = 1;
    }
    return rc;
}

int sim_event_wait(struct sim_event *e) {
    if (e == NULL || e->magic != SIM_EVENT_MAGIC)
        return SIM_DEV_BADDEV;
    return e->recorded ? sim_dev_wait((sim_vendor_t)e->vendor, e->dev, e->ticket) : SIM_DEV_OK;
}

int sim_event_free(struct sim_event *e) {
    if (e == NULL || e->magic != SIM_EVENT_MAGIC)
        return SIM_DEV_BADDEV;
    e->magic = 0;
    free(e);
    return SIM_DEV_OK;
}
