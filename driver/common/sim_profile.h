/*
 * sim_profile.h - node-profile loader shared by every simulated vendor library.
 *
 * Compiled into each library (no runtime dependency beyond libc/libpthread):
 *     cc -std=c11 ... -I driver/common driver/common/sim_json.c driver/common/sim_profile.c \
 *        driver/common/sim_faults.c your_lib.c -lpthread
 *
 * The profile is the JSON file named by the environment variable HCS_SIM_PROFILE (format:
 * driver/README.md). It is parsed and validated once and cached for the life of the process
 * (a later call with a *different* HCS_SIM_PROFILE value loads and caches that file too; earlier
 * profile pointers stay valid forever). All functions here are thread-safe.
 *
 * Devices are addressed per vendor: index 0 is the first device of that vendor in file order.
 * A library only ever shows the devices of its own vendor.
 *
 * Typical use in a vendor library's init:
 *
 *     const sim_profile_t *p;
 *     char err[512];
 *     if (sim_profile_load(&p, err, sizeof err) != 0)
 *         return VENDOR_ERROR_CODE;   // the one-line message is already on stderr (and in err)
 *     int n = sim_vendor_count(p, SIM_VENDOR_NVIDIA);
 *     const sim_device_t *d = sim_vendor_device(p, SIM_VENDOR_NVIDIA, 0);
 *     ... d->memory_bytes, d->uuid, ...
 *
 * Run-time state (health, ECC counters, error codes, events) is NOT in sim_device_t: it comes
 * from the fault file, see sim_faults.h.
 */
#ifndef HCS_SIM_PROFILE_H
#define HCS_SIM_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SIM_MAX_DEVICES 64  /* devices per profile (all vendors together) */
#define SIM_MAX_LINKS 36    /* links per device (= NVML_NVLINK_MAX_LINKS) */
#define SIM_MAX_SWITCHES 16 /* NVSwitch chips per profile (HGX A100: 6, HGX H100/H200: 4) */
#define SIM_STR 96          /* capacity of model / uuid / serial strings, incl. NUL */

/* Environment variables. */
#define SIM_ENV_PROFILE "HCS_SIM_PROFILE"
#define SIM_ENV_FAULTS "HCS_SIM_FAULTS" /* default: "<profile path>.faults" */

typedef enum {
    SIM_VENDOR_NVIDIA = 0,
    SIM_VENDOR_ASCEND = 1,
    SIM_VENDOR_HYGON = 2,
    SIM_VENDOR_CAMBRICON = 3,
    SIM_VENDOR_COUNT = 4,
    SIM_VENDOR_INVALID = -1
} sim_vendor_t;

typedef enum {
    SIM_HEALTH_OK = 0,
    SIM_HEALTH_WARNING = 1,
    SIM_HEALTH_CRITICAL = 2,
    SIM_HEALTH_LOST = 3
} sim_health_t;

typedef enum {
    SIM_LINK_NVLINK = 0,
    SIM_LINK_HCCS = 1,
    SIM_LINK_XGMI = 2,
    SIM_LINK_MLULINK = 3,
    SIM_LINK_PCIE = 4
} sim_link_type_t;

typedef struct {
    int peer;             /* vendor-local index of the peer device (same vendor); -1 for a switch link */
    int sw;               /* index into the profile's nvswitches for a link to an NVSwitch; -1 otherwise */
    int version;          /* NVLink generation as written ("version"); 0 = derive it from gbps */
    sim_link_type_t type;
    double gbps;          /* GB/s, as written in the profile */
} sim_link_t;

/* An NVSwitch chip on the baseboard: NVML reports it as the remote end of a GPU's NVLinks. */
typedef struct {
    char pci_bus_id[32]; /* normalised "dddd:bb:dd.f" */
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
} sim_switch_t;

typedef struct {
    sim_vendor_t vendor;
    int index;            /* vendor-local index (0 = first device of this vendor in the file) */
    int file_index;       /* position in the profile's "devices" array */
    char model[SIM_STR];  /* name the vendor library reports, e.g. "NVIDIA A100-SXM4-80GB" */
    char uuid[SIM_STR];   /* vendor-style unique id, e.g. "GPU-5f0c2f3c-..." */
    char serial[SIM_STR]; /* "" when the profile has none */
    char pci_bus_id[32];  /* normalised "dddd:bb:dd.f" (lower-case hex, 4-digit domain) */
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
    uint64_t memory_bytes;      /* total (memory_mib * 2^20) */
    uint64_t memory_used_bytes; /* initial used (memory_used_mib * 2^20) */
    int numa_node;              /* -1 = unknown */
    int minor;                  /* device-node number; default = vendor-local index */
    int temperature_c;          /* default 35 */
    int utilization_pct;        /* default 0 */
    sim_health_t health;        /* initial health from the profile; see sim_faults.h for current */
    int nlinks;
    sim_link_t links[SIM_MAX_LINKS];
    int tflops_fp16;            /* dense fp16 TFLOPS of the simulated device model; default 312 */
    int timeslice_us;           /* time-slice between contexts of the device model; default 2000 */
} sim_device_t;

struct sim_fault_state; /* private to sim_faults.c */

typedef struct {
    char path[4096];           /* profile file as named by HCS_SIM_PROFILE */
    char name[128];            /* "name" (optional, default "") */
    char description[256];     /* "description" (optional) */
    char driver_version[80];   /* "driver_version" (optional, default "550.54.15") */
    int ndevices;
    sim_device_t devices[SIM_MAX_DEVICES];          /* file order */
    int vendor_count[SIM_VENDOR_COUNT];
    int vendor_index[SIM_VENDOR_COUNT][SIM_MAX_DEVICES]; /* [vendor][vendor-local index] -> file index */
    int nswitches;
    sim_switch_t switches[SIM_MAX_SWITCHES];        /* top-level "nvswitches", file order */
    struct sim_fault_state *faults;                 /* owned by sim_faults.c; never NULL after load */
} sim_profile_t;

/*
 * Load (once, cached) the profile named by $HCS_SIM_PROFILE.
 * Returns 0 and sets *out on success.
 * Returns -1 on failure: *out = NULL, err holds one line such as
 *   "hcs-sim: driver/profiles/x.json: devices[3].pci_bus_id: duplicate of devices[1]"
 * and the same line has been written to stderr (once per failed attempt). Failures are not cached,
 * so a corrected file is picked up by the next call. err may be NULL / errlen 0.
 * When HCS_SIM_PROFILE is unset or empty the error says so (libraries should then report
 * "driver not loaded"-style codes).
 */
int sim_profile_load(const sim_profile_t **out, char *err, size_t errlen);

/* Parse a profile file directly (no caching, nothing printed). Used by tests and by
 * sim_profile_load. On success returns a heap profile the caller frees with sim_profile_free. */
sim_profile_t *sim_profile_parse_file(const char *path, char *err, size_t errlen);
void sim_profile_free(sim_profile_t *p);

/* Number of devices of a vendor (0 when none, or p == NULL). */
int sim_vendor_count(const sim_profile_t *p, sim_vendor_t vendor);

/* Device by vendor-local index, or NULL when out of range. */
const sim_device_t *sim_vendor_device(const sim_profile_t *p, sim_vendor_t vendor, int index);

/* Name <-> enum helpers ("nvidia", "ascend", "hygon", "cambricon"). */
sim_vendor_t sim_vendor_from_name(const char *name);
const char *sim_vendor_name(sim_vendor_t vendor);
const char *sim_health_name(sim_health_t h);        /* "ok" | "warning" | "critical" | "lost" */
int sim_health_from_name(const char *name);         /* -1 when unknown */
const char *sim_link_type_name(sim_link_type_t t);  /* "nvlink" | "hccs" | ... */

/* Lookup helpers (vendor-local index, or -1). */
int sim_vendor_find_uuid(const sim_profile_t *p, sim_vendor_t vendor, const char *uuid);
/* Accepts "dddd:bb:dd.f", "dddddddd:bb:dd.f" (NVML 8-digit domain) and "bb:dd.f"; case-insensitive. */
int sim_vendor_find_pci(const sim_profile_t *p, sim_vendor_t vendor, const char *bus_id);

/* Parse a PCI bus id string into parts; returns 0 on success, -1 if malformed. */
int sim_parse_pci_bus_id(const char *s, unsigned int *domain, unsigned int *bus, unsigned int *dev,
                         unsigned int *fn);

#ifdef __cplusplus
}
#endif

#endif /* HCS_SIM_PROFILE_H */
