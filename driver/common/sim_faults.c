/* sim_faults.c - fault-file reader and event log (see sim_faults.h, driver/README.md). */
#define _POSIX_C_SOURCE 200809L
#include "sim_faults.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#define SIM_MAX_FAULT_FILE (1u << 20)
#define SIM_MAX_RECORDS 4096 /* scenario records (timed lines and sub-health directives) per file */

/* Sub-health scenario records: evaluated at query time against the scenario clock. */
enum { R_LEGACY, R_RATE, R_PCIE_LINK, R_THROTTLE, R_CLOCK, R_TEMP, R_RETIRED, R_REMAP, R_SLOW, R_SYNC, R_NOISE };
enum { C_PCIE_REPLAY, C_ECC_SINGLE, C_ECC_DOUBLE, C_LINK_CRC, C_LINK_RECOVERY, C_COUNT };

struct sim_record {
    double t;        /* scenario time the line takes effect (-INFINITY: always) */
    int fi;          /* device (file index) */
    int kind;        /* R_* */
    int counter;     /* C_* for R_RATE */
    double a, b, c;  /* arguments (rate/temperature: start, end, ramp seconds) */
    int is_event;    /* timed xid/ecc line: raises its event when the clock passes t */
    int pushed;
    sim_event_t ev;
    char text[160];  /* R_LEGACY: the directive, re-applied at evaluation */
};

struct sim_noise_cache {
    long long bucket[C_COUNT]; /* full buckets summed so far (-1: none) */
    uint64_t sum[C_COUNT];
};

struct sim_fault_state {
    pthread_mutex_t lock;
    char path[4096 + 16];
    int present;             /* file existed at the last check */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char *content;           /* last content read (for append detection) */
    size_t content_len;
    uint64_t events_in_content; /* event lines in `content` */
    int lines_in_content;       /* lines in `content` (bad lines are reported once) */
    int quiet_through;          /* during a re-read: do not report bad lines up to this one */
    sim_dev_state_t *states;    /* per file index */
    uint64_t next_seq;
    sim_event_t log[SIM_EVENT_LOG]; /* event with seq s lives at log[s % SIM_EVENT_LOG] */
    /* scenarios */
    struct sim_record *recs;
    int nrecs;
    int timed_events;          /* records with is_event */
    double epoch;              /* "epoch" line (unix seconds), or NAN */
    double loaded_at;          /* realtime when the current content was first read (not appended) */
    double scale;              /* $HCS_SIM_TIME_SCALE */
    char clock_path[4096 + 16]; /* $HCS_SIM_CLOCK or "" */
    struct timespec clock_mtime;
    ino_t clock_ino;
    off_t clock_size;
    double clock_value;
    struct sim_noise_cache *noise; /* per file index */
};

int sim_faults_attach_(sim_profile_t *p);
void sim_faults_detach_(sim_profile_t *p);

static void state_defaults(sim_dev_state_t *st) {
    memset(st, 0, sizeof *st);
    st->clock_pct = 100;
    st->temperature_c = -1000;
}

static void reset_states(const sim_profile_t *p, struct sim_fault_state *fs) {
    for (int i = 0; i < p->ndevices; i++) {
        state_defaults(&fs->states[i]);
        fs->states[i].health = p->devices[i].health;
    }
}

int sim_faults_attach_(sim_profile_t *p) {
    struct sim_fault_state *fs = calloc(1, sizeof *fs);
    if (fs == NULL)
        return -1;
    fs->states = calloc((size_t)(p->ndevices > 0 ? p->ndevices : 1), sizeof *fs->states);
    if (fs->states == NULL) {
        free(fs);
        return -1;
    }
    pthread_mutex_init(&fs->lock, NULL);
    const char *env = getenv(SIM_ENV_FAULTS);
    if (env != NULL && env[0] != '\0')
        snprintf(fs->path, sizeof fs->path, "%s", env);
    else
        snprintf(fs->path, sizeof fs->path, "%s.faults", p->path);
    fs->next_seq = 1;
    fs->noise = calloc((size_t)(p->ndevices > 0 ? p->ndevices : 1), sizeof *fs->noise);
    if (fs->noise == NULL) {
        free(fs->states);
        free(fs);
        return -1;
    }
    fs->epoch = NAN;
    fs->scale = 1.0;
    const char *scale = getenv("HCS_SIM_TIME_SCALE");
    if (scale != NULL && scale[0] != '\0') {
        char *end;
        double v = strtod(scale, &end);
        if (*end == '\0' && v > 0 && isfinite(v))
            fs->scale = v;
        else
            fprintf(stderr, "hcs-sim: HCS_SIM_TIME_SCALE=%s: not a positive number (using 1)\n", scale);
    }
    const char *clk = getenv("HCS_SIM_CLOCK");
    if (clk != NULL && clk[0] != '\0')
        snprintf(fs->clock_path, sizeof fs->clock_path, "%s", clk);
    reset_states(p, fs);
    p->faults = fs;
    return 0;
}

void sim_faults_detach_(sim_profile_t *p) {
    struct sim_fault_state *fs = p->faults;
    if (fs == NULL)
        return;
    pthread_mutex_destroy(&fs->lock);
    free(fs->recs);
    free(fs->noise);
    free(fs->states);
    free(fs->content);
    free(fs);
    p->faults = NULL;
}

const char *sim_faults_path(const sim_profile_t *p) {
    if (p == NULL || p->faults == NULL)
        return "";
    return p->faults->path;
}

static void bad_line(const struct sim_fault_state *fs, int line, const char *what) {
    if (line <= fs->quiet_through)
        return;
    fprintf(stderr, "hcs-sim: %s:%d: %s (line ignored; see driver/README.md for the format)\n", fs->path, line,
            what);
}

static int parse_ull(const char *s, int base, unsigned long long *out) {
    if (s == NULL || *s == '\0' || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* Apply one directive. Returns 1 if it produced an event (stored in *ev), 0 if not, -1 if bad. */
static int apply_line(const sim_profile_t *p, struct sim_fault_state *fs, sim_dev_state_t *states, char *line,
                      int lineno, sim_event_t *ev) {
    char *hash = strchr(line, '#');
    if (hash != NULL)
        *hash = '\0';
    char *tok[6];
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " \t\r", &save); t != NULL; t = strtok_r(NULL, " \t\r", &save)) {
        if (n == 6) {
            bad_line(fs, lineno, "too many words");
            return -1;
        }
        tok[n++] = t;
    }
    if (n == 0)
        return 0;
    if (n < 3) {
        bad_line(fs, lineno, "expected '<vendor> <index> <directive> [args]'");
        return -1;
    }
    sim_vendor_t v = sim_vendor_from_name(tok[0]);
    if (v == SIM_VENDOR_INVALID) {
        bad_line(fs, lineno, "unknown vendor (expected nvidia, ascend, hygon or cambricon)");
        return -1;
    }
    unsigned long long idx;
    if (parse_ull(tok[1], 10, &idx) != 0 || idx >= (unsigned long long)sim_vendor_count(p, v)) {
        bad_line(fs, lineno, "device index out of range for this profile");
        return -1;
    }
    int fi = p->vendor_index[v][idx];
    sim_dev_state_t *st = &states[fi];
    const char *verb = tok[2];
    memset(ev, 0, sizeof *ev);
    ev->vendor = v;
    ev->index = (int)idx;
    if (strcmp(verb, "health") == 0) {
        int h = n == 4 ? sim_health_from_name(tok[3]) : -1;
        if (h < 0) {
            bad_line(fs, lineno, "health needs one of ok, warning, critical, lost");
            return -1;
        }
        st->health = (sim_health_t)h;
        return 0;
    }
    if (strcmp(verb, "xid") == 0) {
        unsigned long long code;
        if (n != 4 || parse_ull(tok[3], 10, &code) != 0) {
            bad_line(fs, lineno, "xid needs one decimal Xid code");
            return -1;
        }
        if (v != SIM_VENDOR_NVIDIA) {
            bad_line(fs, lineno, "xid applies to nvidia devices only");
            return -1;
        }
        ev->kind = SIM_EVENT_XID;
        ev->value = code;
        return 1;
    }
    if (strcmp(verb, "ecc") == 0) {
        unsigned long long count = 1;
        int dbl;
        if (n < 4 || n > 5 || (strcmp(tok[3], "single") != 0 && strcmp(tok[3], "double") != 0) ||
            (n == 5 && (parse_ull(tok[4], 10, &count) != 0 || count == 0))) {
            bad_line(fs, lineno, "ecc needs 'single' or 'double' and an optional positive count");
            return -1;
        }
        dbl = strcmp(tok[3], "double") == 0;
        if (dbl)
            st->ecc_double += count;
        else
            st->ecc_single += count;
        ev->kind = dbl ? SIM_EVENT_ECC_DOUBLE : SIM_EVENT_ECC_SINGLE;
        ev->value = count;
        return 1;
    }
    if (strcmp(verb, "errorcode") == 0) {
        unsigned long long code;
        if (n != 4 || parse_ull(tok[3], 16, &code) != 0 || code > 0xffffffffULL) {
            bad_line(fs, lineno, "errorcode needs one 32-bit hex code, e.g. 0x80E01801");
            return -1;
        }
        if (v != SIM_VENDOR_ASCEND) {
            bad_line(fs, lineno, "errorcode applies to ascend devices only");
            return -1;
        }
        if (st->nerrorcodes < SIM_MAX_ERRORCODES)
            st->errorcodes[st->nerrorcodes++] = (unsigned int)code;
        return 0;
    }
    if (strcmp(verb, "clear") == 0) {
        if (n != 3) {
            bad_line(fs, lineno, "clear takes no arguments");
            return -1;
        }
        state_defaults(st);
        st->health = SIM_HEALTH_OK;
        return 0;
    }
    bad_line(fs, lineno, "unknown directive (expected health, xid, ecc, errorcode, clear or a scenario "
                         "directive: pcie_replay_rate, ecc_rate, link_crc_rate, link_recovery_rate, pcie_link, "
                         "throttle, clock_pct, temperature, retired_pages, remap_pending, slow, sync_us, noise)");
    return -1;
}

/* ---- scenarios: timed lines and sub-health directives ---------------------------------------- */

/* floor without libm (the runtime libraries link only libc/libpthread) */
static double sfloor(double x) {
    double t = (double)(long long)x;
    return t > x ? t - 1.0 : t;
}

static double realtime_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_double(const char *s, double *out) {
    if (s == NULL || *s == '\0')
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int counter_of(const char *verb, const char *kind) {
    if (strcmp(verb, "pcie_replay_rate") == 0)
        return C_PCIE_REPLAY;
    if (strcmp(verb, "link_crc_rate") == 0)
        return C_LINK_CRC;
    if (strcmp(verb, "link_recovery_rate") == 0)
        return C_LINK_RECOVERY;
    if (strcmp(verb, "ecc_rate") == 0 && kind != NULL)
        return strcmp(kind, "single") == 0 ? C_ECC_SINGLE : strcmp(kind, "double") == 0 ? C_ECC_DOUBLE : -1;
    return -1;
}

/*
 * Parse a sub-health directive (tok[0..n-1] = vendor index verb args) into *r.
 * Returns 1 when it is one, 0 when the verb is not a scenario verb, -1 when bad (reported).
 */
static int parse_scenario(const sim_profile_t *p, struct sim_fault_state *fs, char **tok, int n, int lineno,
                          struct sim_record *r) {
    const char *verb = tok[2];
    static const char *const verbs[] = {"pcie_replay_rate", "ecc_rate", "link_crc_rate", "link_recovery_rate",
                                        "pcie_link", "throttle", "clock_pct", "temperature", "retired_pages",
                                        "remap_pending", "slow", "sync_us", "noise"};
    int known = 0;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        known |= strcmp(verb, verbs[i]) == 0;
    if (!known)
        return 0;
    sim_vendor_t v = sim_vendor_from_name(tok[0]);
    unsigned long long idx;
    if (v == SIM_VENDOR_INVALID) {
        bad_line(fs, lineno, "unknown vendor (expected nvidia, ascend, hygon or cambricon)");
        return -1;
    }
    if (parse_ull(tok[1], 10, &idx) != 0 || idx >= (unsigned long long)sim_vendor_count(p, v)) {
        bad_line(fs, lineno, "device index out of range for this profile");
        return -1;
    }
    r->fi = p->vendor_index[v][idx];
    const char **args = (const char **)tok + 3;
    int nargs = n - 3;
    if (strcmp(verb, "ecc_rate") == 0) { /* ecc_rate single|double <rate> [<end> <ramp_s>] */
        r->counter = counter_of(verb, nargs > 0 ? args[0] : NULL);
        if (r->counter < 0) {
            bad_line(fs, lineno, "ecc_rate needs 'single' or 'double', then a rate");
            return -1;
        }
        args++;
        nargs--;
    } else {
        r->counter = counter_of(verb, NULL);
    }
    if (r->counter >= 0 || strcmp(verb, "temperature") == 0) {
        /* <start> [<end> <ramp_s>]: constant, or a linear ramp from start to end over ramp_s seconds */
        if ((nargs != 1 && nargs != 3) || parse_double(args[0], &r->a) != 0 ||
            (nargs == 3 && (parse_double(args[1], &r->b) != 0 || parse_double(args[2], &r->c) != 0 || r->c <= 0))) {
            bad_line(fs, lineno, "expected '<start> [<end> <ramp_seconds>]' (numbers; ramp > 0)");
            return -1;
        }
        if (nargs == 1) {
            r->b = r->a;
            r->c = 1.0;
        }
        if (r->counter >= 0 && (r->a < 0 || r->b < 0)) {
            bad_line(fs, lineno, "a rate cannot be negative");
            return -1;
        }
        r->kind = r->counter >= 0 ? R_RATE : R_TEMP;
        return 1;
    }
    if (strcmp(verb, "pcie_link") == 0) {
        unsigned long long w, g;
        if (nargs != 2 || parse_ull(args[0], 10, &w) != 0 || parse_ull(args[1], 10, &g) != 0 || w == 0 ||
            w > SIM_PCIE_MAX_WIDTH || g == 0 || g > SIM_PCIE_MAX_GEN) {
            bad_line(fs, lineno, "pcie_link needs '<width 1..16> <generation 1..4>'");
            return -1;
        }
        r->kind = R_PCIE_LINK;
        r->a = (double)w;
        r->b = (double)g;
        return 1;
    }
    if (strcmp(verb, "throttle") == 0) {
        unsigned int mask = 0;
        for (int i = 0; i < nargs; i++) {
            if (strcmp(args[i], "none") == 0)
                continue;
            if (strcmp(args[i], "power") == 0)
                mask |= SIM_THROTTLE_POWER;
            else if (strcmp(args[i], "thermal") == 0)
                mask |= SIM_THROTTLE_THERMAL;
            else if (strcmp(args[i], "hw_slowdown") == 0)
                mask |= SIM_THROTTLE_HW_SLOWDOWN;
            else {
                bad_line(fs, lineno, "throttle takes none, power, thermal, hw_slowdown");
                return -1;
            }
        }
        if (nargs == 0) {
            bad_line(fs, lineno, "throttle takes none, power, thermal, hw_slowdown");
            return -1;
        }
        r->kind = R_THROTTLE;
        r->a = (double)mask;
        return 1;
    }
    unsigned long long val;
    if (nargs != 1 || parse_ull(args[0], 10, &val) != 0) {
        bad_line(fs, lineno, "expected one non-negative integer");
        return -1;
    }
    if (strcmp(verb, "clock_pct") == 0) {
        if (val == 0 || val > 100) {
            bad_line(fs, lineno, "clock_pct must be 1..100");
            return -1;
        }
        r->kind = R_CLOCK;
    } else if (strcmp(verb, "retired_pages") == 0) {
        r->kind = R_RETIRED;
    } else if (strcmp(verb, "remap_pending") == 0) {
        r->kind = R_REMAP;
    } else if (strcmp(verb, "slow") == 0) {
        r->kind = R_SLOW;
    } else if (strcmp(verb, "sync_us") == 0) {
        if (val > 1000000) {
            bad_line(fs, lineno, "sync_us must be at most 1000000");
            return -1;
        }
        r->kind = R_SYNC;
    } else {
        if (val == 0 || val > 0xffffffffULL) {
            bad_line(fs, lineno, "noise needs a seed 1..4294967295");
            return -1;
        }
        r->kind = R_NOISE;
    }
    if (val > 0x7fffffffULL) {
        bad_line(fs, lineno, "value too large");
        return -1;
    }
    r->a = (double)val;
    return 1;
}

/* Integral of a rate ramp (start a, end b over c seconds, from time t0) between t0 and t1. */
static double ramp_integral(double a, double b, double c, double t0, double t1) {
    if (t1 <= t0)
        return 0.0;
    double d = t1 - t0;
    if (d <= c)
        return a * d + (b - a) * d * d / (2.0 * c);
    return a * c + (b - a) * c / 2.0 + b * (d - c);
}

static double ramp_value(double a, double b, double c, double t0, double t) {
    double f = (t - t0) / c;
    return f >= 1.0 ? b : f <= 0.0 ? a : a + (b - a) * f;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t noise_hash(uint32_t seed, int fi, long long bucket, unsigned salt) {
    return mix64(((uint64_t)seed << 32) ^ mix64((uint64_t)fi * 1000003ULL + salt) ^ (uint64_t)bucket);
}

static double unit(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }

/* Healthy-but-noisy counters: per bucket of B seconds, with probability q, a burst of 1..m at a
 * random offset. Documented in driver/README.md ("noise"). */
static const struct {
    double bucket_s, q;
    unsigned m;
} NOISE[C_COUNT] = {
    [C_PCIE_REPLAY] = {600.0, 0.3, 8},
    [C_ECC_SINGLE] = {3600.0, 0.5, 3},
    [C_ECC_DOUBLE] = {1.0, 0.0, 1},
    [C_LINK_CRC] = {600.0, 0.2, 4},
    [C_LINK_RECOVERY] = {3600.0, 0.1, 1},
};

static uint64_t noise_burst(uint32_t seed, int fi, int c, long long k, double *offset) {
    uint64_t h = noise_hash(seed, fi, k, 17u + (unsigned)c);
    *offset = unit(mix64(h ^ 0x5bd1e995ULL)) * NOISE[c].bucket_s;
    if (unit(h) >= NOISE[c].q)
        return 0;
    return 1 + (h >> 7) % NOISE[c].m;
}

static uint64_t noise_counter(struct sim_noise_cache *nc, uint32_t seed, int fi, int c, double t) {
    if (NOISE[c].q <= 0 || t <= 0)
        return 0;
    long long k = (long long)sfloor(t / NOISE[c].bucket_s);
    if (nc->bucket[c] > k || nc->bucket[c] < 0) { /* restart (time went back or first use) */
        nc->bucket[c] = 0;
        nc->sum[c] = 0;
    }
    double off;
    for (; nc->bucket[c] < k; nc->bucket[c]++)
        nc->sum[c] += noise_burst(seed, fi, c, nc->bucket[c], &off);
    uint64_t cur = noise_burst(seed, fi, c, k, &off);
    return nc->sum[c] + (t - (double)k * NOISE[c].bucket_s >= off ? cur : 0);
}

/* Caller holds fs->lock. */
static double scenario_time_locked(struct sim_fault_state *fs) {
    if (fs->clock_path[0] != '\0') {
        struct stat sb;
        if (stat(fs->clock_path, &sb) == 0 &&
            (sb.st_ino != fs->clock_ino || sb.st_size != fs->clock_size ||
             sb.st_mtim.tv_sec != fs->clock_mtime.tv_sec || sb.st_mtim.tv_nsec != fs->clock_mtime.tv_nsec)) {
            FILE *f = fopen(fs->clock_path, "r");
            if (f != NULL) {
                char buf[64];
                size_t len = fread(buf, 1, sizeof buf - 1, f);
                fclose(f);
                buf[len] = '\0';
                char *nl = strchr(buf, '\n');
                if (nl != NULL)
                    *nl = '\0';
                double v;
                if (parse_double(buf, &v) == 0) {
                    fs->clock_value = v;
                    fs->clock_ino = sb.st_ino;
                    fs->clock_size = sb.st_size;
                    fs->clock_mtime = sb.st_mtim;
                }
            }
        }
        return fs->clock_value;
    }
    double epoch = isnan(fs->epoch) ? fs->loaded_at : fs->epoch;
    if (epoch <= 0)
        return 0.0;
    return (realtime_s() - epoch) * fs->scale;
}

/* Evaluate device fi's state at scenario time `now` into *out (caller holds fs->lock). */
static void evaluate_locked(const sim_profile_t *p, struct sim_fault_state *fs, int fi, double now,
                            sim_dev_state_t *out) {
    *out = fs->states[fi];
    if (fs->nrecs == 0)
        return;
    static __thread sim_dev_state_t scratch[SIM_MAX_DEVICES];
    double acc[C_COUNT] = {0};
    int active[C_COUNT];
    double noise_since = 0;
    for (int c = 0; c < C_COUNT; c++)
        active[c] = -1;
    double temp_t0 = 0, temp_a = 0, temp_b = 0, temp_c = 1;
    int temp_set = 0;
    for (int i = 0; i < fs->nrecs; i++) {
        const struct sim_record *r = &fs->recs[i];
        if (r->fi != fi || r->t > now)
            continue;
        switch (r->kind) {
        case R_LEGACY: {
            char buf[sizeof r->text];
            sim_event_t ev;
            memcpy(buf, r->text, sizeof buf);
            scratch[fi] = *out;
            if (apply_line(p, fs, scratch, buf, 0, &ev) >= 0)
                *out = scratch[fi];
            if (r->a != 0) { /* clear: scenario counters restart too */
                for (int c = 0; c < C_COUNT; c++) {
                    acc[c] = 0;
                    active[c] = -1;
                }
                temp_set = 0;
            }
            break;
        }
        case R_RATE: {
            int prev = active[r->counter];
            double t = isinf(r->t) ? 0.0 : r->t;
            if (prev >= 0) {
                const struct sim_record *q = &fs->recs[prev];
                double t0 = isinf(q->t) ? 0.0 : q->t;
                acc[r->counter] += ramp_integral(q->a, q->b, q->c, t0, t);
            }
            active[r->counter] = i;
            break;
        }
        case R_TEMP:
            temp_t0 = isinf(r->t) ? 0.0 : r->t;
            temp_a = r->a;
            temp_b = r->b;
            temp_c = r->c;
            temp_set = 1;
            break;
        case R_PCIE_LINK:
            out->pcie_width = (int)r->a;
            out->pcie_gen = (int)r->b;
            break;
        case R_THROTTLE:
            out->throttle = (unsigned int)r->a;
            break;
        case R_CLOCK:
            out->clock_pct = (int)r->a;
            break;
        case R_RETIRED:
            out->retired_pages = (unsigned int)r->a;
            break;
        case R_REMAP:
            out->remap_pending = r->a != 0;
            break;
        case R_SLOW:
            out->slow_pct = (int)r->a;
            break;
        case R_SYNC:
            out->sync_us = (unsigned int)r->a;
            break;
        case R_NOISE:
            out->noise_seed = (uint32_t)r->a;
            noise_since = isinf(r->t) ? 0.0 : r->t;
            break;
        default:
            break;
        }
    }
    uint64_t *counters[C_COUNT] = {&out->pcie_replays, &out->ecc_single, &out->ecc_double, &out->link_crc,
                                   &out->link_recovery};
    for (int c = 0; c < C_COUNT; c++) {
        if (active[c] >= 0) {
            const struct sim_record *q = &fs->recs[active[c]];
            double t0 = isinf(q->t) ? 0.0 : q->t;
            acc[c] += ramp_integral(q->a, q->b, q->c, t0, now);
        }
        *counters[c] += (uint64_t)sfloor(acc[c]);
    }
    if (temp_set)
        out->temperature_c = (int)sfloor(ramp_value(temp_a, temp_b, temp_c, temp_t0, now) + 0.5);
    if (out->noise_seed != 0) {
        double t = now - noise_since;
        uint32_t seed = out->noise_seed;
        for (int c = 0; c < C_COUNT; c++)
            *counters[c] += noise_counter(&fs->noise[fi], seed, fi, c, t);
        long long sec = (long long)sfloor(t);
        int base = out->temperature_c > -1000 ? out->temperature_c : p->devices[fi].temperature_c + 10;
        int jitter = (int)(noise_hash(seed, fi, sec, 3u) % 5) - 2;
        /* a one-second temperature spike (+15 C) in about half of the hours */
        long long hour = (long long)sfloor(t / 3600.0);
        uint64_t hs = noise_hash(seed, fi, hour, 5u);
        double spike_at = unit(mix64(hs)) * 3599.0;
        if (unit(hs) < 0.5 && t - (double)hour * 3600.0 >= spike_at && t - (double)hour * 3600.0 < spike_at + 1.0)
            jitter += 15;
        out->temperature_c = base + jitter;
        /* a one-second thermal-throttle blip at 80 % clock in about 30 % of the half hours */
        long long half = (long long)sfloor(t / 1800.0);
        uint64_t hb = noise_hash(seed, fi, half, 7u);
        double blip_at = unit(mix64(hb)) * 1799.0;
        double into = t - (double)half * 1800.0;
        int pct = 97 + (int)(noise_hash(seed, fi, sec, 11u) % 4);
        if (unit(hb) < 0.3 && into >= blip_at && into < blip_at + 1.0) {
            out->throttle |= SIM_THROTTLE_THERMAL;
            pct = 80;
        }
        if (pct < out->clock_pct)
            out->clock_pct = pct;
    }
}

double sim_scenario_time(const sim_profile_t *p) {
    if (p == NULL || p->faults == NULL)
        return 0.0;
    pthread_mutex_lock(&p->faults->lock);
    double t = scenario_time_locked(p->faults);
    pthread_mutex_unlock(&p->faults->lock);
    return t;
}

/* One line of the fault file: "epoch", a timed ("@<seconds> ...") or untimed directive.
 * Untimed classic directives apply to fs->states now (returns 1 with *ev for an event); scenario
 * directives and timed lines become records. Returns 0, 1 or -1 (bad, reported). */
static int process_line(const sim_profile_t *p, struct sim_fault_state *fs, const char *line, int lineno,
                        struct sim_record *recs, int *nrecs, sim_event_t *ev) {
    char work[1024];
    snprintf(work, sizeof work, "%s", line);
    char *hash = strchr(work, '#');
    if (hash != NULL)
        *hash = '\0';
    char *s = work;
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (*s == '\0')
        return 0;
    double t = -INFINITY;
    if (*s == '@') {
        char *e = s + 1;
        while (*e != '\0' && *e != ' ' && *e != '\t')
            e++;
        char saved = *e;
        *e = '\0';
        if (parse_double(s + 1, &t) != 0 || t < 0) {
            bad_line(fs, lineno, "'@' needs a scenario time in seconds, e.g. '@30 nvidia 0 ...'");
            return -1;
        }
        *e = saved;
        s = e;
        while (*s == ' ' || *s == '\t')
            s++;
    }
    if (strncmp(s, "epoch", 5) == 0 && (s[5] == ' ' || s[5] == '\t')) {
        double v;
        char *a = s + 6;
        while (*a == ' ' || *a == '\t')
            a++;
        char *end = a + strlen(a);
        while (end > a && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
            *--end = '\0';
        if (parse_double(a, &v) != 0 || v <= 0) {
            bad_line(fs, lineno, "epoch needs the scenario start as unix seconds");
            return -1;
        }
        fs->epoch = v;
        return 0;
    }
    char tokbuf[1024];
    snprintf(tokbuf, sizeof tokbuf, "%s", s);
    char *tok[8];
    int n = 0;
    char *save = NULL;
    for (char *w = strtok_r(tokbuf, " \t\r", &save); w != NULL && n < 8; w = strtok_r(NULL, " \t\r", &save))
        tok[n++] = w;
    struct sim_record r;
    memset(&r, 0, sizeof r);
    r.t = t;
    if (n >= 3) {
        int rc = parse_scenario(p, fs, tok, n, lineno, &r);
        if (rc < 0)
            return -1;
        if (rc == 1) {
            if (*nrecs >= SIM_MAX_RECORDS) {
                bad_line(fs, lineno, "too many scenario lines (limit 4096)");
                return -1;
            }
            recs[(*nrecs)++] = r;
            return 0;
        }
    }
    if (isinf(t))
        return apply_line(p, fs, fs->states, s, lineno, ev);
    /* a timed classic directive: validate now, apply when the clock passes t */
    static __thread sim_dev_state_t scratch[SIM_MAX_DEVICES];
    memcpy(scratch, fs->states, sizeof scratch[0] * (size_t)p->ndevices);
    char check[1024];
    snprintf(check, sizeof check, "%s", s);
    int rc = apply_line(p, fs, scratch, check, lineno, &r.ev);
    if (rc < 0)
        return -1;
    if (*nrecs >= SIM_MAX_RECORDS) {
        bad_line(fs, lineno, "too many scenario lines (limit 4096)");
        return -1;
    }
    sim_vendor_t v = sim_vendor_from_name(tok[0]);
    r.fi = p->vendor_index[v][strtoul(tok[1], NULL, 10)];
    r.kind = R_LEGACY;
    r.is_event = rc == 1;
    r.a = strcmp(tok[2], "clear") == 0;
    size_t tl = strlen(s);
    if (tl >= sizeof r.text) {
        bad_line(fs, lineno, "timed directive too long (limit 159 characters)");
        return -1;
    }
    memcpy(r.text, s, tl + 1);
    recs[(*nrecs)++] = r;
    return 0;
}

static void push_event(struct sim_fault_state *fs, const sim_event_t *ev) {
    sim_event_t *slot = &fs->log[fs->next_seq % SIM_EVENT_LOG];
    *slot = *ev;
    slot->seq = fs->next_seq++;
}

/* Caller holds fs->lock. */
static void refresh_file_locked(const sim_profile_t *p, struct sim_fault_state *fs) {
    struct stat sb;
    if (stat(fs->path, &sb) != 0) {
        if (fs->present || fs->content != NULL) {
            fs->present = 0;
            free(fs->content);
            fs->content = NULL;
            fs->content_len = 0;
            fs->events_in_content = 0;
            fs->lines_in_content = 0;
            fs->nrecs = 0;
            fs->timed_events = 0;
            fs->epoch = NAN;
            reset_states(p, fs);
        }
        return;
    }
    if (fs->present && sb.st_dev == fs->dev && sb.st_ino == fs->ino && sb.st_size == fs->size &&
        sb.st_mtim.tv_sec == fs->mtime.tv_sec && sb.st_mtim.tv_nsec == fs->mtime.tv_nsec)
        return;
    FILE *f = fopen(fs->path, "rb");
    if (f == NULL)
        return; /* try again next call */
    char *buf = malloc(SIM_MAX_FAULT_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        return;
    }
    size_t len = fread(buf, 1, SIM_MAX_FAULT_FILE, f);
    fclose(f);
    buf[len] = '\0';
    /* Record what we read against the stat taken before reading: a write racing with the read
     * changes mtime/size again and is picked up by the next call. */
    fs->present = 1;
    fs->dev = sb.st_dev;
    fs->ino = sb.st_ino;
    fs->size = sb.st_size;
    fs->mtime = sb.st_mtim;

    int appended = fs->content != NULL && fs->content_len <= len && memcmp(fs->content, buf, fs->content_len) == 0;
    uint64_t skip = appended ? fs->events_in_content : 0;
    /* An appended file's old lines were reported already; the last one may have been partial. */
    fs->quiet_through = 0;
    if (appended)
        fs->quiet_through = fs->content_len > 0 && fs->content[fs->content_len - 1] == '\n' ? fs->lines_in_content
                                                                                            : fs->lines_in_content - 1;

    char *work = malloc(len + 1);
    if (work == NULL) {
        free(buf);
        return;
    }
    memcpy(work, buf, len + 1);
    struct sim_record *recs = malloc(sizeof *recs * SIM_MAX_RECORDS);
    if (recs == NULL) {
        free(work);
        free(buf);
        return;
    }
    int nrecs = 0;
    reset_states(p, fs);
    fs->epoch = NAN;
    if (!appended)
        fs->loaded_at = realtime_s();
    memset(fs->noise, 0, sizeof *fs->noise * (size_t)(p->ndevices > 0 ? p->ndevices : 1));
    uint64_t nevents = 0;
    int lineno = 0;
    /* strtok_r on "\n" would merge empty lines and miscount; walk manually. */
    char *line = work;
    while (line != NULL && *line != '\0') {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        lineno++;
        if (strlen(line) > 0) {
            sim_event_t ev;
            if (process_line(p, fs, line, lineno, recs, &nrecs, &ev) == 1) {
                if (nevents >= skip)
                    push_event(fs, &ev);
                nevents++;
            }
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(work);
    /* an appended file keeps its earlier records first: keep which timed events were raised */
    if (appended && fs->recs != NULL)
        for (int i = 0; i < nrecs && i < fs->nrecs; i++)
            recs[i].pushed = fs->recs[i].pushed;
    free(fs->recs);
    fs->recs = recs;
    fs->nrecs = nrecs;
    fs->timed_events = 0;
    for (int i = 0; i < nrecs; i++)
        fs->timed_events += recs[i].is_event;
    free(fs->content);
    fs->content = buf;
    fs->content_len = len;
    fs->events_in_content = nevents;
    fs->lines_in_content = lineno;
    fs->quiet_through = 0;
}

/* Caller holds fs->lock: re-read the file if it changed, then raise timed events now due. */
static void refresh_locked(const sim_profile_t *p, struct sim_fault_state *fs) {
    refresh_file_locked(p, fs);
    if (fs->timed_events == 0)
        return;
    double now = scenario_time_locked(fs);
    for (int i = 0; i < fs->nrecs; i++) {
        struct sim_record *r = &fs->recs[i];
        if (r->is_event && !r->pushed && r->t <= now) {
            push_event(fs, &r->ev);
            r->pushed = 1;
        }
    }
}

int sim_faults_refresh(const sim_profile_t *p) {
    if (p == NULL || p->faults == NULL)
        return 0;
    pthread_mutex_lock(&p->faults->lock);
    refresh_locked(p, p->faults);
    pthread_mutex_unlock(&p->faults->lock);
    return 0;
}

int sim_device_state(const sim_profile_t *p, sim_vendor_t vendor, int index, sim_dev_state_t *out) {
    const sim_device_t *d = sim_vendor_device(p, vendor, index);
    if (d == NULL || out == NULL)
        return -1;
    struct sim_fault_state *fs = p->faults;
    if (fs == NULL) {
        state_defaults(out);
        out->health = d->health;
        return 0;
    }
    pthread_mutex_lock(&fs->lock);
    refresh_locked(p, fs);
    if (fs->nrecs == 0)
        *out = fs->states[d->file_index];
    else
        evaluate_locked(p, fs, d->file_index, scenario_time_locked(fs), out);
    pthread_mutex_unlock(&fs->lock);
    return 0;
}

sim_health_t sim_device_health(const sim_profile_t *p, sim_vendor_t vendor, int index) {
    sim_dev_state_t st;
    if (sim_device_state(p, vendor, index, &st) != 0)
        return SIM_HEALTH_LOST;
    return st.health;
}

uint64_t sim_event_cursor(const sim_profile_t *p) {
    if (p == NULL || p->faults == NULL)
        return 1;
    pthread_mutex_lock(&p->faults->lock);
    refresh_locked(p, p->faults);
    uint64_t c = p->faults->next_seq;
    pthread_mutex_unlock(&p->faults->lock);
    return c;
}

int sim_events_next(const sim_profile_t *p, uint64_t *cursor, sim_vendor_t vendor, sim_event_t *out) {
    if (p == NULL || p->faults == NULL || cursor == NULL)
        return 0;
    struct sim_fault_state *fs = p->faults;
    int found = 0;
    pthread_mutex_lock(&fs->lock);
    refresh_locked(p, fs);
    uint64_t c = *cursor;
    if (fs->next_seq > SIM_EVENT_LOG && c < fs->next_seq - SIM_EVENT_LOG)
        c = fs->next_seq - SIM_EVENT_LOG;
    for (; c < fs->next_seq; c++) {
        const sim_event_t *ev = &fs->log[c % SIM_EVENT_LOG];
        if (vendor == SIM_VENDOR_INVALID || ev->vendor == vendor) {
            if (out != NULL)
                *out = *ev;
            c++;
            found = 1;
            break;
        }
    }
    *cursor = c;
    pthread_mutex_unlock(&fs->lock);
    return found;
}

int sim_device_temperature(const sim_profile_t *p, sim_vendor_t vendor, int index, int warning_c) {
    const sim_device_t *d = sim_vendor_device(p, vendor, index);
    sim_dev_state_t st;
    if (d == NULL || sim_device_state(p, vendor, index, &st) != 0)
        return 0;
    int t = st.temperature_c > -1000 ? st.temperature_c : d->temperature_c;
    if (st.health == SIM_HEALTH_WARNING && t < warning_c)
        t = warning_c;
    return t;
}

uint64_t sim_device_sync_ns(const sim_profile_t *p, sim_vendor_t vendor, int index) {
    sim_dev_state_t st;
    if (p == NULL || p->faults == NULL || sim_device_state(p, vendor, index, &st) != 0 || st.sync_us == 0)
        return 0;
    return (uint64_t)st.sync_us * 1000u * (uint64_t)(100 + st.slow_pct) / 100u;
}

void sim_sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (ns > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The simulated driver's device nodes (driver/runtime/simdrv.c): fd + 1 per (vendor, index), 0 not
 * opened yet, -1 cannot be opened (the synchronise then waits in the process). */
static int node_fd[SIM_VENDOR_COUNT][SIM_MAX_DEVICES];
static pthread_mutex_t node_mu = PTHREAD_MUTEX_INITIALIZER;

static int sim_node(sim_vendor_t vendor, int index) {
    const char *dir = getenv("HCS_SIM_DEVICE_NODES");
    if (dir == NULL || *dir == '\0' || vendor < 0 || vendor >= SIM_VENDOR_COUNT || index < 0 ||
        index >= SIM_MAX_DEVICES)
        return -1;
    pthread_mutex_lock(&node_mu);
    int v = node_fd[vendor][index];
    if (v == 0) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s-%d", dir, sim_vendor_name(vendor), index);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        v = node_fd[vendor][index] = fd >= 0 ? fd + 1 : -1;
    }
    pthread_mutex_unlock(&node_mu);
    return v > 0 ? v - 1 : -1;
}

void sim_device_sync_delay(const sim_profile_t *p, sim_vendor_t vendor, int index) {
    int fd = sim_node(vendor, index);
    if (fd >= 0) {
        while (ioctl(fd, SIM_IOC_SYNC) != 0 && errno == EINTR) {
        }
        return; /* the driver waited (or the node is gone: no delay) */
    }
    sim_sleep_ns(sim_device_sync_ns(p, vendor, index));
}
