/*
 * Simulated Hygon ROCm-SMI (librocm_smi64.so.2). dv_ind = vendor-local index of the hygon devices.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_faults.h"
#include "sim_profile.h"
#include "sim_util.h"

typedef enum {
    RSMI_STATUS_SUCCESS = 0,
    RSMI_STATUS_INVALID_ARGS = 1,
    RSMI_STATUS_NOT_SUPPORTED = 2,
    RSMI_STATUS_FILE_ERROR = 3,
    RSMI_STATUS_PERMISSION = 4,
    RSMI_STATUS_OUT_OF_RESOURCES = 5,
    RSMI_STATUS_INTERNAL_EXCEPTION = 6,
    RSMI_STATUS_INPUT_OUT_OF_BOUNDS = 7,
    RSMI_STATUS_INIT_ERROR = 8,
    RSMI_STATUS_NOT_YET_IMPLEMENTED = 9,
    RSMI_STATUS_NOT_FOUND = 10,
    RSMI_STATUS_INSUFFICIENT_SIZE = 11,
    RSMI_STATUS_INTERRUPT = 12,
    RSMI_STATUS_UNEXPECTED_SIZE = 13,
    RSMI_STATUS_NO_DATA = 14,
    RSMI_STATUS_UNEXPECTED_DATA = 15,
    RSMI_STATUS_BUSY = 16,
    RSMI_STATUS_REFCOUNT_OVERFLOW = 17
} rsmi_status_t;

#define RSMI_IOLINK_TYPE_PCIEXPRESS 1
#define RSMI_IOLINK_TYPE_XGMI 2
#define RSMI_MEM_TYPE_VRAM 0
#define RSMI_MEM_TYPE_VIS_VRAM 1
#define RSMI_MEM_TYPE_GTT 2
#define RSMI_TEMP_CURRENT 0
#define RSMI_GPU_BLOCK_UMC 0x1ULL
#define RSMI_EVT_NOTIF_VMFAULT 1
#define RSMI_EVT_NOTIF_THERMAL_THROTTLE 2
#define RSMI_EVT_NOTIF_GPU_PRE_RESET 3
#define RSMI_EVT_NOTIF_GPU_POST_RESET 4
#define MAX_EVENT_NOTIFICATION_MSG_SIZE 64
#define WARNING_TEMPERATURE_C 90
#define RSMI_POLL_MS 20

typedef struct {
    uint64_t correctable_err;
    uint64_t uncorrectable_err;
} rsmi_error_count_t;

typedef struct {
    uint32_t dv_ind;
    int event; /* rsmi_evt_notification_type_t */
    char message[MAX_EVENT_NOTIFICATION_MSG_SIZE];
} rsmi_evt_notification_data_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_refcount;
static const sim_profile_t *g_profile;
/* Event notification (rsmi_event_notification_*): per-device mask + one shared cursor. */
static int g_evt_active[SIM_MAX_DEVICES];
static uint64_t g_evt_mask[SIM_MAX_DEVICES];
static uint64_t g_evt_cursor;
static int g_evt_cursor_set;

static const sim_profile_t *profile(void) {
    pthread_mutex_lock(&g_lock);
    const sim_profile_t *p = g_refcount > 0 ? g_profile : NULL;
    pthread_mutex_unlock(&g_lock);
    return p;
}

static rsmi_status_t resolve(uint32_t dv, int state, const sim_profile_t **pp, const sim_device_t **dp) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return RSMI_STATUS_INIT_ERROR;
    const sim_device_t *d = dv < SIM_MAX_DEVICES ? sim_vendor_device(p, SIM_VENDOR_HYGON, (int)dv) : NULL;
    if (d == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    if (state && sim_device_health(p, SIM_VENDOR_HYGON, d->index) == SIM_HEALTH_LOST)
        return RSMI_STATUS_NOT_FOUND;
    *pp = p;
    *dp = d;
    return RSMI_STATUS_SUCCESS;
}

#define RESOLVE(dv, state)                                                                                         \
    const sim_profile_t *p;                                                                                        \
    const sim_device_t *d;                                                                                         \
    do {                                                                                                           \
        rsmi_status_t r_ = resolve((dv), (state), &p, &d);                                                         \
        if (r_ != RSMI_STATUS_SUCCESS)                                                                             \
            return r_;                                                                                             \
    } while (0)

static uint64_t fnv64(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Unique id: the profile uuid "0x<16 hex>" as a number; any other uuid is hashed. */
static uint64_t unique_id(const sim_device_t *d) {
    if (strncmp(d->uuid, "0x", 2) == 0 && strlen(d->uuid) <= 18) {
        char *end;
        unsigned long long v = strtoull(d->uuid + 2, &end, 16);
        if (*end == '\0' && end != d->uuid + 2)
            return v;
    }
    return fnv64(d->uuid);
}

SIM_EXPORT rsmi_status_t rsmi_init(uint64_t init_flags) {
    (void)init_flags;
    const sim_profile_t *p;
    if (sim_profile_load(&p, NULL, 0) != 0) {
        const char *env = getenv(SIM_ENV_PROFILE);
        return (env == NULL || env[0] == '\0') ? RSMI_STATUS_FILE_ERROR : RSMI_STATUS_INIT_ERROR;
    }
    pthread_mutex_lock(&g_lock);
    g_profile = p;
    g_refcount++;
    pthread_mutex_unlock(&g_lock);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_shut_down(void) {
    pthread_mutex_lock(&g_lock);
    rsmi_status_t r = RSMI_STATUS_SUCCESS;
    if (g_refcount == 0)
        r = RSMI_STATUS_INIT_ERROR;
    else
        g_refcount--;
    pthread_mutex_unlock(&g_lock);
    return r;
}

SIM_EXPORT rsmi_status_t rsmi_status_string(rsmi_status_t status, const char **str) {
    if (str == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    switch ((unsigned int)status) {
    case RSMI_STATUS_SUCCESS: *str = "RSMI_STATUS_SUCCESS: The function has been executed successfully."; break;
    case RSMI_STATUS_INVALID_ARGS: *str = "RSMI_STATUS_INVALID_ARGS: The provided arguments do not meet the preconditions required for the input."; break;
    case RSMI_STATUS_NOT_SUPPORTED: *str = "RSMI_STATUS_NOT_SUPPORTED: This function is not supported in the current environment."; break;
    case RSMI_STATUS_FILE_ERROR: *str = "RSMI_STATUS_FILE_ERROR: There was an error in finding or opening a file or directory."; break;
    case RSMI_STATUS_PERMISSION: *str = "RSMI_STATUS_PERMISSION: The user ID of the calling process does not have sufficient permission."; break;
    case RSMI_STATUS_OUT_OF_RESOURCES: *str = "RSMI_STATUS_OUT_OF_RESOURCES: Unable to acquire memory or other resource"; break;
    case RSMI_STATUS_INTERNAL_EXCEPTION: *str = "RSMI_STATUS_INTERNAL_EXCEPTION: An internal exception was caught"; break;
    case RSMI_STATUS_INPUT_OUT_OF_BOUNDS: *str = "RSMI_STATUS_INPUT_OUT_OF_BOUNDS: The provided input is out of allowable or safe range"; break;
    case RSMI_STATUS_INIT_ERROR: *str = "RSMI_STATUS_INIT_ERROR: An error occurred during initialization, during monitor discovery or when when initializing internal data structures"; break;
    case RSMI_STATUS_NOT_YET_IMPLEMENTED: *str = "RSMI_STATUS_NOT_YET_IMPLEMENTED: The called function has not been implemented in this system for this device type"; break;
    case RSMI_STATUS_NOT_FOUND: *str = "RSMI_STATUS_NOT_FOUND: An item required to complete the call was not found"; break;
    case RSMI_STATUS_INSUFFICIENT_SIZE: *str = "RSMI_STATUS_INSUFFICIENT_SIZE: Not enough resources were available to fully execute the call"; break;
    case RSMI_STATUS_INTERRUPT: *str = "RSMI_STATUS_INTERRUPT: An interrupt occurred while executing the function"; break;
    case RSMI_STATUS_UNEXPECTED_SIZE: *str = "RSMI_STATUS_UNEXPECTED_SIZE: Data (usually from reading a file) was out of range from what was expected"; break;
    case RSMI_STATUS_NO_DATA: *str = "RSMI_STATUS_NO_DATA: No data was found for a given input"; break;
    case RSMI_STATUS_UNEXPECTED_DATA: *str = "RSMI_STATUS_UNEXPECTED_DATA: The data read or provided to function is not what was expected"; break;
    case RSMI_STATUS_BUSY: *str = "RSMI_STATUS_BUSY: A resource or mutex could not be acquired because it is already being used"; break;
    case RSMI_STATUS_REFCOUNT_OVERFLOW: *str = "RSMI_STATUS_REFCOUNT_OVERFLOW: An internal reference counter exceeded INT32_MAX"; break;
    default: *str = "RSMI_STATUS_UNKNOWN_ERROR: An unknown error occurred"; return RSMI_STATUS_INVALID_ARGS;
    }
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_num_monitor_devices(uint32_t *num_devices) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return RSMI_STATUS_INIT_ERROR;
    if (num_devices == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *num_devices = (uint32_t)sim_vendor_count(p, SIM_VENDOR_HYGON);
    return RSMI_STATUS_SUCCESS;
}

/* ---- identity (answered even for a lost device) ------------------------------------------------- */

SIM_EXPORT rsmi_status_t rsmi_dev_name_get(uint32_t dv_ind, char *name, size_t len) {
    RESOLVE(dv_ind, 0);
    if (name == NULL || len == 0)
        return RSMI_STATUS_INVALID_ARGS;
    if (sim_copy_str(name, len, d->model) != 0) {
        /* Real library truncates and reports INSUFFICIENT_SIZE. */
        memcpy(name, d->model, len - 1);
        name[len - 1] = '\0';
        return RSMI_STATUS_INSUFFICIENT_SIZE;
    }
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_serial_number_get(uint32_t dv_ind, char *serial_num, uint32_t len) {
    RESOLVE(dv_ind, 0);
    if (serial_num == NULL || len == 0)
        return RSMI_STATUS_INVALID_ARGS;
    if (d->serial[0] == '\0')
        return RSMI_STATUS_NOT_SUPPORTED;
    return sim_copy_str(serial_num, len, d->serial) == 0 ? RSMI_STATUS_SUCCESS : RSMI_STATUS_INSUFFICIENT_SIZE;
}

SIM_EXPORT rsmi_status_t rsmi_dev_unique_id_get(uint32_t dv_ind, uint64_t *id) {
    RESOLVE(dv_ind, 0);
    if (id == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *id = unique_id(d);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_id_get(uint32_t dv_ind, uint16_t *id) {
    RESOLVE(dv_ind, 0);
    if (id == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *id = sim_contains(d->model, "K100_AI") || sim_contains(d->model, "K100-AI") ? 0x6320
        : sim_contains(d->model, "K100")                                          ? 0x6310
        : sim_contains(d->model, "Z100")                                          ? 0x6210
                                                                                  : 0x6500;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_vendor_id_get(uint32_t dv_ind, uint16_t *id) {
    RESOLVE(dv_ind, 0);
    (void)d;
    if (id == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *id = 0x1d94;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_pci_id_get(uint32_t dv_ind, uint64_t *bdfid) {
    RESOLVE(dv_ind, 0);
    if (bdfid == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *bdfid = ((uint64_t)d->pci_domain << 32) | ((uint64_t)d->pci_bus << 8) | ((uint64_t)d->pci_device << 3) |
             (uint64_t)d->pci_function;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_topo_get_numa_node_number(uint32_t dv_ind, uint32_t *numa_node) {
    RESOLVE(dv_ind, 0);
    if (numa_node == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    if (d->numa_node < 0)
        return RSMI_STATUS_NOT_SUPPORTED;
    *numa_node = (uint32_t)d->numa_node;
    return RSMI_STATUS_SUCCESS;
}

/* ---- state (NOT_FOUND for a lost device) --------------------------------------------------------- */

SIM_EXPORT rsmi_status_t rsmi_dev_memory_total_get(uint32_t dv_ind, int mem_type, uint64_t *total) {
    RESOLVE(dv_ind, 1);
    if (total == NULL || mem_type < RSMI_MEM_TYPE_VRAM || mem_type > RSMI_MEM_TYPE_GTT)
        return RSMI_STATUS_INVALID_ARGS;
    *total = mem_type == RSMI_MEM_TYPE_GTT ? (uint64_t)64 << 30 : d->memory_bytes;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_memory_usage_get(uint32_t dv_ind, int mem_type, uint64_t *used) {
    RESOLVE(dv_ind, 1);
    if (used == NULL || mem_type < RSMI_MEM_TYPE_VRAM || mem_type > RSMI_MEM_TYPE_GTT)
        return RSMI_STATUS_INVALID_ARGS;
    *used = mem_type == RSMI_MEM_TYPE_GTT ? 0 : d->memory_used_bytes;
    return RSMI_STATUS_SUCCESS;
}

static const sim_link_t *xgmi_link(const sim_device_t *a, int peer) {
    for (int k = 0; k < a->nlinks; k++)
        if (a->links[k].peer == peer && a->links[k].type == SIM_LINK_XGMI)
            return &a->links[k];
    return NULL;
}

static rsmi_status_t pair(uint32_t src, uint32_t dst, const sim_profile_t **pp, const sim_device_t **a,
                          const sim_device_t **b) {
    rsmi_status_t r = resolve(src, 1, pp, a);
    if (r != RSMI_STATUS_SUCCESS)
        return r;
    r = resolve(dst, 1, pp, b);
    if (r != RSMI_STATUS_SUCCESS)
        return r;
    return *a == *b ? RSMI_STATUS_INVALID_ARGS : RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_topo_get_link_type(uint32_t src, uint32_t dst, uint64_t *hops, int *type) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    rsmi_status_t r = pair(src, dst, &p, &a, &b);
    if (r != RSMI_STATUS_SUCCESS)
        return r;
    if (hops == NULL || type == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    if (xgmi_link(a, b->index) != NULL || xgmi_link(b, a->index) != NULL) {
        *hops = 1;
        *type = RSMI_IOLINK_TYPE_XGMI;
    } else {
        *hops = a->numa_node >= 0 && a->numa_node == b->numa_node ? 2 : 3;
        *type = RSMI_IOLINK_TYPE_PCIEXPRESS;
    }
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_topo_get_link_weight(uint32_t src, uint32_t dst, uint64_t *weight) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    rsmi_status_t r = pair(src, dst, &p, &a, &b);
    if (r != RSMI_STATUS_SUCCESS)
        return r;
    if (weight == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    if (xgmi_link(a, b->index) != NULL || xgmi_link(b, a->index) != NULL)
        *weight = 15;
    else
        *weight = a->numa_node >= 0 && a->numa_node == b->numa_node ? 40 : 72;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_is_P2P_accessible(uint32_t src, uint32_t dst, bool *accessible) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    rsmi_status_t r = pair(src, dst, &p, &a, &b);
    if (r != RSMI_STATUS_SUCCESS)
        return r;
    if (accessible == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *accessible = xgmi_link(a, b->index) != NULL || xgmi_link(b, a->index) != NULL ||
                  (a->numa_node >= 0 && a->numa_node == b->numa_node);
    return RSMI_STATUS_SUCCESS;
}

/* Hive id: devices joined (transitively) by xGMI share one id, derived from the member with the
 * lowest index; a device without xGMI links reports 0. */
SIM_EXPORT rsmi_status_t rsmi_dev_xgmi_hive_id_get(uint32_t dv_ind, uint64_t *hive_id) {
    RESOLVE(dv_ind, 1);
    if (hive_id == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    int n = sim_vendor_count(p, SIM_VENDOR_HYGON);
    int seen[SIM_MAX_DEVICES] = {0};
    int queue[SIM_MAX_DEVICES];
    int head = 0, tail = 0, lowest = d->index, any = 0;
    seen[d->index] = 1;
    queue[tail++] = d->index;
    while (head < tail) {
        const sim_device_t *x = sim_vendor_device(p, SIM_VENDOR_HYGON, queue[head++]);
        for (int j = 0; j < n; j++) {
            const sim_device_t *y = sim_vendor_device(p, SIM_VENDOR_HYGON, j);
            if (seen[j] || (xgmi_link(x, j) == NULL && xgmi_link(y, x->index) == NULL))
                continue;
            seen[j] = 1;
            any = 1;
            queue[tail++] = j;
            if (j < lowest)
                lowest = j;
        }
    }
    *hive_id = any ? (unique_id(sim_vendor_device(p, SIM_VENDOR_HYGON, lowest)) ^ 0x68697665ULL) : 0;
    return RSMI_STATUS_SUCCESS;
}

/* xGMI errors since the last rsmi_dev_xgmi_error_reset: 0 none, 1 one (RSMI_XGMI_STATUS_ERROR),
 * 2 several (RSMI_XGMI_STATUS_MULTIPLE_ERRORS). */
static pthread_mutex_t g_xgmi_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_xgmi_baseline[SIM_MAX_DEVICES];

static int xgmi_status_since_reset(const sim_profile_t *p, int index) {
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, index, &st);
    uint64_t errors = st.link_crc + st.link_recovery;
    pthread_mutex_lock(&g_xgmi_lock);
    if (errors < g_xgmi_baseline[index]) /* the fault file was rewritten */
        g_xgmi_baseline[index] = 0;
    uint64_t n = errors - g_xgmi_baseline[index];
    pthread_mutex_unlock(&g_xgmi_lock);
    return n == 0 ? 0 : n == 1 ? 1 : 2;
}

SIM_EXPORT rsmi_status_t rsmi_dev_xgmi_error_reset(uint32_t dv_ind) {
    RESOLVE(dv_ind, 1);
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    pthread_mutex_lock(&g_xgmi_lock);
    g_xgmi_baseline[d->index] = st.link_crc + st.link_recovery;
    pthread_mutex_unlock(&g_xgmi_lock);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_xgmi_error_status(uint32_t dv_ind, int *status) {
    RESOLVE(dv_ind, 1);
    if (status == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *status = sim_device_health(p, SIM_VENDOR_HYGON, d->index) == SIM_HEALTH_CRITICAL ? 1 : 0;
    if (*status == 0)
        *status = xgmi_status_since_reset(p, d->index);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_temp_metric_get(uint32_t dv_ind, uint32_t sensor_type, int metric,
                                                  int64_t *temperature) {
    RESOLVE(dv_ind, 1);
    if (temperature == NULL || sensor_type > 6)
        return RSMI_STATUS_INVALID_ARGS;
    if (metric != RSMI_TEMP_CURRENT)
        return RSMI_STATUS_NOT_SUPPORTED;
    *temperature = (int64_t)sim_device_temperature(p, SIM_VENDOR_HYGON, d->index, WARNING_TEMPERATURE_C) * 1000;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_busy_percent_get(uint32_t dv_ind, uint32_t *busy_percent) {
    RESOLVE(dv_ind, 1);
    if (busy_percent == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    *busy_percent = (uint32_t)d->utilization_pct;
    return RSMI_STATUS_SUCCESS;
}

/* ECC counters live on the UMC (memory controller) block; other blocks report zero. A device in
 * the critical state reports at least one uncorrectable error. */
SIM_EXPORT rsmi_status_t rsmi_dev_ecc_count_get(uint32_t dv_ind, uint64_t block, rsmi_error_count_t *ec) {
    RESOLVE(dv_ind, 1);
    if (ec == NULL || block == 0 || (block & (block - 1)) != 0)
        return RSMI_STATUS_INVALID_ARGS;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    ec->correctable_err = 0;
    ec->uncorrectable_err = 0;
    if (block == RSMI_GPU_BLOCK_UMC) {
        ec->correctable_err = st.ecc_single;
        ec->uncorrectable_err = st.ecc_double;
        if (st.health == SIM_HEALTH_CRITICAL && ec->uncorrectable_err == 0)
            ec->uncorrectable_err = 1;
    }
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_power_ave_get(uint32_t dv_ind, uint32_t sensor_ind, uint64_t *power) {
    RESOLVE(dv_ind, 1);
    if (power == NULL || sensor_ind > 0)
        return RSMI_STATUS_INVALID_ARGS;
    *power = (uint64_t)(150 + 3 * d->utilization_pct) * 1000000ULL; /* microwatts */
    return RSMI_STATUS_SUCCESS;
}

/* ---- event notification --------------------------------------------------------------------------
 * Uncorrectable ECC lines of the fault file raise GPU_PRE_RESET (the amdgpu RAS reaction) on devices
 * whose mask includes it; mask bit for event e is 1 << (e - 1). */

SIM_EXPORT rsmi_status_t rsmi_event_notification_init(uint32_t dv_ind) {
    RESOLVE(dv_ind, 1);
    pthread_mutex_lock(&g_lock);
    if (!g_evt_cursor_set) {
        g_evt_cursor = sim_event_cursor(p);
        g_evt_cursor_set = 1;
    }
    g_evt_active[d->index] = 1;
    pthread_mutex_unlock(&g_lock);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_event_notification_mask_set(uint32_t dv_ind, uint64_t mask) {
    RESOLVE(dv_ind, 1);
    pthread_mutex_lock(&g_lock);
    rsmi_status_t r = RSMI_STATUS_SUCCESS;
    if (!g_evt_active[d->index])
        r = RSMI_STATUS_INIT_ERROR;
    else
        g_evt_mask[d->index] = mask;
    pthread_mutex_unlock(&g_lock);
    return r;
}

SIM_EXPORT rsmi_status_t rsmi_event_notification_stop(uint32_t dv_ind) {
    RESOLVE(dv_ind, 0);
    pthread_mutex_lock(&g_lock);
    g_evt_active[d->index] = 0;
    g_evt_mask[d->index] = 0;
    pthread_mutex_unlock(&g_lock);
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_event_notification_get(int timeout_ms, uint32_t *num_elem,
                                                     rsmi_evt_notification_data_t *data) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return RSMI_STATUS_INIT_ERROR;
    if (num_elem == NULL || data == NULL || *num_elem == 0)
        return RSMI_STATUS_INVALID_ARGS;
    uint32_t cap = *num_elem;
    long long deadline = sim_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        uint32_t n = 0;
        pthread_mutex_lock(&g_lock);
        sim_event_t ev;
        while (n < cap && g_evt_cursor_set && sim_events_next(p, &g_evt_cursor, SIM_VENDOR_HYGON, &ev)) {
            if (ev.kind != SIM_EVENT_ECC_DOUBLE || ev.index < 0 || ev.index >= SIM_MAX_DEVICES ||
                !g_evt_active[ev.index] || (g_evt_mask[ev.index] & (1ULL << (RSMI_EVT_NOTIF_GPU_PRE_RESET - 1))) == 0)
                continue;
            memset(&data[n], 0, sizeof data[n]);
            data[n].dv_ind = (uint32_t)ev.index;
            data[n].event = RSMI_EVT_NOTIF_GPU_PRE_RESET;
            snprintf(data[n].message, sizeof data[n].message, "uncorrectable ECC error x%llu", ev.value);
            n++;
        }
        pthread_mutex_unlock(&g_lock);
        if (n > 0) {
            *num_elem = n;
            return RSMI_STATUS_SUCCESS;
        }
        long long left = deadline - sim_now_ms();
        if (left <= 0) {
            *num_elem = 0;
            return RSMI_STATUS_NO_DATA;
        }
        sim_sleep_ms(left < RSMI_POLL_MS ? (long)left : RSMI_POLL_MS);
    }
}

/* ---- sub-health signals (scenario directives in the fault file, driver/README.md) --------------- */

#define RSMI_MAX_NUM_FREQUENCIES 32
#define RSMI_SCLK_MAX_MHZ 1500

typedef struct {
    uint32_t num_supported;
    uint32_t current;
    uint64_t frequency[RSMI_MAX_NUM_FREQUENCIES];
} rsmi_frequencies_t;

typedef struct {
    rsmi_frequencies_t transfer_rate;
    uint32_t lanes[RSMI_MAX_NUM_FREQUENCIES];
} rsmi_pcie_bandwidth_t;

typedef struct {
    uint64_t page_address;
    uint64_t page_size;
    int status; /* rsmi_memory_page_status_t: 0 RESERVED, 1 PENDING, 2 UNRESERVABLE */
} rsmi_retired_page_record_t;

enum { RSMI_CLK_TYPE_SYS = 0, RSMI_CLK_TYPE_DF = 1, RSMI_CLK_TYPE_DCEF = 2, RSMI_CLK_TYPE_SOC = 3,
       RSMI_CLK_TYPE_MEM = 4 };

SIM_EXPORT rsmi_status_t rsmi_dev_pci_replay_counter_get(uint32_t dv_ind, uint64_t *counter) {
    RESOLVE(dv_ind, 1);
    if (counter == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    *counter = st.pcie_replays;
    return RSMI_STATUS_SUCCESS;
}

/* Supported link rates: Gen1..Gen4 at x16 (2.5/5/8/16 GT/s, in T/s as ROCm-SMI reports them);
 * `current` is the index of the link's current rate, lanes[i] its width. */
SIM_EXPORT rsmi_status_t rsmi_dev_pci_bandwidth_get(uint32_t dv_ind, rsmi_pcie_bandwidth_t *bw) {
    RESOLVE(dv_ind, 1);
    if (bw == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    static const uint64_t rates[SIM_PCIE_MAX_GEN] = {2500000000ULL, 5000000000ULL, 8000000000ULL, 16000000000ULL};
    memset(bw, 0, sizeof *bw);
    bw->transfer_rate.num_supported = SIM_PCIE_MAX_GEN;
    for (int i = 0; i < SIM_PCIE_MAX_GEN; i++) {
        bw->transfer_rate.frequency[i] = rates[i];
        bw->lanes[i] = SIM_PCIE_MAX_WIDTH;
    }
    int gen = st.pcie_gen > 0 ? st.pcie_gen : SIM_PCIE_MAX_GEN;
    bw->transfer_rate.current = (uint32_t)(gen - 1);
    if (st.pcie_width > 0)
        bw->lanes[gen - 1] = (uint32_t)st.pcie_width;
    return RSMI_STATUS_SUCCESS;
}

/* System clock levels: 500 MHz .. RSMI_SCLK_MAX_MHZ in 8 steps; `current` is the level closest to
 * the simulated clock. */
SIM_EXPORT rsmi_status_t rsmi_dev_gpu_clk_freq_get(uint32_t dv_ind, int clk_type, rsmi_frequencies_t *f) {
    RESOLVE(dv_ind, 1);
    if (f == NULL || clk_type < 0 || clk_type > RSMI_CLK_TYPE_MEM)
        return RSMI_STATUS_INVALID_ARGS;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    memset(f, 0, sizeof *f);
    const int levels = 9;
    f->num_supported = (uint32_t)levels;
    for (int i = 0; i < levels; i++)
        f->frequency[i] = (uint64_t)(500 + (RSMI_SCLK_MAX_MHZ - 500) * i / (levels - 1)) * 1000000ULL;
    if (clk_type != RSMI_CLK_TYPE_SYS) {
        f->current = (uint32_t)(levels - 1);
        return RSMI_STATUS_SUCCESS;
    }
    uint64_t want = (uint64_t)RSMI_SCLK_MAX_MHZ * (uint64_t)st.clock_pct / 100u * 1000000ULL;
    uint32_t best = 0;
    for (int i = 0; i < levels; i++)
        if (f->frequency[i] <= want)
            best = (uint32_t)i;
    f->current = best;
    return RSMI_STATUS_SUCCESS;
}

SIM_EXPORT rsmi_status_t rsmi_dev_memory_reserved_pages_get(uint32_t dv_ind, uint32_t *num_pages,
                                                            rsmi_retired_page_record_t *records) {
    RESOLVE(dv_ind, 1);
    if (num_pages == NULL)
        return RSMI_STATUS_INVALID_ARGS;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_HYGON, d->index, &st);
    uint32_t total = st.retired_pages + (st.remap_pending ? 1u : 0u);
    if (records == NULL) {
        *num_pages = total;
        return RSMI_STATUS_SUCCESS;
    }
    uint32_t n = total < *num_pages ? total : *num_pages;
    for (uint32_t i = 0; i < n; i++) {
        records[i].page_address = 0x100000000ULL + (uint64_t)i * 4096u;
        records[i].page_size = 4096;
        records[i].status = i < st.retired_pages ? 0 : 1;
    }
    *num_pages = n;
    return n < total ? RSMI_STATUS_INSUFFICIENT_SIZE : RSMI_STATUS_SUCCESS;
}
