/* compute.c - see compute.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "compute.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CL_MAGIC 0x48434c31u /* "HCL1" */
#define CL_VERSION 1u
#define CL_GROUPS 48
#define CL_MEMBERS 32
#define CAP_WINDOW_NS 250000000.0  /* tokens saved up to share x 250 ms of device time */
#define INIT_WINDOW_NS 250000000.0 /* a new group starts with share x 250 ms of device time */
#define BURST_QUEUE_NS 20000000ll  /* burst: at most 20 ms of device time queued beyond the tokens */
#define DEMAND_WINDOW_NS 50000000ull /* "asked for time in the last 50 ms" */
#define CHECK_EVERY_NS 5000000.0   /* re-account at least every ~5 ms of the group's device time */
#define MAX_CREDIT 4096
#define SLEEP_MIN_NS 100000ll
#define SLEEP_MAX_NS 10000000ll
#define GROUP_IDLE_NS 30000000000ull /* a group nobody of which is alive nor asked for 30 s: freed */

struct cl_member {
    int32_t pid;
    int32_t pad;
    uint64_t pending_ns;
};

struct cl_group {
    char id[96];
    double share;
    int32_t policy;
    int32_t used_slot;
    double tokens_ns;
    uint64_t last_ns;
    uint64_t demand_ns;
    uint64_t used_ns; /* device time charged, for observers */
    struct cl_member m[CL_MEMBERS];
};

struct cl_shm {
    _Atomic uint32_t magic;
    uint32_t version;
    pthread_mutex_t mu;
    struct cl_group g[CL_GROUPS];
};

typedef int (*time_fn)(int ordinal, uint64_t *done_ns, uint64_t *pending_ns);
typedef int (*sync_fn)(void);

struct pdev {
    pthread_mutex_t mu;
    bool ready;
    bool broken; /* no device timing: admitted one kernel at a time, synchronously accounted */
    struct cl_shm *shm;
    int gi, mi;
    time_fn timing; /* NULL: no per-context device time (real drivers): sync-based accounting */
    sync_fn sync;
    uint64_t wall_done, wall_mark; /* sync-based: wall time from admission to drained, summed */
    uint64_t last_done, last_total;
    int64_t granted;
    double avg_ns;
};

struct hcs_compute hcs_compute_g;
_Atomic int64_t hcs_compute_credit[HCS_RT_COUNT][HCS_MAX_DEVICES];

static struct pdev pd[HCS_RT_COUNT][HCS_MAX_DEVICES];
static hcs_compute_log_fn log_fn;
static hcs_compute_resolve_fn resolve_fn;
static char ledger_dir[1024];
static bool ledger_shared;
static const char *const rt_names[HCS_RT_COUNT] = {"cuda", "acl", "hip", "cnrt", "cndrv"};

static void logf_(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(int level, const char *fmt, ...) {
    if (log_fn == NULL)
        return;
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf);
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ configuration */

static void conf_reset(struct hcs_compute_conf *c) {
    memset(c, 0, sizeof *c);
    c->policy = HCS_POLICY_HARD;
}

static bool parse_num(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool safe_token(const char *s) {
    if (*s == '\0' || strlen(s) >= 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

int hcs_compute_parse(struct hcs_compute_conf *c, const char *text, const char *origin, char *err, size_t errlen) {
    conf_reset(c);
    char *buf = strdup(text);
    if (buf == NULL) {
        snprintf(err, errlen, "%s: out of memory", origin);
        return -1;
    }
    int lineno = 0, rc = 0;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *f[8];
        int n = 0;
        for (char *s2 = NULL, *t = strtok_r(line, " \t\r", &s2); t != NULL && n < 8; t = strtok_r(NULL, " \t\r", &s2))
            f[n++] = t;
        if (n == 0)
            continue;
        if (strcmp(f[0], "policy") == 0) {
            if (n != 2 || (strcmp(f[1], "hard") != 0 && strcmp(f[1], "burst") != 0)) {
                snprintf(err, errlen, "%s:%d: expected \"policy hard\" or \"policy burst\"", origin, lineno);
                rc = -1;
                break;
            }
            c->policy = strcmp(f[1], "burst") == 0 ? HCS_POLICY_BURST : HCS_POLICY_HARD;
            continue;
        }
        if (strcmp(f[0], "group") == 0) {
            if (n != 2 || strlen(f[1]) >= sizeof c->group || !safe_token(f[1])) {
                snprintf(err, errlen, "%s:%d: expected \"group <id>\" ([A-Za-z0-9._-], < 64 chars)", origin, lineno);
                rc = -1;
                break;
            }
            snprintf(c->group, sizeof c->group, "%s", f[1]);
            continue;
        }
        /* <index|*> <share> [<granted_tflops> <device_tflops> [<device key>]] */
        char *end;
        long idx = strtol(f[0], &end, 10);
        bool all = strcmp(f[0], "*") == 0;
        double share, granted = 0, device = 0;
        if ((!all && (end == f[0] || *end != '\0' || idx < 0 || idx >= HCS_MAX_DEVICES)) || (n != 2 && n != 4 && n != 5) ||
            !parse_num(f[1], &share)) {
            snprintf(err, errlen, "%s:%d: expected \"<device index> <share> [<granted TFLOPS> <device TFLOPS> "
                     "[<device id>]]\"", origin, lineno);
            rc = -1;
            break;
        }
        if (n >= 4 && (!parse_num(f[2], &granted) || !parse_num(f[3], &device) || granted <= 0 || device <= 0)) {
            snprintf(err, errlen, "%s:%d: granted and device TFLOPS must be positive numbers", origin, lineno);
            rc = -1;
            break;
        }
        if (share <= 0.0 || share > 1.0 || (n >= 4 && granted > device * (1.0 + 1e-9))) {
            snprintf(err, errlen, "%s:%d: share %s is %s", origin, lineno, f[1],
                     share <= 0.0 ? "not positive" : "larger than the device");
            rc = -1;
            break;
        }
        if (n >= 4 && fabs(share - granted / device) > 0.005) {
            snprintf(err, errlen, "%s:%d: share %s does not match %s/%s TFLOPS", origin, lineno, f[1], f[2], f[3]);
            rc = -1;
            break;
        }
        if (n == 5 && !safe_token(f[4])) {
            snprintf(err, errlen, "%s:%d: device id \"%.40s\" has characters other than [A-Za-z0-9._-]", origin,
                     lineno, f[4]);
            rc = -1;
            break;
        }
        for (int d = all ? 0 : (int)idx; d <= (all ? HCS_MAX_DEVICES - 1 : (int)idx); d++) {
            c->share[d] = share;
            if (n == 5)
                snprintf(c->key[d], sizeof c->key[d], "%s", f[4]);
        }
        c->any = true;
    }
    free(buf);
    if (rc != 0)
        conf_reset(c);
    return rc;
}

int hcs_compute_parse_record(struct hcs_compute_conf *c, const char *quota_text) {
    conf_reset(c);
    if (quota_text == NULL)
        return 0;
    int count = 0;
    const char *p = quota_text;
    while ((p = strstr(p, "# hcs-compute ")) != NULL) {
        p += strlen("# hcs-compute ");
        char idxs[16] = "", shares[32] = "";
        if (sscanf(p, "%15s %31s", idxs, shares) != 2)
            continue;
        double share;
        if (!parse_num(shares, &share) || share <= 0.0 || share > 1.0)
            continue;
        char *end;
        long idx = strtol(idxs, &end, 10);
        if (strcmp(idxs, "*") == 0) {
            for (int d = 0; d < HCS_MAX_DEVICES; d++)
                c->share[d] = share;
        } else if (end != idxs && *end == '\0' && idx >= 0 && idx < HCS_MAX_DEVICES) {
            c->share[idx] = share;
        } else {
            continue;
        }
        c->any = true;
        count++;
    }
    return count;
}

/* ------------------------------------------------------------------ the per-device ledger */

static struct cl_shm *ledger_map(int rt, int dev) {
    struct cl_shm *s = MAP_FAILED;
    if (ledger_shared) {
        char path[1400];
        const char *key = hcs_compute_g.conf.key[dev];
        if (*key != '\0')
            snprintf(path, sizeof path, "%s/hcs-compute-%s.ledger", ledger_dir, key);
        else
            snprintf(path, sizeof path, "%s/hcs-compute-%s-%d.ledger", ledger_dir, rt_names[rt], dev);
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (fd >= 0) {
            (void)fchmod(fd, 0666);
            while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
            }
            struct stat st;
            if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                (st.st_size >= (off_t)sizeof *s || ftruncate(fd, sizeof *s) == 0))
                s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        }
        if (s == MAP_FAILED)
            logf_(1, "compute ledger %s: %s; this process is held to its share on its own", path, strerror(errno));
        if (s != MAP_FAILED && (atomic_load(&s->magic) != CL_MAGIC || s->version != CL_VERSION))
            memset(s, 0, sizeof *s); /* new (or foreign) file: initialised below under the file lock */
        if (s != MAP_FAILED && atomic_load(&s->magic) != CL_MAGIC) {
            pthread_mutexattr_t a;
            pthread_mutexattr_init(&a);
            pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
            pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
            pthread_mutex_init(&s->mu, &a);
            pthread_mutexattr_destroy(&a);
            s->version = CL_VERSION;
            atomic_store(&s->magic, CL_MAGIC);
        }
        if (fd >= 0) {
            (void)flock(fd, LOCK_UN);
            close(fd);
        }
    }
    if (s == MAP_FAILED) { /* process-local ledger: still a hard per-process limit */
        s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED)
            return NULL;
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&s->mu, &a);
        pthread_mutexattr_destroy(&a);
        s->version = CL_VERSION;
        atomic_store(&s->magic, CL_MAGIC);
    }
    return s;
}

static void cl_lock(struct cl_shm *s) {
    if (pthread_mutex_lock(&s->mu) == EOWNERDEAD) /* every field is valid at any instant */
        pthread_mutex_consistent(&s->mu);
}

static bool alive(int32_t pid) {
    return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH);
}

/* Find or create this process's group and member slot (ledger lock held). */
static bool join(struct cl_shm *s, struct pdev *p, double share, uint64_t now) {
    const char *id = hcs_compute_g.conf.group;
    int gi = -1, free_g = -1;
    for (int i = 0; i < CL_GROUPS; i++) {
        struct cl_group *g = &s->g[i];
        if (g->used_slot && strncmp(g->id, id, sizeof g->id) == 0) {
            gi = i;
            break;
        }
        if (g->used_slot && now - g->demand_ns > GROUP_IDLE_NS) {
            bool any = false;
            for (int k = 0; k < CL_MEMBERS && !any; k++)
                any = alive(g->m[k].pid);
            if (!any)
                memset(g, 0, sizeof *g); /* gone: free the slot */
        }
        if (!g->used_slot && free_g < 0)
            free_g = i;
    }
    if (gi < 0) {
        if (free_g < 0)
            return false;
        gi = free_g;
        struct cl_group *g = &s->g[gi];
        memset(g, 0, sizeof *g);
        snprintf(g->id, sizeof g->id, "%s", id);
        g->used_slot = 1;
        g->tokens_ns = share * INIT_WINDOW_NS; /* a cushion: the queue need not drain between admissions */
        g->last_ns = now;
        g->demand_ns = now;
    }
    struct cl_group *g = &s->g[gi];
    g->share = share; /* informational: each process enforces the share from its own file */
    g->policy = hcs_compute_g.conf.policy;
    int32_t me = (int32_t)getpid();
    int mi = -1;
    for (int k = 0; k < CL_MEMBERS && mi < 0; k++)
        if (g->m[k].pid == me)
            mi = k;
    for (int k = 0; k < CL_MEMBERS && mi < 0; k++)
        if (g->m[k].pid == 0 || !alive(g->m[k].pid))
            mi = k;
    if (mi < 0)
        return false;
    g->m[mi].pid = me;
    g->m[mi].pending_ns = 0;
    p->gi = gi;
    p->mi = mi;
    return true;
}

/* Without the runtime's per-context device time: drain the context (the runtime's synchronise) and
 * charge the wall time since the previous admission - an upper bound of the device time used, so
 * the share is never exceeded; exact while the application keeps the device busy. */
static int sync_timing(struct pdev *p, uint64_t *done_ns, uint64_t *pending_ns) {
    if (p->sync == NULL || p->sync() != 0)
        return -1;
    uint64_t now = mono_ns();
    if (p->wall_mark != 0 && now > p->wall_mark)
        p->wall_done += now - p->wall_mark;
    p->wall_mark = 0; /* drained: idle until the next admission */
    *done_ns = p->wall_done;
    *pending_ns = 0;
    return 0;
}

static int timing(struct pdev *p, int ordinal, uint64_t *done_ns, uint64_t *pending_ns) {
    return p->timing != NULL ? p->timing(ordinal, done_ns, pending_ns) : sync_timing(p, done_ns, pending_ns);
}

static bool pdev_setup(int rt, int dev, struct pdev *p) {
    static const char *const time_syms[HCS_RT_COUNT] = {"hcs_sim_cuda_device_time", "hcs_sim_acl_device_time",
                                                       "hcs_sim_hip_device_time", "hcs_sim_cnrt_device_time",
                                                       "hcs_sim_cndrv_device_time"};
    static const char *const sync_syms[HCS_RT_COUNT] = {"cuCtxSynchronize", "aclrtSynchronizeDevice",
                                                       "hipDeviceSynchronize", "cnrtSyncDevice", "cnCtxSync"};
    void *f = resolve_fn != NULL ? resolve_fn(rt, time_syms[rt]) : NULL;
    p->timing = (time_fn)f;
    p->sync = resolve_fn != NULL ? (sync_fn)resolve_fn(rt, sync_syms[rt]) : NULL;
    p->wall_done = 0;
    p->wall_mark = 0;
    if (f == NULL)
        logf_(2, "%s device %d: no per-context device time from the runtime; accounting by draining the "
              "context every few ms", rt_names[rt], dev);
    p->shm = ledger_map(rt, dev);
    if (p->shm == NULL)
        return false;
    uint64_t now = mono_ns();
    cl_lock(p->shm);
    bool ok = join(p->shm, p, hcs_compute_g.conf.share[dev], now);
    pthread_mutex_unlock(&p->shm->mu);
    if (!ok)
        logf_(0, "compute ledger of %s device %d is full (%d containers x %d processes)", rt_names[rt], dev,
              CL_GROUPS, CL_MEMBERS);
    return ok;
}

/* ------------------------------------------------------------------ the controller */

static void sleep_ns(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ll), (long)(ns % 1000000000ll)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void hcs_compute_admit_slow(int rt, int dev, int ordinal) {
    struct pdev *p = &pd[rt][dev];
    double share = hcs_compute_g.conf.share[dev];
    pthread_mutex_lock(&p->mu);
    /* another thread refilled the credit while we waited for the lock */
    if (atomic_fetch_sub_explicit(&hcs_compute_credit[rt][dev], 1, memory_order_relaxed) > 0) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    if (!p->ready) {
        p->ready = true;
        p->broken = !pdev_setup(rt, dev, p);
        p->last_done = 0;
        p->last_total = 0;
        p->granted = 0;
        uint64_t d = 0, q = 0;
        if (!p->broken && p->timing != NULL && p->timing(ordinal, &d, &q) == 0) {
            p->last_done = d; /* what ran before the limit applied is not charged */
            p->last_total = d + q;
        }
    }
    if (p->broken) { /* no ledger slot: at least never more than one kernel in flight, at the share */
        pthread_mutex_unlock(&p->mu);
        sleep_ns(SLEEP_MAX_NS);
        return;
    }
    struct cl_shm *s = p->shm;
    int64_t launched = p->granted > 0 ? p->granted : 0;
    for (int round = 0;; round++) {
        uint64_t done = 0, pending = 0;
        bool timed = timing(p, ordinal, &done, &pending) == 0;
        uint64_t now = mono_ns();
        uint64_t delta = timed && done >= p->last_done ? done - p->last_done : 0;
        if (timed) {
            uint64_t total = done + pending;
            if (round == 0 && launched > 0 && total > p->last_total) {
                double per = (double)(total - p->last_total) / (double)launched;
                p->avg_ns = p->avg_ns <= 0 ? per : 0.7 * p->avg_ns + 0.3 * per;
            }
            p->last_done = done;
            p->last_total = total;
        } else {
            pending = (uint64_t)(p->avg_ns > 0 ? p->avg_ns : 1e6); /* unknown: assume one kernel still queued */
        }
        cl_lock(s);
        struct cl_group *g = &s->g[p->gi];
        if (!g->used_slot || strncmp(g->id, hcs_compute_g.conf.group, sizeof g->id) != 0 ||
            g->m[p->mi].pid != (int32_t)getpid()) {
            /* our slot was freed (the ledger was reset): take a new one */
            if (!join(s, p, share, now)) {
                pthread_mutex_unlock(&s->mu);
                pthread_mutex_unlock(&p->mu);
                sleep_ns(SLEEP_MAX_NS);
                return;
            }
            g = &s->g[p->gi];
        }
        double cap = share * CAP_WINDOW_NS + 2.0 * p->avg_ns;
        if (now > g->last_ns) {
            g->tokens_ns += share * (double)(now - g->last_ns);
            g->last_ns = now;
        }
        if (g->tokens_ns > cap)
            g->tokens_ns = cap;
        g->tokens_ns -= (double)delta;
        g->used_ns += delta;
        g->m[p->mi].pending_ns = pending;
        g->demand_ns = now;
        double queued = 0;
        for (int k = 0; k < CL_MEMBERS; k++) {
            if (g->m[k].pid == 0)
                continue;
            if (k != p->mi && round == 0 && !alive(g->m[k].pid)) {
                g->m[k].pid = 0; /* died: its queued work died with its context */
                g->m[k].pending_ns = 0;
                continue;
            }
            queued += (double)g->m[k].pending_ns;
        }
        double headroom = g->tokens_ns - queued;
        if (hcs_compute_g.conf.policy == HCS_POLICY_BURST) {
            bool contended = false;
            for (int i = 0; i < CL_GROUPS && !contended; i++)
                contended = i != p->gi && s->g[i].used_slot && now - s->g[i].demand_ns < DEMAND_WINDOW_NS;
            if (!contended) {
                if (g->tokens_ns < 0)
                    g->tokens_ns = 0; /* idle capacity borrowed is not owed */
                double b = (double)BURST_QUEUE_NS - queued;
                if (b > headroom)
                    headroom = b;
            }
        }
        pthread_mutex_unlock(&s->mu);
        double avg = p->avg_ns;
        if (headroom >= avg && (timed || pending == 0 || round > 0)) {
            int64_t credit = avg > 0 ? (int64_t)(headroom / avg) : 1;
            int64_t every = avg > 0 ? (int64_t)(CHECK_EVERY_NS / avg) : 1;
            if (credit > every)
                credit = every;
            if (credit > MAX_CREDIT)
                credit = MAX_CREDIT;
            if (credit < 1)
                credit = 1;
            p->granted = credit;
            if (p->timing == NULL)
                p->wall_mark = mono_ns(); /* sync-based: the device works for us from here */
            /* this launch takes one; the rest are the hot path's */
            atomic_store_explicit(&hcs_compute_credit[rt][dev], credit - 1, memory_order_relaxed);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        double need = (avg > 0 ? avg : 1e5) - headroom;
        int64_t wait = (int64_t)(need / share);
        if (wait < SLEEP_MIN_NS)
            wait = SLEEP_MIN_NS;
        if (wait > SLEEP_MAX_NS)
            wait = SLEEP_MAX_NS;
        sleep_ns(wait);
    }
}

/* ------------------------------------------------------------------ setup */

static void atfork_child(void) {
    /* a child is a new member with its own device context: set up again on its first launch */
    for (int r = 0; r < HCS_RT_COUNT; r++)
        for (int d = 0; d < HCS_MAX_DEVICES; d++) {
            pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
            pd[r][d].mu = fresh;
            pd[r][d].ready = false;
            pd[r][d].avg_ns = 0;
            atomic_store(&hcs_compute_credit[r][d], 0);
        }
}

void hcs_compute_setup(bool managed, const char *share_text, bool share_present, const char *share_origin,
                       const char *record_text, const char *dir, hcs_compute_log_fn log,
                       hcs_compute_resolve_fn resolve) {
    log_fn = log;
    resolve_fn = resolve;
    for (int r = 0; r < HCS_RT_COUNT; r++)
        for (int d = 0; d < HCS_MAX_DEVICES; d++) {
            pthread_mutex_init(&pd[r][d].mu, NULL);
            pd[r][d].ready = false;
            atomic_store(&hcs_compute_credit[r][d], 0);
        }
    struct hcs_compute_conf *c = &hcs_compute_g.conf;
    struct hcs_compute_conf rec;
    int nrec = hcs_compute_parse_record(&rec, record_text);
    char err[600] = "";
    bool bad = false;
    if (share_text != NULL) {
        if (hcs_compute_parse(c, share_text, share_origin, err, sizeof err) != 0)
            bad = true;
    } else if (share_present) {
        snprintf(err, sizeof err, "%s: unreadable", share_origin);
        bad = true;
    } else if (nrec > 0) {
        snprintf(err, sizeof err, "%s: missing, but the agent's record grants a compute share", share_origin);
        bad = true;
    } else {
        conf_reset(c);
    }
    if (bad) {
        /* the safest reading: the agent's record; without one a floor - never unlimited */
        char group[sizeof c->group];
        snprintf(group, sizeof group, "%s", c->group);
        if (nrec > 0) {
            *c = rec;
            logf_(0, "%s; applying the granted share from the agent's record", err);
        } else {
            conf_reset(c);
            for (int d = 0; d < HCS_MAX_DEVICES; d++)
                c->share[d] = HCS_COMPUTE_FLOOR_SHARE;
            c->any = true;
            logf_(0, "%s; no record of the grant: applying a %.0f%% share on every device, never unlimited", err,
                  HCS_COMPUTE_FLOOR_SHARE * 100);
        }
        snprintf(c->group, sizeof c->group, "%s", group);
    }
    if (c->group[0] == '\0') {
        const char *env = managed ? NULL : getenv("HCS_COMPUTE_GROUP");
        if (env != NULL && *env != '\0' && strlen(env) < sizeof c->group)
            snprintf(c->group, sizeof c->group, "%s", env);
        else
            snprintf(c->group, sizeof c->group, "pid-%d", (int)getpid());
    }
    ledger_shared = dir != NULL;
    if (dir != NULL)
        snprintf(ledger_dir, sizeof ledger_dir, "%s", dir);
    static bool atfork_done;
    if (!atfork_done) {
        atfork_done = true;
        pthread_atfork(NULL, NULL, atfork_child);
    }
    atomic_store(&hcs_compute_g.active, c->any);
    if (c->any)
        logf_(2, "compute limits: policy %s, group %s, ledger %s", c->policy == HCS_POLICY_BURST ? "burst" : "hard",
              c->group, dir != NULL ? dir : "(process-local)");
}
