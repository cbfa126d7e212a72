/*
 * Simulated NVML (libnvidia-ml.so.1): the subset HCS and pynvml (nvidia-ml-py) use.
 * Devices, names and topology come from the node profile ($HCS_SIM_PROFILE); health, ECC and Xid
 * events from the fault file (driver/README.md).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_faults.h"
#include "sim_profile.h"
#include "sim_util.h"

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
};

enum {
    NVML_TOPOLOGY_INTERNAL = 0,
    NVML_TOPOLOGY_SINGLE = 10,
    NVML_TOPOLOGY_MULTIPLE = 20,
    NVML_TOPOLOGY_HOSTBRIDGE = 30,
    NVML_TOPOLOGY_NODE = 40,
    NVML_TOPOLOGY_SYSTEM = 50
};

#define NVML_NVLINK_MAX_LINKS 36
#define NVML_NVLINK_DEVICE_TYPE_GPU 0x00
#define NVML_NVLINK_DEVICE_TYPE_SWITCH 0x02
#define NVML_EVENT_SINGLE_BIT_ECC 0x1ULL
#define NVML_EVENT_DOUBLE_BIT_ECC 0x2ULL
#define NVML_EVENT_XID 0x8ULL
#define NVML_SUPPORTED_EVENTS (NVML_EVENT_SINGLE_BIT_ECC | NVML_EVENT_DOUBLE_BIT_ECC | NVML_EVENT_XID)
#define NVML_MEMORY_V2 0x02000028u
#define NVML_TEMPERATURE_V1 0x100000Cu
#define NVML_POLL_MS 20
#define WARNING_TEMPERATURE_C 90

struct nvmlDevice_st {
    int index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int version;
    int sensorType;
    int temperature;
} nvmlTemperature_v1_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
} nvmlEventData_v1_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

#define EVENT_SET_MAGIC 0x4e564553u /* "NVES" */
struct nvmlEventSet_st {
    unsigned int magic;
    pthread_mutex_t lock;
    uint64_t cursor;
    unsigned long long mask[SIM_MAX_DEVICES];
};
typedef struct nvmlEventSet_st *nvmlEventSet_t;

/* Library state: the profile is cached forever by sim_profile_load; this only tracks init. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_refcount;
static const sim_profile_t *g_profile;
static struct nvmlDevice_st g_devices[SIM_MAX_DEVICES];

/* ---- helpers ---------------------------------------------------------------------------------- */

static const sim_profile_t *profile(void) {
    pthread_mutex_lock(&g_lock);
    const sim_profile_t *p = g_refcount > 0 ? g_profile : NULL;
    pthread_mutex_unlock(&g_lock);
    return p;
}

static int handle_index(nvmlDevice_t d) {
    if (d < &g_devices[0] || d >= &g_devices[SIM_MAX_DEVICES])
        return -1;
    return (int)(d - &g_devices[0]);
}

/* Resolve a handle. With `state` set, a critical/lost device answers GPU_IS_LOST. */
static nvmlReturn_t resolve(nvmlDevice_t dev, int state, const sim_profile_t **pp, const sim_device_t **dp) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    int i = handle_index(dev);
    const sim_device_t *d = i < 0 ? NULL : sim_vendor_device(p, SIM_VENDOR_NVIDIA, i);
    if (d == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (state) {
        sim_health_t h = sim_device_health(p, SIM_VENDOR_NVIDIA, i);
        if (h == SIM_HEALTH_CRITICAL || h == SIM_HEALTH_LOST)
            return NVML_ERROR_GPU_IS_LOST;
    }
    *pp = p;
    *dp = d;
    return NVML_SUCCESS;
}

/* PCI device id (device << 16 | 0x10de) and compute capability by model name. */
typedef struct {
    const char *needle;
    unsigned int device_id;
    unsigned int subsys;
    int cc_major, cc_minor;
} model_info_t;

static const model_info_t k_models[] = {
    {"A100-SXM4-80GB", 0x20B2, 0x147F10DE, 8, 0}, {"A100-SXM4-40GB", 0x20B0, 0x134F10DE, 8, 0},
    {"A100 80GB PCIe", 0x20B5, 0x153310DE, 8, 0}, {"A100", 0x20B1, 0x145F10DE, 8, 0},
    {"A800", 0x20F3, 0x149710DE, 8, 0},           {"H100 80GB HBM3", 0x2330, 0x16C110DE, 9, 0},
    {"H100", 0x2331, 0x162610DE, 9, 0},           {"H800", 0x2324, 0x17A610DE, 9, 0},
    {"H200", 0x2335, 0x18BE10DE, 9, 0},           {"L40S", 0x26B9, 0x185110DE, 8, 9},
    {"A10", 0x2236, 0x148210DE, 8, 6},            {"T4", 0x1EB8, 0x12A210DE, 7, 5},
    {"V100", 0x1DB1, 0x124910DE, 7, 0},
};

static const model_info_t *model_info(const sim_device_t *d) {
    for (size_t i = 0; i < sizeof k_models / sizeof k_models[0]; i++)
        if (sim_contains(d->model, k_models[i].needle))
            return &k_models[i];
    static const model_info_t unknown = {"", 0x20B0, 0x000010DE, 8, 0};
    return &unknown;
}

static void fill_pci(const sim_device_t *d, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof *pci);
    const model_info_t *m = model_info(d);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", d->pci_domain, d->pci_bus,
             d->pci_device, d->pci_function);
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.%X", d->pci_domain, d->pci_bus, d->pci_device,
             d->pci_function);
    pci->domain = d->pci_domain;
    pci->bus = d->pci_bus;
    pci->device = d->pci_device;
    pci->pciDeviceId = (m->device_id << 16) | 0x10DEu;
    pci->pciSubSystemId = m->subsys;
}

/* NVSwitch PCI identity (vendor 10DE, device 22A3 = the third-generation NVSwitch of HGX H100). */
static void fill_switch_pci(const sim_switch_t *w, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", w->pci_domain, w->pci_bus,
             w->pci_device, w->pci_function);
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.%X", w->pci_domain, w->pci_bus, w->pci_device,
             w->pci_function);
    pci->domain = w->pci_domain;
    pci->bus = w->pci_bus;
    pci->device = w->pci_device;
    pci->pciDeviceId = (0x22A3u << 16) | 0x10DEu;
}

/* ---- init / system ------------------------------------------------------------------------------ */

SIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const sim_profile_t *p;
    if (sim_profile_load(&p, NULL, 0) != 0) {
        const char *env = getenv(SIM_ENV_PROFILE);
        return (env == NULL || env[0] == '\0') ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_ERROR_UNKNOWN;
    }
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < SIM_MAX_DEVICES; i++)
        g_devices[i].index = i;
    g_profile = p;
    g_refcount++;
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
SIM_EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

SIM_EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&g_lock);
    nvmlReturn_t r = NVML_SUCCESS;
    if (g_refcount == 0)
        r = NVML_ERROR_UNINITIALIZED;
    else
        g_refcount--;
    pthread_mutex_unlock(&g_lock);
    return r;
}

SIM_EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case 21: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    default: return "Unknown Error";
    }
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    return sim_copy_str(version, length, p->driver_version) == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    char buf[96];
    snprintf(buf, sizeof buf, "12.%s", p->driver_version);
    return sim_copy_str(version, length, buf) == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (v == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    int major = atoi(p->driver_version);
    *v = major >= 570 ? 12080 : major >= 560 ? 12060 : major >= 550 ? 12040 : major >= 545 ? 12030
       : major >= 535 ? 12020 : major >= 525 ? 12000 : 11080;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

/* ---- handles ------------------------------------------------------------------------------------ */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)sim_vendor_count(p, SIM_VENDOR_NVIDIA);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= (unsigned int)sim_vendor_count(p, SIM_VENDOR_NVIDIA))
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_devices[index];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    int i = sim_vendor_find_uuid(p, SIM_VENDOR_NVIDIA, uuid);
    if (i < 0)
        return NVML_ERROR_NOT_FOUND;
    *device = &g_devices[i];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *busId, nvmlDevice_t *device) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (busId == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    int i = sim_vendor_find_pci(p, SIM_VENDOR_NVIDIA, busId);
    if (i < 0)
        return NVML_ERROR_NOT_FOUND;
    *device = &g_devices[i];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *busId, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByPciBusId_v2(busId, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned int *index) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (index == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)d->index;
    return NVML_SUCCESS;
}

/* ---- identity (answered even for a lost GPU, so it can be reported) ------------------------------ */

static nvmlReturn_t copy_out(nvmlDevice_t dev, char *buf, unsigned int len, int which) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (buf == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    const char *s = which == 0 ? d->model : which == 1 ? d->uuid : d->serial;
    if (which == 2 && s[0] == '\0')
        return NVML_ERROR_NOT_SUPPORTED;
    return sim_copy_str(buf, len, s) == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length) {
    return copy_out(dev, name, length, 0);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length) {
    return copy_out(dev, uuid, length, 1);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t dev, char *serial, unsigned int length) {
    return copy_out(dev, serial, length, 2);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t dev, unsigned int *minor) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (minor == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *minor = (unsigned int)d->minor;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (pci == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(d, pci);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetPciInfo_v3(dev, pci);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetPciInfo_v3(dev, pci);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t dev, unsigned int *node) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (node == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (d->numa_node < 0)
        return NVML_ERROR_NOT_SUPPORTED;
    *node = (unsigned int)d->numa_node;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t dev, int *major, int *minor) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 0, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (major == NULL || minor == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    const model_info_t *m = model_info(d);
    *major = m->cc_major;
    *minor = m->cc_minor;
    return NVML_SUCCESS;
}

/* ---- state (GPU_IS_LOST when the device is critical or lost) -------------------------------------- */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (m == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    m->total = d->memory_bytes;
    m->used = d->memory_used_bytes;
    m->free = d->memory_bytes - d->memory_used_bytes;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (m == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != NVML_MEMORY_V2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    /* Like the real driver: a small slice is reserved by the system and not counted as used. */
    uint64_t reserved = d->memory_bytes / 200; /* 0.5 % */
    if (reserved + d->memory_used_bytes > d->memory_bytes)
        reserved = d->memory_bytes - d->memory_used_bytes;
    m->total = d->memory_bytes;
    m->reserved = reserved;
    m->used = d->memory_used_bytes;
    m->free = d->memory_bytes - d->memory_used_bytes - reserved;
    return NVML_SUCCESS;
}

static int current_temperature(const sim_profile_t *p, const sim_device_t *d) {
    return sim_device_temperature(p, SIM_VENDOR_NVIDIA, d->index, WARNING_TEMPERATURE_C);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned int *temp) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (temp == NULL || sensor != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    int t = current_temperature(p, d);
    *temp = t < 0 ? 0u : (unsigned int)t;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t dev, nvmlTemperature_v1_t *t) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (t == NULL || t->sensorType != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (t->version != NVML_TEMPERATURE_V1)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    t->temperature = current_temperature(p, d);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *u) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (u == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = (unsigned int)d->utilization_pct;
    u->memory = d->memory_bytes ? (unsigned int)(d->memory_used_bytes * 100 / d->memory_bytes) : 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t dev, int errorType, int counterType,
                                                    unsigned long long *count) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (count == NULL || (errorType != 0 && errorType != 1) || (counterType != 0 && counterType != 1))
        return NVML_ERROR_INVALID_ARGUMENT;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_NVIDIA, d->index, &st);
    /* The simulator keeps one counter per kind: volatile and aggregate are the same. */
    *count = errorType == 0 ? st.ecc_single : st.ecc_double;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t dev1, nvmlDevice_t dev2, int *level) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    nvmlReturn_t r = resolve(dev1, 1, &p, &a);
    if (r != NVML_SUCCESS)
        return r;
    r = resolve(dev2, 1, &p, &b);
    if (r != NVML_SUCCESS)
        return r;
    if (level == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (a == b)
        *level = NVML_TOPOLOGY_INTERNAL;
    else if (a->numa_node >= 0 && a->numa_node == b->numa_node)
        *level = NVML_TOPOLOGY_NODE;
    else
        *level = NVML_TOPOLOGY_SYSTEM;
    return NVML_SUCCESS;
}

/* Link i of a device = i-th entry of its profile `links`; only nvlink entries are NVLinks. */
static nvmlReturn_t nvlink(nvmlDevice_t dev, unsigned int link, const sim_profile_t **pp, const sim_device_t **dp,
                           const sim_link_t **lp) {
    nvmlReturn_t r = resolve(dev, 1, pp, dp);
    if (r != NVML_SUCCESS)
        return r;
    if (link >= NVML_NVLINK_MAX_LINKS)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (link >= (unsigned int)(*dp)->nlinks || (*dp)->links[link].type != SIM_LINK_NVLINK)
        return NVML_ERROR_NOT_SUPPORTED;
    *lp = &(*dp)->links[link];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t dev, unsigned int link, int *isActive) {
    const sim_profile_t *p;
    const sim_device_t *d;
    const sim_link_t *l;
    nvmlReturn_t r = nvlink(dev, link, &p, &d, &l);
    if (r != NVML_SUCCESS)
        return r;
    if (isActive == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* A link to a lost peer is down; a link to an NVSwitch stays up. */
    *isActive = l->peer >= 0 && sim_device_health(p, SIM_VENDOR_NVIDIA, l->peer) == SIM_HEALTH_LOST ? 0 : 1;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t dev, unsigned int link,
                                                            nvmlPciInfo_t *pci) {
    const sim_profile_t *p;
    const sim_device_t *d;
    const sim_link_t *l;
    nvmlReturn_t r = nvlink(dev, link, &p, &d, &l);
    if (r != NVML_SUCCESS)
        return r;
    if (pci == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (l->sw >= 0)
        fill_switch_pci(&p->switches[l->sw], pci);
    else
        fill_pci(sim_vendor_device(p, SIM_VENDOR_NVIDIA, l->peer), pci);
    return NVML_SUCCESS;
}

/* What is at the far end of a link: a GPU, or (on HGX boards) an NVSwitch. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t dev, unsigned int link, int *type) {
    const sim_profile_t *p;
    const sim_device_t *d;
    const sim_link_t *l;
    nvmlReturn_t r = nvlink(dev, link, &p, &d, &l);
    if (r != NVML_SUCCESS)
        return r;
    if (type == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *type = l->sw >= 0 ? NVML_NVLINK_DEVICE_TYPE_SWITCH : NVML_NVLINK_DEVICE_TYPE_GPU;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo(nvmlDevice_t dev, unsigned int link, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetNvLinkRemotePciInfo_v2(dev, link, pci);
}

/* NVLink generation: 2 (V100, 300 GB/s), 3 (A100, 600), 4 (H100, 900), from the profile bandwidth. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkVersion(nvmlDevice_t dev, unsigned int link, unsigned int *version) {
    const sim_profile_t *p;
    const sim_device_t *d;
    const sim_link_t *l;
    nvmlReturn_t r = nvlink(dev, link, &p, &d, &l);
    if (r != NVML_SUCCESS)
        return r;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (l->version > 0)
        *version = (unsigned int)l->version;
    else
        *version = l->gbps >= 900 ? 4u : l->gbps >= 600 ? 3u : l->gbps >= 300 ? 2u : 1u;
    return NVML_SUCCESS;
}

/* ---- events ------------------------------------------------------------------------------------- */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t dev, unsigned long long *types) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (types == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *types = NVML_SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NVML_ERROR_MEMORY;
    s->magic = EVENT_SET_MAGIC;
    pthread_mutex_init(&s->lock, NULL);
    s->cursor = sim_event_cursor(p); /* only events appended from now on */
    *set = s;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t dev, unsigned long long types, nvmlEventSet_t set) {
    const sim_profile_t *p;
    const sim_device_t *d;
    nvmlReturn_t r = resolve(dev, 1, &p, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (set == NULL || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (types != 0 && (types & NVML_SUPPORTED_EVENTS) == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&set->lock);
    set->mask[d->index] |= types & NVML_SUPPORTED_EVENTS;
    pthread_mutex_unlock(&set->lock);
    return NVML_SUCCESS;
}

static unsigned long long event_type(const sim_event_t *ev) {
    switch (ev->kind) {
    case SIM_EVENT_XID: return NVML_EVENT_XID;
    case SIM_EVENT_ECC_SINGLE: return NVML_EVENT_SINGLE_BIT_ECC;
    case SIM_EVENT_ECC_DOUBLE: return NVML_EVENT_DOUBLE_BIT_ECC;
    }
    return 0;
}

/* Next matching event, or 0. Caller holds set->lock. */
static int next_event(const sim_profile_t *p, nvmlEventSet_t set, nvmlEventData_t *out) {
    sim_event_t ev;
    while (sim_events_next(p, &set->cursor, SIM_VENDOR_NVIDIA, &ev)) {
        unsigned long long t = event_type(&ev);
        if (ev.index < 0 || ev.index >= SIM_MAX_DEVICES || (set->mask[ev.index] & t) == 0)
            continue;
        out->device = &g_devices[ev.index];
        out->eventType = t;
        out->eventData = ev.kind == SIM_EVENT_XID ? ev.value : 0;
        out->gpuInstanceId = 0xFFFFFFFFu;
        out->computeInstanceId = 0xFFFFFFFFu;
        return 1;
    }
    return 0;
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL || set->magic != EVENT_SET_MAGIC || data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long deadline = sim_now_ms() + timeoutms;
    for (;;) {
        pthread_mutex_lock(&set->lock);
        int got = next_event(p, set, data);
        pthread_mutex_unlock(&set->lock);
        if (got)
            return NVML_SUCCESS;
        long long left = deadline - sim_now_ms();
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        sim_sleep_ms(left < NVML_POLL_MS ? (long)left : NVML_POLL_MS);
    }
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data, unsigned int timeoutms) {
    if (data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlEventData_t full;
    nvmlReturn_t r = nvmlEventSetWait_v2(set, &full, timeoutms);
    if (r == NVML_SUCCESS) {
        data->device = full.device;
        data->eventType = full.eventType;
        data->eventData = full.eventData;
    }
    return r;
}

SIM_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (profile() == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    set->magic = 0;
    pthread_mutex_destroy(&set->lock);
    free(set);
    return NVML_SUCCESS;
}

/* ---- sub-health signals (scenario directives in the fault file, driver/README.md) --------------- */

#define NVML_THROTTLE_SW_POWER_CAP 0x4ULL
#define NVML_THROTTLE_HW_SLOWDOWN 0x8ULL
#define NVML_THROTTLE_SW_THERMAL 0x20ULL
#define NVML_MAX_MEM_CLOCK_MHZ 1593

static nvmlReturn_t state_of(nvmlDevice_t dev, const sim_device_t **dp, sim_dev_state_t *st) {
    const sim_profile_t *p;
    nvmlReturn_t r = resolve(dev, 1, &p, dp);
    if (r != NVML_SUCCESS)
        return r;
    sim_device_state(p, SIM_VENDOR_NVIDIA, (*dp)->index, st);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t dev, unsigned int *value) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (value == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *value = (unsigned int)st.pcie_replays;
    return NVML_SUCCESS;
}

static nvmlReturn_t pcie_link(nvmlDevice_t dev, int current, int width, unsigned int *out) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (out == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    int nominal = width ? SIM_PCIE_MAX_WIDTH : SIM_PCIE_MAX_GEN;
    int cur = width ? st.pcie_width : st.pcie_gen;
    *out = (unsigned int)(current && cur > 0 ? cur : nominal);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t dev, unsigned int *w) { return pcie_link(dev, 1, 1, w); }
SIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t dev, unsigned int *w) { return pcie_link(dev, 0, 1, w); }
SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t dev, unsigned int *g) {
    return pcie_link(dev, 1, 0, g);
}
SIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t dev, unsigned int *g) {
    return pcie_link(dev, 0, 0, g);
}

/* The simulator keeps one fabric error count per device; it is reported on the device's first link. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t dev, unsigned int link, int counter,
                                                        unsigned long long *value) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (value == NULL || counter < 0 || counter > 4)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (link >= NVML_NVLINK_MAX_LINKS)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((int)link >= d->nlinks)
        return NVML_ERROR_NOT_SUPPORTED;
    *value = 0;
    if (link == 0 && counter == 2) /* NVML_NVLINK_ERROR_DL_CRC_FLIT */
        *value = st.link_crc;
    else if (link == 0 && counter == 1) /* NVML_NVLINK_ERROR_DL_RECOVERY */
        *value = st.link_recovery;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t dev, unsigned long long *reasons) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (reasons == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long out = 0;
    if (st.throttle & SIM_THROTTLE_POWER)
        out |= NVML_THROTTLE_SW_POWER_CAP;
    if (st.throttle & SIM_THROTTLE_THERMAL)
        out |= NVML_THROTTLE_SW_THERMAL;
    if (st.throttle & SIM_THROTTLE_HW_SLOWDOWN)
        out |= NVML_THROTTLE_HW_SLOWDOWN;
    *reasons = out;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t dev, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(dev, reasons);
}

static nvmlReturn_t clock_info(nvmlDevice_t dev, int type, int current, unsigned int *clock) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (clock == NULL || type < 0 || type > 3)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int max = type == 2 ? NVML_MAX_MEM_CLOCK_MHZ : SIM_MAX_CLOCK_MHZ;
    *clock = current && (type == 0 || type == 1) ? max * (unsigned int)st.clock_pct / 100u : max;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    return clock_info(dev, type, 1, clock);
}
SIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    return clock_info(dev, type, 0, clock);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t dev, unsigned int *corrRows, unsigned int *uncRows,
                                                  unsigned int *isPending, unsigned int *failureOccurred) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *corrRows = st.retired_pages;
    *uncRows = st.ecc_double > 0 ? 1u : 0u;
    *isPending = st.remap_pending ? 1u : 0u;
    *failureOccurred = 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t dev, int *isPending) {
    const sim_device_t *d;
    sim_dev_state_t st;
    nvmlReturn_t r = state_of(dev, &d, &st);
    if (r != NVML_SUCCESS)
        return r;
    if (isPending == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *isPending = st.remap_pending ? 1 : 0;
    return NVML_SUCCESS;
}
