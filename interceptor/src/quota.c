/* quota.c - see quota.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "quota.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUOTA_FILE_MAX (64 * 1024)

static void quota_reset(struct hcs_quota *q) {
    q->configured = false;
    for (int i = 0; i < HCS_MAX_DEVICES; i++)
        q->limit[i] = HCS_UNLIMITED;
    q->source[0] = '\0';
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a)
        return false;
    *out = a * b;
    return true;
}

int hcs_parse_bytes(const char *s, size_t len, uint64_t *out) {
    size_t i = 0;
    uint64_t whole = 0;
    uint64_t frac = 0, frac_div = 1;
    bool digits = false;
    while (i < len && isdigit((unsigned char)s[i])) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (whole > (UINT64_MAX - d) / 10)
            return -1;
        whole = whole * 10 + d;
        digits = true;
        i++;
    }
    if (i < len && s[i] == '.') {
        i++;
        while (i < len && isdigit((unsigned char)s[i])) {
            if (frac_div < 1000000000ULL) {
                frac = frac * 10 + (uint64_t)(s[i] - '0');
                frac_div *= 10;
            }
            digits = true;
            i++;
        }
    }
    if (!digits)
        return -1;
    uint64_t mult = 1;
    size_t rest = len - i;
    const char *u = s + i;
    if (rest == 0) {
        mult = 1;
    } else if (rest == 2 && u[1] == 'i') {
        switch (u[0]) {
        case 'K': mult = 1ULL << 10; break;
        case 'M': mult = 1ULL << 20; break;
        case 'G': mult = 1ULL << 30; break;
        case 'T': mult = 1ULL << 40; break;
        case 'P': mult = 1ULL << 50; break;
        default: return -1;
        }
    } else if (rest == 1) {
        switch (u[0]) {
        case 'k':
        case 'K': mult = 1000ULL; break;
        case 'M': mult = 1000000ULL; break;
        case 'G': mult = 1000000000ULL; break;
        case 'T': mult = 1000000000000ULL; break;
        case 'P': mult = 1000000000000000ULL; break;
        default: return -1;
        }
    } else {
        return -1;
    }
    uint64_t v;
    if (!mul_ok(whole, mult, &v))
        return -1;
    if (frac != 0) {
        uint64_t f;
        if (!mul_ok(frac, mult, &f))
            return -1;
        f /= frac_div; /* fractions of a byte are dropped */
        if (v + f < v)
            return -1;
        v += f;
    }
    *out = v;
    return 0;
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

static const char *token_end(const char *p, const char *end) {
    while (p < end && *p != ' ' && *p != '\t' && *p != '\r' && *p != '#')
        p++;
    return p;
}

static int parse_index(const char *p, size_t n, int *out) {
    if (n == 1 && p[0] == '*') {
        *out = -1;
        return 0;
    }
    if (n == 0 || n > 3)
        return -2;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -2;
        v = v * 10 + (p[i] - '0');
    }
    if (v >= HCS_MAX_DEVICES)
        return -3;
    *out = v;
    return 0;
}

int hcs_quota_parse_file_text(struct hcs_quota *q, const char *text, const char *origin, char *err,
                              size_t errlen) {
    quota_reset(q);
    bool seen[HCS_MAX_DEVICES] = {false};
    bool seen_default = false;
    uint64_t def = HCS_UNLIMITED;
    const char *p = text;
    const char *end = text + strlen(text);
    int lineno = 0;
    int entries = 0;
    while (p < end) {
        lineno++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *t = skip_ws(p, le);
        if (t < le && *t != '#') {
            const char *te = token_end(t, le);
            int idx;
            int rc = parse_index(t, (size_t)(te - t), &idx);
            if (rc == -3) {
                snprintf(err, errlen, "%s:%d: device index %.*s is out of range (0..%d); fix the quota "
                         "file", origin, lineno, (int)(te - t), t, HCS_MAX_DEVICES - 1);
                return -1;
            }
            if (rc != 0) {
                snprintf(err, errlen, "%s:%d: expected '<device index> <bytes>' (e.g. '0 17179869184'), "
                         "got '%.*s'; fix the quota file", origin, lineno, (int)(le - t), t);
                return -1;
            }
            const char *b = skip_ws(te, le);
            const char *be = token_end(b, le);
            uint64_t bytes;
            if (b == be || hcs_parse_bytes(b, (size_t)(be - b), &bytes) != 0) {
                snprintf(err, errlen, "%s:%d: bad byte count '%.*s' (want e.g. 17179869184 or 16Gi); fix "
                         "the quota file", origin, lineno, (int)(be - b), b);
                return -1;
            }
            const char *rest = skip_ws(be, le);
            if (rest < le && *rest != '#') {
                snprintf(err, errlen, "%s:%d: unexpected text '%.*s' after the byte count; fix the quota "
                         "file", origin, lineno, (int)(le - rest), rest);
                return -1;
            }
            if (idx < 0) {
                if (seen_default) {
                    snprintf(err, errlen, "%s:%d: '*' given twice; keep one default line", origin, lineno);
                    return -1;
                }
                seen_default = true;
                def = bytes;
            } else {
                if (seen[idx]) {
                    snprintf(err, errlen, "%s:%d: device %d given twice; keep one line per device", origin,
                             lineno, idx);
                    return -1;
                }
                seen[idx] = true;
                q->limit[idx] = bytes;
            }
            entries++;
        }
        p = nl ? nl + 1 : end;
    }
    if (entries == 0) {
        snprintf(err, errlen, "%s: no quota lines (want '<device index> <bytes>' per device); the node "
                 "agent writes this file, check that it finished", origin);
        return -1;
    }
    for (int i = 0; i < HCS_MAX_DEVICES; i++)
        if (!seen[i])
            q->limit[i] = def;
    q->configured = true;
    return 0;
}

int hcs_quota_parse_env(struct hcs_quota *q, const char *value, char *err, size_t errlen) {
    quota_reset(q);
    const char *p = value;
    size_t len = strlen(value);
    const char *end = value + len;
    if (memchr(value, ':', len) == NULL) {
        /* single quantity for every device */
        const char *s = skip_ws(p, end);
        const char *e = token_end(s, end);
        uint64_t v;
        if (s == e || skip_ws(e, end) != end || hcs_parse_bytes(s, (size_t)(e - s), &v) != 0) {
            snprintf(err, errlen, "HCS_VRAM_QUOTA='%s': want a byte quantity like 16Gi, or per device "
                     "'0:16Gi,1:8Gi'", value);
            return -1;
        }
        for (int i = 0; i < HCS_MAX_DEVICES; i++)
            q->limit[i] = v;
        q->configured = true;
        return 0;
    }
    bool seen[HCS_MAX_DEVICES] = {false};
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *ie = comma ? comma : end;
        const char *colon = memchr(p, ':', (size_t)(ie - p));
        int idx = -1;
        uint64_t v;
        const char *is = skip_ws(p, ie);
        if (colon == NULL || parse_index(is, (size_t)(colon - is), &idx) != 0 || idx < 0 ||
            hcs_parse_bytes(colon + 1, (size_t)(ie - colon - 1), &v) != 0) {
            snprintf(err, errlen, "HCS_VRAM_QUOTA='%s': bad item '%.*s'; want '<index 0..%d>:<quantity>' "
                     "items separated by commas, e.g. '0:16Gi,1:8Gi'", value, (int)(ie - p), p,
                     HCS_MAX_DEVICES - 1);
            return -1;
        }
        if (seen[idx]) {
            snprintf(err, errlen, "HCS_VRAM_QUOTA='%s': device %d given twice", value, idx);
            return -1;
        }
        seen[idx] = true;
        q->limit[idx] = v;
        p = comma ? comma + 1 : end;
    }
    q->configured = true;
    return 0;
}

static int read_small_fd(int fd, const char *path, char *buf, size_t cap, char *err, size_t errlen);

static int read_small_file(const char *path, char *buf, size_t cap, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open the quota file: %s; the node agent writes this file "
                 "(check the mount)", path, strerror(errno));
        return -1;
    }
    int rc = read_small_fd(fd, path, buf, cap, err, errlen);
    close(fd);
    return rc;
}

/* Read at most cap-1 bytes of fd (not closed here) into buf, NUL-terminated. */
static int read_small_fd(int fd, const char *path, char *buf, size_t cap, char *err, size_t errlen) {
    size_t n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            snprintf(err, errlen, "%s: larger than %zu bytes; not a quota file", path, cap);
            return -1;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: read: %s", path, strerror(errno));
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) {
        snprintf(err, errlen, "%s: contains NUL bytes; not a quota file", path);
        return -1;
    }
    return 0;
}

int hcs_quota_load_fd(struct hcs_quota *q, int fd, const char *origin, char *err, size_t errlen) {
    quota_reset(q);
    char *buf = malloc(QUOTA_FILE_MAX);
    if (buf == NULL) {
        snprintf(err, errlen, "out of host memory reading %s", origin);
        return -1;
    }
    int rc = read_small_fd(fd, origin, buf, QUOTA_FILE_MAX, err, errlen);
    if (rc == 0)
        rc = hcs_quota_parse_file_text(q, buf, origin, err, errlen);
    free(buf);
    snprintf(q->source, sizeof q->source, "%s", origin);
    return rc;
}

int hcs_quota_load_file(struct hcs_quota *q, const char *file, char *err, size_t errlen) {
    quota_reset(q);
    char *buf = malloc(QUOTA_FILE_MAX);
    if (buf == NULL) {
        snprintf(err, errlen, "out of host memory reading %s", file);
        return -1;
    }
    int rc = read_small_file(file, buf, QUOTA_FILE_MAX, err, errlen);
    if (rc == 0)
        rc = hcs_quota_parse_file_text(q, buf, file, err, errlen);
    free(buf);
    snprintf(q->source, sizeof q->source, "%s", file);
    return rc;
}

int hcs_quota_load(struct hcs_quota *q, char *err, size_t errlen) {
    quota_reset(q);
    const char *file = getenv("HCS_QUOTA_FILE");
    if (file != NULL && *file != '\0') {
        int rc = hcs_quota_load_file(q, file, err, errlen);
        snprintf(q->source, sizeof q->source, "HCS_QUOTA_FILE=%s", file);
        return rc;
    }
    const char *env = getenv("HCS_VRAM_QUOTA");
    if (env != NULL && *env != '\0') {
        int rc = hcs_quota_parse_env(q, env, err, errlen);
        snprintf(q->source, sizeof q->source, "HCS_VRAM_QUOTA");
        return rc;
    }
    return 0; /* not configured: pass-through */
}
