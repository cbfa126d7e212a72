/* sim_profile.c - node-profile loader/validator (see sim_profile.h, driver/README.md). */
#define _POSIX_C_SOURCE 200809L
#include "sim_profile.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sim_faults.h"
#include "sim_json.h"

#define SIM_MAX_FILE (4u << 20)

/* Defined in sim_faults.c: allocate the fault state of a freshly parsed profile. */
int sim_faults_attach_(sim_profile_t *p);
void sim_faults_detach_(sim_profile_t *p);

static const char *const vendor_names[SIM_VENDOR_COUNT] = {"nvidia", "ascend", "hygon", "cambricon"};
static const char *const health_names[] = {"ok", "warning", "critical", "lost"};
static const char *const link_names[] = {"nvlink", "hccs", "xgmi", "mlulink", "pcie"};
/* The interconnect each vendor's devices can use besides PCIe. */
static const sim_link_type_t vendor_link[SIM_VENDOR_COUNT] = {SIM_LINK_NVLINK, SIM_LINK_HCCS, SIM_LINK_XGMI,
                                                              SIM_LINK_MLULINK};

sim_vendor_t sim_vendor_from_name(const char *name) {
    if (name == NULL)
        return SIM_VENDOR_INVALID;
    for (int i = 0; i < SIM_VENDOR_COUNT; i++)
        if (strcmp(name, vendor_names[i]) == 0)
            return (sim_vendor_t)i;
    return SIM_VENDOR_INVALID;
}

const char *sim_vendor_name(sim_vendor_t vendor) {
    if ((int)vendor < 0 || vendor >= SIM_VENDOR_COUNT)
        return "?";
    return vendor_names[vendor];
}

const char *sim_health_name(sim_health_t h) {
    if ((int)h < 0 || (int)h > (int)SIM_HEALTH_LOST)
        return "?";
    return health_names[h];
}

int sim_health_from_name(const char *name) {
    for (int i = 0; i <= (int)SIM_HEALTH_LOST; i++)
        if (name != NULL && strcmp(name, health_names[i]) == 0)
            return i;
    return -1;
}

const char *sim_link_type_name(sim_link_type_t t) {
    if ((int)t < 0 || (int)t > (int)SIM_LINK_PCIE)
        return "?";
    return link_names[t];
}

static int link_from_name(const char *name) {
    for (int i = 0; i <= (int)SIM_LINK_PCIE; i++)
        if (strcmp(name, link_names[i]) == 0)
            return i;
    return -1;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Parse n..max hex digits ending at a delimiter; advance *s. */
static int parse_hex(const char **s, int min_digits, int max_digits, unsigned int *out) {
    unsigned long v = 0;
    int n = 0;
    while (n < max_digits && hexval((unsigned char)(*s)[n]) >= 0) {
        v = (v << 4) | (unsigned long)hexval((unsigned char)(*s)[n]);
        n++;
    }
    if (n < min_digits)
        return -1;
    *s += n;
    *out = (unsigned int)v;
    return 0;
}

int sim_parse_pci_bus_id(const char *s, unsigned int *domain, unsigned int *bus, unsigned int *dev,
                         unsigned int *fn) {
    if (s == NULL)
        return -1;
    unsigned int d = 0, b, dv, f;
    const char *colon1 = strchr(s, ':');
    if (colon1 == NULL)
        return -1;
    const char *colon2 = strchr(colon1 + 1, ':');
    const char *q = s;
    if (colon2 != NULL) {
        size_t dl = (size_t)(colon1 - s);
        if (dl < 1 || dl > 8 || parse_hex(&q, (int)dl, (int)dl, &d) != 0 || *q != ':')
            return -1;
        q++;
        if (d > 0xffff)
            return -1;
    }
    if (parse_hex(&q, 2, 2, &b) != 0 || *q != ':')
        return -1;
    q++;
    if (parse_hex(&q, 2, 2, &dv) != 0 || *q != '.' || dv > 0x1f)
        return -1;
    q++;
    if (parse_hex(&q, 1, 1, &f) != 0 || *q != '\0' || f > 7)
        return -1;
    if (domain)
        *domain = d;
    if (bus)
        *bus = b;
    if (dev)
        *dev = dv;
    if (fn)
        *fn = f;
    return 0;
}

/* ---- validation -------------------------------------------------------------------------- */

typedef struct {
    const char *path;
    char *err;
    size_t errlen;
} ctx_t;

static int fail(ctx_t *c, const char *fmt, ...) {
    if (c->err != NULL && c->errlen > 0) {
        int n = snprintf(c->err, c->errlen, "hcs-sim: %s: ", c->path);
        if (n >= 0 && (size_t)n < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static int get_string(ctx_t *c, const sj_value *obj, const char *where, const char *key, int required,
                      char *dst, size_t cap) {
    const sj_value *v = sj_get(obj, key);
    if (v == NULL) {
        if (required)
            return fail(c, "%s.%s: missing (required string)", where, key);
        return 0;
    }
    if (v->type != SJ_STRING)
        return fail(c, "%s.%s: expected a string, got %s", where, key, sj_type_name(v->type));
    size_t n = strlen(v->string);
    if (required && n == 0)
        return fail(c, "%s.%s: must not be empty", where, key);
    if (n >= cap)
        return fail(c, "%s.%s: longer than %zu characters", where, key, cap - 1);
    memcpy(dst, v->string, n + 1);
    return 0;
}

static int get_int(ctx_t *c, const sj_value *obj, const char *where, const char *key, int required,
                   long long min, long long max, long long *dst) {
    const sj_value *v = sj_get(obj, key);
    if (v == NULL) {
        if (required)
            return fail(c, "%s.%s: missing (required integer)", where, key);
        return 0;
    }
    if (v->type != SJ_NUMBER || !v->is_integer)
        return fail(c, "%s.%s: expected an integer, got %s", where, key,
                    v->type == SJ_NUMBER ? "a fractional number" : sj_type_name(v->type));
    if (v->number < (double)min || v->number > (double)max)
        return fail(c, "%s.%s: %.0f is out of range [%lld, %lld]", where, key, v->number, min, max);
    *dst = (long long)v->number;
    return 0;
}

static int check_keys(ctx_t *c, const sj_value *obj, const char *where, const char *const *known) {
    for (size_t i = 0; i < obj->count; i++) {
        int ok = 0;
        for (const char *const *k = known; *k != NULL; k++)
            if (strcmp(obj->keys[i], *k) == 0)
                ok = 1;
        if (!ok)
            return fail(c, "%s.%s: unknown field (check the spelling; see driver/README.md)", where,
                        obj->keys[i]);
    }
    return 0;
}

static const char *const device_keys[] = {"vendor", "model", "uuid", "pci_bus_id", "memory_mib",
                                          "numa_node", "memory_used_mib", "minor", "serial",
                                          "temperature_c", "utilization_pct", "health", "links",
                                          "tflops_fp16", "timeslice_us", NULL};
static const char *const link_keys[] = {"peer", "switch", "type", "gbps", "version", NULL};
static const char *const switch_keys[] = {"pci_bus_id", NULL};

static int parse_device(ctx_t *c, sim_profile_t *p, const sj_value *dv, int i) {
    char where[48];
    snprintf(where, sizeof where, "devices[%d]", i);
    sim_device_t *d = &p->devices[i];
    memset(d, 0, sizeof *d);
    if (dv->type != SJ_OBJECT)
        return fail(c, "%s: expected an object, got %s", where, sj_type_name(dv->type));
    if (check_keys(c, dv, where, device_keys) != 0)
        return -1;
    char vendor[32];
    if (get_string(c, dv, where, "vendor", 1, vendor, sizeof vendor) != 0) {
        const sj_value *v = sj_get(dv, "vendor");
        if (v == NULL || v->type != SJ_STRING)
            return -1;
        return fail(c, "%s.vendor: unknown vendor \"%.40s\" (expected nvidia, ascend, hygon or cambricon)", where,
                    v->string);
    }
    d->vendor = sim_vendor_from_name(vendor);
    if (d->vendor == SIM_VENDOR_INVALID)
        return fail(c, "%s.vendor: unknown vendor \"%s\" (expected nvidia, ascend, hygon or cambricon)", where,
                    vendor);
    d->file_index = i;
    d->index = p->vendor_count[d->vendor];
    p->vendor_index[d->vendor][d->index] = i;
    p->vendor_count[d->vendor]++;
    if (get_string(c, dv, where, "model", 1, d->model, sizeof d->model) != 0 ||
        get_string(c, dv, where, "uuid", 1, d->uuid, sizeof d->uuid) != 0 ||
        get_string(c, dv, where, "serial", 0, d->serial, sizeof d->serial) != 0)
        return -1;
    char bus[64];
    if (get_string(c, dv, where, "pci_bus_id", 1, bus, sizeof bus) != 0)
        return -1;
    if (sim_parse_pci_bus_id(bus, &d->pci_domain, &d->pci_bus, &d->pci_device, &d->pci_function) != 0)
        return fail(c, "%s.pci_bus_id: \"%s\" is not a PCI address (expected domain:bus:device.function, "
                       "e.g. 0000:07:00.0)", where, bus);
    snprintf(d->pci_bus_id, sizeof d->pci_bus_id, "%04x:%02x:%02x.%x", d->pci_domain, d->pci_bus,
             d->pci_device, d->pci_function);
    long long mem = 0, used = 0, numa = 0, minor = d->index, temp = 35, util = 0;
    long long tflops = 312, slice_us = 2000; /* simulated device model (sim_device.h) */
    if (get_int(c, dv, where, "memory_mib", 1, 1, 1LL << 40, &mem) != 0 ||
        get_int(c, dv, where, "numa_node", 1, -1, 1023, &numa) != 0 ||
        get_int(c, dv, where, "memory_used_mib", 0, 0, mem, &used) != 0 ||
        get_int(c, dv, where, "minor", 0, 0, 65535, &minor) != 0 ||
        get_int(c, dv, where, "temperature_c", 0, -60, 200, &temp) != 0 ||
        get_int(c, dv, where, "utilization_pct", 0, 0, 100, &util) != 0 ||
        get_int(c, dv, where, "tflops_fp16", 0, 1, 100000, &tflops) != 0 ||
        get_int(c, dv, where, "timeslice_us", 0, 50, 1000000, &slice_us) != 0)
        return -1;
    d->tflops_fp16 = (int)tflops;
    d->timeslice_us = (int)slice_us;
    d->memory_bytes = (uint64_t)mem << 20;
    d->memory_used_bytes = (uint64_t)used << 20;
    d->numa_node = (int)numa;
    d->minor = (int)minor;
    d->temperature_c = (int)temp;
    d->utilization_pct = (int)util;
    d->health = SIM_HEALTH_OK;
    const sj_value *h = sj_get(dv, "health");
    if (h != NULL) {
        if (h->type != SJ_STRING)
            return fail(c, "%s.health: expected a string, got %s", where, sj_type_name(h->type));
        int hv = sim_health_from_name(h->string);
        if (hv < 0)
            return fail(c, "%s.health: unknown state \"%.40s\" (expected ok, warning, critical or lost)", where,
                        h->string);
        d->health = (sim_health_t)hv;
    }
    return 0;
}

static int parse_links(ctx_t *c, sim_profile_t *p, const sj_value *dv, int i) {
    sim_device_t *d = &p->devices[i];
    const sj_value *links = sj_get(dv, "links");
    if (links == NULL)
        return 0;
    if (links->type != SJ_ARRAY)
        return fail(c, "devices[%d].links: expected an array, got %s", i, sj_type_name(links->type));
    if (links->count > SIM_MAX_LINKS)
        return fail(c, "devices[%d].links: %zu links, at most %d are supported", i, links->count, SIM_MAX_LINKS);
    for (size_t k = 0; k < links->count; k++) {
        char where[64];
        snprintf(where, sizeof where, "devices[%d].links[%zu]", i, k);
        const sj_value *lv = &links->items[k];
        if (lv->type != SJ_OBJECT)
            return fail(c, "%s: expected an object, got %s", where, sj_type_name(lv->type));
        if (check_keys(c, lv, where, link_keys) != 0)
            return -1;
        long long peer = -1, sw = -1, version = 0;
        if (get_int(c, lv, where, "switch", 0, 0, SIM_MAX_SWITCHES - 1, &sw) != 0 ||
            get_int(c, lv, where, "version", 0, 1, 5, &version) != 0)
            return -1;
        if (sw >= 0) {
            if (sj_get(lv, "peer") != NULL)
                return fail(c, "%s: set either peer (a direct link) or switch (a link to an NVSwitch), not both",
                            where);
            if (d->vendor != SIM_VENDOR_NVIDIA)
                return fail(c, "%s.switch: only NVIDIA devices link to NVSwitches", where);
            if (sw >= p->nswitches)
                return fail(c, "%s.switch: %lld names no entry of nvswitches (the profile lists %d)", where, sw,
                            p->nswitches);
        } else {
            if (get_int(c, lv, where, "peer", 1, -1000000, 1000000, &peer) != 0)
                return -1;
            int n = p->vendor_count[d->vendor];
            if (peer < 0 || peer >= n)
                return fail(c, "%s.peer: %lld names no %s device (peers are %s-local indexes 0..%d)", where, peer,
                            sim_vendor_name(d->vendor), sim_vendor_name(d->vendor), n - 1);
            if (peer == d->index)
                return fail(c, "%s.peer: %lld is the device itself", where, peer);
        }
        char type[32];
        if (get_string(c, lv, where, "type", 1, type, sizeof type) != 0)
            return -1;
        int t = link_from_name(type);
        if (t < 0)
            return fail(c, "%s.type: unknown link type \"%s\" (expected nvlink, hccs, xgmi, mlulink or pcie)",
                        where, type);
        if (t != (int)SIM_LINK_PCIE && t != (int)vendor_link[d->vendor])
            return fail(c, "%s.type: %s is not a %s interconnect (expected %s or pcie)", where, type,
                        sim_vendor_name(d->vendor), link_names[vendor_link[d->vendor]]);
        const sj_value *g = sj_get(lv, "gbps");
        if (g == NULL)
            return fail(c, "%s.gbps: missing (required number, GB/s)", where);
        if (g->type != SJ_NUMBER)
            return fail(c, "%s.gbps: expected a number, got %s", where, sj_type_name(g->type));
        if (!(g->number > 0) || g->number > 1e6)
            return fail(c, "%s.gbps: %g must be > 0 (GB/s)", where, g->number);
        if (sw >= 0 && t != (int)SIM_LINK_NVLINK)
            return fail(c, "%s.type: a link to an NVSwitch is an nvlink", where);
        d->links[k].peer = (int)peer;
        d->links[k].sw = (int)sw;
        d->links[k].version = (int)version;
        d->links[k].type = (sim_link_type_t)t;
        d->links[k].gbps = g->number;
    }
    d->nlinks = (int)links->count;
    return 0;
}

/* Top-level "nvswitches": the NVSwitch chips of an HGX baseboard (each only a PCI address here). */
static int parse_switches(ctx_t *c, sim_profile_t *p, const sj_value *root) {
    const sj_value *sws = sj_get(root, "nvswitches");
    if (sws == NULL)
        return 0;
    if (sws->type != SJ_ARRAY)
        return fail(c, "nvswitches: expected an array, got %s", sj_type_name(sws->type));
    if (sws->count > SIM_MAX_SWITCHES)
        return fail(c, "nvswitches: %zu switches, at most %d are supported", sws->count, SIM_MAX_SWITCHES);
    for (size_t k = 0; k < sws->count; k++) {
        char where[48], bus[64];
        snprintf(where, sizeof where, "nvswitches[%zu]", k);
        const sj_value *v = &sws->items[k];
        if (v->type != SJ_OBJECT)
            return fail(c, "%s: expected an object, got %s", where, sj_type_name(v->type));
        if (check_keys(c, v, where, switch_keys) != 0 ||
            get_string(c, v, where, "pci_bus_id", 1, bus, sizeof bus) != 0)
            return -1;
        sim_switch_t *w = &p->switches[k];
        if (sim_parse_pci_bus_id(bus, &w->pci_domain, &w->pci_bus, &w->pci_device, &w->pci_function) != 0)
            return fail(c, "%s.pci_bus_id: \"%s\" is not a PCI address", where, bus);
        snprintf(w->pci_bus_id, sizeof w->pci_bus_id, "%04x:%02x:%02x.%x", w->pci_domain, w->pci_bus,
                 w->pci_device, w->pci_function);
        for (int i = 0; i < p->ndevices; i++)
            if (strcmp(p->devices[i].pci_bus_id, w->pci_bus_id) == 0)
                return fail(c, "%s.pci_bus_id: %s is also devices[%d]", where, w->pci_bus_id, i);
    }
    p->nswitches = (int)sws->count;
    return 0;
}

static int validate_profile(ctx_t *c, sim_profile_t *p, const sj_value *root) {
    if (root->type != SJ_OBJECT)
        return fail(c, "top level: expected an object, got %s", sj_type_name(root->type));
    strcpy(p->driver_version, "550.54.15");
    if (get_string(c, root, "top level", "name", 0, p->name, sizeof p->name) != 0 ||
        get_string(c, root, "top level", "description", 0, p->description, sizeof p->description) != 0 ||
        get_string(c, root, "top level", "driver_version", 0, p->driver_version, sizeof p->driver_version) != 0)
        return -1;
    const sj_value *devs = sj_get(root, "devices");
    if (devs == NULL)
        return fail(c, "devices: missing (required array of device objects)");
    if (devs->type != SJ_ARRAY)
        return fail(c, "devices: expected an array, got %s", sj_type_name(devs->type));
    if (devs->count > SIM_MAX_DEVICES)
        return fail(c, "devices: %zu devices, at most %d are supported", devs->count, SIM_MAX_DEVICES);
    p->ndevices = (int)devs->count;
    for (int i = 0; i < p->ndevices; i++)
        if (parse_device(c, p, &devs->items[i], i) != 0)
            return -1;
    for (int i = 0; i < p->ndevices; i++) {
        sim_device_t *d = &p->devices[i];
        for (int j = 0; j < i; j++) {
            sim_device_t *e = &p->devices[j];
            if (strcmp(d->uuid, e->uuid) == 0)
                return fail(c, "devices[%d].uuid: duplicate of devices[%d] (\"%s\")", i, j, d->uuid);
            if (strcmp(d->pci_bus_id, e->pci_bus_id) == 0)
                return fail(c, "devices[%d].pci_bus_id: duplicate of devices[%d] (%s)", i, j, d->pci_bus_id);
            if (d->vendor == e->vendor && d->minor == e->minor)
                return fail(c, "devices[%d].minor: duplicate of devices[%d] (%d)", i, j, d->minor);
        }
    }
    if (parse_switches(c, p, root) != 0)
        return -1;
    for (int i = 0; i < p->ndevices; i++)
        if (parse_links(c, p, &devs->items[i], i) != 0)
            return -1;
    return 0;
}

sim_profile_t *sim_profile_parse_file(const char *path, char *err, size_t errlen) {
    ctx_t c = {path, err, errlen};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fail(&c, "cannot open: %s (set HCS_SIM_PROFILE to a file in driver/profiles/)", strerror(errno));
        return NULL;
    }
    char *buf = malloc(SIM_MAX_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        fail(&c, "out of memory");
        return NULL;
    }
    size_t n = fread(buf, 1, SIM_MAX_FILE + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        fail(&c, "read error");
        return NULL;
    }
    if (n > SIM_MAX_FILE) {
        free(buf);
        fail(&c, "larger than %u bytes; not a node profile", SIM_MAX_FILE);
        return NULL;
    }
    char jerr[256];
    sj_value *root = sj_parse(buf, n, jerr, sizeof jerr);
    free(buf);
    if (root == NULL) {
        fail(&c, "invalid JSON: %s", jerr);
        return NULL;
    }
    sim_profile_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        sj_free(root);
        fail(&c, "out of memory");
        return NULL;
    }
    snprintf(p->path, sizeof p->path, "%s", path);
    int rc = validate_profile(&c, p, root);
    sj_free(root);
    if (rc != 0) {
        free(p);
        return NULL;
    }
    return p;
}

void sim_profile_free(sim_profile_t *p) {
    if (p == NULL)
        return;
    sim_faults_detach_(p);
    free(p);
}

/* ---- process-wide cache -------------------------------------------------------------------- */

typedef struct cached {
    struct cached *next;
    sim_profile_t *profile;
} cached_t;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_t *cache_head; /* profiles are never freed: pointers handed out stay valid */

static void set_err(char *err, size_t errlen, const char *msg) {
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

int sim_profile_load(const sim_profile_t **out, char *err, size_t errlen) {
    if (out != NULL)
        *out = NULL;
    const char *path = getenv(SIM_ENV_PROFILE);
    char msg[1024];
    if (path == NULL || path[0] == '\0') {
        snprintf(msg, sizeof msg,
                 "hcs-sim: %s is not set: point it at a node profile, e.g. driver/profiles/a100-80g-nvlink-8.json",
                 SIM_ENV_PROFILE);
        fprintf(stderr, "%s\n", msg);
        set_err(err, errlen, msg);
        return -1;
    }
    pthread_mutex_lock(&cache_lock);
    for (cached_t *c = cache_head; c != NULL; c = c->next) {
        if (strcmp(c->profile->path, path) == 0) {
            if (out != NULL)
                *out = c->profile;
            pthread_mutex_unlock(&cache_lock);
            return 0;
        }
    }
    sim_profile_t *p = sim_profile_parse_file(path, msg, sizeof msg);
    cached_t *c = NULL;
    if (p != NULL && sim_faults_attach_(p) == 0)
        c = malloc(sizeof *c);
    if (c == NULL) {
        if (p != NULL) {
            sim_profile_free(p);
            snprintf(msg, sizeof msg, "hcs-sim: %s: out of memory", path);
        }
        pthread_mutex_unlock(&cache_lock);
        fprintf(stderr, "%s\n", msg);
        set_err(err, errlen, msg);
        return -1;
    }
    c->profile = p;
    c->next = cache_head;
    cache_head = c;
    pthread_mutex_unlock(&cache_lock);
    if (out != NULL)
        *out = p;
    return 0;
}

int sim_vendor_count(const sim_profile_t *p, sim_vendor_t vendor) {
    if (p == NULL || (int)vendor < 0 || vendor >= SIM_VENDOR_COUNT)
        return 0;
    return p->vendor_count[vendor];
}

const sim_device_t *sim_vendor_device(const sim_profile_t *p, sim_vendor_t vendor, int index) {
    if (index < 0 || index >= sim_vendor_count(p, vendor))
        return NULL;
    return &p->devices[p->vendor_index[vendor][index]];
}

int sim_vendor_find_uuid(const sim_profile_t *p, sim_vendor_t vendor, const char *uuid) {
    if (uuid == NULL)
        return -1;
    int n = sim_vendor_count(p, vendor);
    for (int i = 0; i < n; i++)
        if (strcmp(sim_vendor_device(p, vendor, i)->uuid, uuid) == 0)
            return i;
    return -1;
}

int sim_vendor_find_pci(const sim_profile_t *p, sim_vendor_t vendor, const char *bus_id) {
    unsigned int d, b, dv, f;
    if (sim_parse_pci_bus_id(bus_id, &d, &b, &dv, &f) != 0)
        return -1;
    int n = sim_vendor_count(p, vendor);
    for (int i = 0; i < n; i++) {
        const sim_device_t *x = sim_vendor_device(p, vendor, i);
        if (x->pci_domain == d && x->pci_bus == b && x->pci_device == dv && x->pci_function == f)
            return i;
    }
    return -1;
}
