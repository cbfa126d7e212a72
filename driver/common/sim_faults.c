/* sim_faults.c - fault-file reader and event log (see sim_faults.h, driver/README.md). */
#define _POSIX_C_SOURCE 200809L
#include "sim_faults.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SIM_MAX_FAULT_FILE (1u << 20)

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
};

int sim_faults_attach_(sim_profile_t *p);
void sim_faults_detach_(sim_profile_t *p);

static void reset_states(const sim_profile_t *p, struct sim_fault_state *fs) {
    for (int i = 0; i < p->ndevices; i++) {
        memset(&fs->states[i], 0, sizeof fs->states[i]);
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
    reset_states(p, fs);
    p->faults = fs;
    return 0;
}

void sim_faults_detach_(sim_profile_t *p) {
    struct sim_fault_state *fs = p->faults;
    if (fs == NULL)
        return;
    pthread_mutex_destroy(&fs->lock);
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
static int apply_line(const sim_profile_t *p, struct sim_fault_state *fs, char *line, int lineno,
                      sim_event_t *ev) {
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
    sim_dev_state_t *st = &fs->states[fi];
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
        memset(st, 0, sizeof *st);
        st->health = SIM_HEALTH_OK;
        return 0;
    }
    bad_line(fs, lineno, "unknown directive (expected health, xid, ecc, errorcode or clear)");
    return -1;
}

static void push_event(struct sim_fault_state *fs, const sim_event_t *ev) {
    sim_event_t *slot = &fs->log[fs->next_seq % SIM_EVENT_LOG];
    *slot = *ev;
    slot->seq = fs->next_seq++;
}

/* Caller holds fs->lock. */
static void refresh_locked(const sim_profile_t *p, struct sim_fault_state *fs) {
    struct stat sb;
    if (stat(fs->path, &sb) != 0) {
        if (fs->present || fs->content != NULL) {
            fs->present = 0;
            free(fs->content);
            fs->content = NULL;
            fs->content_len = 0;
            fs->events_in_content = 0;
            fs->lines_in_content = 0;
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
    reset_states(p, fs);
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
            if (apply_line(p, fs, line, lineno, &ev) == 1) {
                if (nevents >= skip)
                    push_event(fs, &ev);
                nevents++;
            }
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(work);
    free(fs->content);
    fs->content = buf;
    fs->content_len = len;
    fs->events_in_content = nevents;
    fs->lines_in_content = lineno;
    fs->quiet_through = 0;
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
        memset(out, 0, sizeof *out);
        out->health = d->health;
        return 0;
    }
    pthread_mutex_lock(&fs->lock);
    refresh_locked(p, fs);
    *out = fs->states[d->file_index];
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
