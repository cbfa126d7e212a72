/*
 * Simulated Cambricon CNDev (libcndev.so). Device handle = vendor-local index.
 * Versioned (V1) structs must carry version 1..6 (callers use CNDEV_VERSION_6); "V2" structs have none.
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

typedef int cndevRet_t;
enum {
    CNDEV_SUCCESS = 0,
    CNDEV_ERROR_NO_DRIVER = 1,
    CNDEV_ERROR_LOW_DRIVER_VERSION = 2,
    CNDEV_ERROR_UNSUPPORTED_API_VERSION = 3,
    CNDEV_ERROR_UNINITIALIZED = 4,
    CNDEV_ERROR_INVALID_ARGUMENT = 5,
    CNDEV_ERROR_INVALID_DEVICE_ID = 6,
    CNDEV_ERROR_UNKNOWN = 7,
    CNDEV_ERROR_MALLOC = 8,
    CNDEV_ERROR_INSUFFICIENT_SPACE = 9,
    CNDEV_ERROR_NOT_SUPPORTED = 10,
    CNDEV_ERROR_INVALID_LINK = 11,
    CNDEV_ERROR_NO_DEVICES = 12,
    CNDEV_ERROR_NO_PERMISSION = 13,
    CNDEV_ERROR_NOT_FOUND = 14,
    CNDEV_ERROR_IN_USE = 15,
    CNDEV_ERROR_DUPLICATE = 16,
    CNDEV_ERROR_TIMEOUT = 17,
    CNDEV_ERROR_IN_PROBLEM = 18
};

typedef int32_t cndevDevice_t;
#define CNDEV_UUID_SIZE 37
#define CNDEV_MAX_VERSION 6
#define WARNING_TEMPERATURE_C 90

/* Relationship (cndevTopologyRelationshipEnum_t). */
enum { CN_SELF = 0, CN_INTERNAL = 1, CN_SINGLE = 2, CN_MULTIPLE = 3, CN_HOST_BRIDGE = 4, CN_CPU = 5, CN_SYSTEM = 6 };
/* Card name ids (cndevNameEnum_t). */
enum { CN_MLU270 = 1, CN_MLU290 = 20, CN_MLU370 = 23, CN_MLU365 = 24, CN_MLU590 = 26, CN_MLU580 = 30 };

typedef struct {
    int32_t version;
    uint32_t number;
} cndevCardInfo_t;

typedef struct {
    int32_t version;
    int id;
} cndevCardName_t;

typedef struct {
    int32_t version;
    uint64_t sn;
    uint64_t motherBoardSn;
} cndevCardSN_t;

typedef struct {
    int32_t version;
    uint8_t uuid[CNDEV_UUID_SIZE];
    uint64_t ncsUUID64;
} cndevUUID_t;

typedef struct {
    uint32_t subsystemId;
    uint32_t deviceId;
    uint16_t vendor;
    uint16_t subsystemVendor;
    uint32_t domain;
    uint32_t bus;
    uint32_t device;
    uint32_t function;
    uint16_t moduleId;
    uint16_t slotId;
    uint32_t reserved[8];
} cndevPCIeInfoV2_t;

typedef struct {
    int64_t physicalMemoryTotal; /* MB */
    int64_t physicalMemoryUsed;
    int64_t reservedMemory;
    int64_t virtualMemoryTotal;
    int64_t virtualMemoryUsed;
    uint64_t globalMemory;
    uint64_t reserved[16];
} cndevMemoryInfoV2_t;

typedef struct {
    int32_t version;
    int32_t nodeId;
} cndevNUMANodeId_t;

typedef struct {
    int32_t version;
    int relation;
} cndevTopologyRelationship_t;

typedef struct {
    int macState;    /* 0 down, 1 up, 2 lldp, 3 ready */
    int serdesState; /* 0 disable, 1 enable, 2 ongoing */
    int presenceState;
    uint32_t serdesProgress;
    uint32_t reserved[7];
} cndevMLULinkStatusV2_t;

typedef struct {
    int32_t version;
    uint64_t mcSn;
    uint64_t baSn;
    uint32_t slotId;
    uint32_t portId;
    uint8_t devIp[16];
    uint8_t uuid[CNDEV_UUID_SIZE];
    uint32_t devIpVersion;
    uint32_t isIpValid;
    int32_t connectType;
    uint64_t ncsUUID64;
    uint8_t mac_addr[6];
    char port_name[256];
} cndevMLULinkRemoteInfo_t;

typedef struct {
    int32_t version;
    int32_t health;
    int deviceState; /* 1 GOOD, 0 IN_PROBLEM */
    int driverState; /* 4 RUNNING */
} cndevCardHealthState_t;

typedef struct {
    int32_t version;
    int32_t board;
    int32_t cluster[20];
    int32_t memoryDie[8];
    int32_t chip;
    int32_t airInlet;
    int32_t airOutlet;
    int32_t memory;
    int32_t videoInput;
    int32_t cpu;
    int32_t isp;
} cndevTemperatureInfo_t;

typedef struct {
    int32_t version;
    int32_t averageCoreUtilization;
    int32_t coreUtilization[80];
} cndevUtilizationInfo_t;

typedef struct {
    int32_t version;
    uint64_t oneBitError;
    uint64_t multipleOneError;
    uint64_t multipleError;
    uint64_t multipleMultipleError;
    uint64_t correctedError;
    uint64_t uncorrectedError;
    uint64_t totalError;
    uint64_t addressForbiddenError;
} cndevECCInfo_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static const sim_profile_t *g_profile;

static const sim_profile_t *profile(void) {
    pthread_mutex_lock(&g_lock);
    const sim_profile_t *p = g_initialized ? g_profile : NULL;
    pthread_mutex_unlock(&g_lock);
    return p;
}

static cndevRet_t resolve(cndevDevice_t h, int state, const sim_profile_t **pp, const sim_device_t **dp) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return CNDEV_ERROR_UNINITIALIZED;
    const sim_device_t *d = sim_vendor_device(p, SIM_VENDOR_CAMBRICON, h);
    if (d == NULL)
        return CNDEV_ERROR_INVALID_DEVICE_ID;
    if (state && sim_device_health(p, SIM_VENDOR_CAMBRICON, d->index) == SIM_HEALTH_LOST)
        return CNDEV_ERROR_INVALID_DEVICE_ID;
    *pp = p;
    *dp = d;
    return CNDEV_SUCCESS;
}

#define RESOLVE(h, state)                                                                                          \
    const sim_profile_t *p;                                                                                        \
    const sim_device_t *d;                                                                                         \
    do {                                                                                                           \
        cndevRet_t r_ = resolve((h), (state), &p, &d);                                                             \
        if (r_ != CNDEV_SUCCESS)                                                                                   \
            return r_;                                                                                             \
    } while (0)

#define CHECK_VERSION(s)                                                                                           \
    do {                                                                                                           \
        if ((s) == NULL)                                                                                           \
            return CNDEV_ERROR_INVALID_ARGUMENT;                                                                   \
        if ((s)->version < 1 || (s)->version > CNDEV_MAX_VERSION)                                                  \
            return CNDEV_ERROR_UNSUPPORTED_API_VERSION;                                                            \
    } while (0)

static uint64_t fnv64(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The bare uuid CNDev reports: the profile uuid without its "MLU-" prefix, at most 36 characters. */
static void bare_uuid(const sim_device_t *d, uint8_t out[CNDEV_UUID_SIZE]) {
    const char *u = strncmp(d->uuid, "MLU-", 4) == 0 ? d->uuid + 4 : d->uuid;
    size_t n = strlen(u);
    if (n > CNDEV_UUID_SIZE - 1)
        n = CNDEV_UUID_SIZE - 1;
    memset(out, 0, CNDEV_UUID_SIZE);
    memcpy(out, u, n);
}

static uint64_t serial_number(const sim_device_t *d) {
    if (d->serial[0] != '\0') {
        char *end;
        unsigned long long v = strtoull(d->serial, &end, 16);
        if (*end == '\0')
            return v;
        return fnv64(d->serial);
    }
    return fnv64(d->uuid) & 0xFFFFFFFFFFULL;
}

static int card_id(const char *model) {
    if (sim_contains(model, "MLU370"))
        return CN_MLU370;
    if (sim_contains(model, "MLU590"))
        return CN_MLU590;
    if (sim_contains(model, "MLU580"))
        return CN_MLU580;
    if (sim_contains(model, "MLU365"))
        return CN_MLU365;
    if (sim_contains(model, "MLU290"))
        return CN_MLU290;
    return CN_MLU270;
}

SIM_EXPORT cndevRet_t cndevInit(int32_t reserved) {
    (void)reserved;
    const sim_profile_t *p;
    if (sim_profile_load(&p, NULL, 0) != 0) {
        const char *env = getenv(SIM_ENV_PROFILE);
        return (env == NULL || env[0] == '\0') ? CNDEV_ERROR_NO_DRIVER : CNDEV_ERROR_UNKNOWN;
    }
    pthread_mutex_lock(&g_lock);
    g_profile = p;
    g_initialized = 1;
    pthread_mutex_unlock(&g_lock);
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevRelease(void) {
    pthread_mutex_lock(&g_lock);
    g_initialized = 0;
    pthread_mutex_unlock(&g_lock);
    return CNDEV_SUCCESS;
}

SIM_EXPORT const char *cndevGetErrorString(cndevRet_t r) {
    switch (r) {
    case CNDEV_SUCCESS: return "CNDEV_SUCCESS";
    case CNDEV_ERROR_NO_DRIVER: return "CNDEV_ERROR_NO_DRIVER";
    case CNDEV_ERROR_LOW_DRIVER_VERSION: return "CNDEV_ERROR_LOW_DRIVER_VERSION";
    case CNDEV_ERROR_UNSUPPORTED_API_VERSION: return "CNDEV_ERROR_UNSUPPORTED_API_VERSION";
    case CNDEV_ERROR_UNINITIALIZED: return "CNDEV_ERROR_UNINITIALIZED";
    case CNDEV_ERROR_INVALID_ARGUMENT: return "CNDEV_ERROR_INVALID_ARGUMENT";
    case CNDEV_ERROR_INVALID_DEVICE_ID: return "CNDEV_ERROR_INVALID_DEVICE_ID";
    case CNDEV_ERROR_UNKNOWN: return "CNDEV_ERROR_UNKNOWN";
    case CNDEV_ERROR_MALLOC: return "CNDEV_ERROR_MALLOC";
    case CNDEV_ERROR_INSUFFICIENT_SPACE: return "CNDEV_ERROR_INSUFFICIENT_SPACE";
    case CNDEV_ERROR_NOT_SUPPORTED: return "CNDEV_ERROR_NOT_SUPPORTED";
    case CNDEV_ERROR_INVALID_LINK: return "CNDEV_ERROR_INVALID_LINK";
    case CNDEV_ERROR_NO_DEVICES: return "CNDEV_ERROR_NO_DEVICES";
    case CNDEV_ERROR_NO_PERMISSION: return "CNDEV_ERROR_NO_PERMISSION";
    case CNDEV_ERROR_NOT_FOUND: return "CNDEV_ERROR_NOT_FOUND";
    case CNDEV_ERROR_IN_USE: return "CNDEV_ERROR_IN_USE";
    case CNDEV_ERROR_DUPLICATE: return "CNDEV_ERROR_DUPLICATE";
    case CNDEV_ERROR_TIMEOUT: return "CNDEV_ERROR_TIMEOUT";
    case CNDEV_ERROR_IN_PROBLEM: return "CNDEV_ERROR_IN_PROBLEM";
    default: return "CNDEV_ERROR_UNKNOWN";
    }
}

SIM_EXPORT cndevRet_t cndevGetDeviceCount(cndevCardInfo_t *cardNum) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return CNDEV_ERROR_UNINITIALIZED;
    CHECK_VERSION(cardNum);
    cardNum->number = (uint32_t)sim_vendor_count(p, SIM_VENDOR_CAMBRICON);
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetDeviceHandleByIndex(int32_t index, cndevDevice_t *handle) {
    RESOLVE(index, 0);
    if (handle == NULL)
        return CNDEV_ERROR_INVALID_ARGUMENT;
    *handle = d->index;
    return CNDEV_SUCCESS;
}

/* ---- identity (answered even for a lost device) ---------------------------------------------- */

SIM_EXPORT cndevRet_t cndevGetCardName(cndevCardName_t *cardName, cndevDevice_t h) {
    RESOLVE(h, 0);
    CHECK_VERSION(cardName);
    cardName->id = card_id(d->model);
    return CNDEV_SUCCESS;
}

SIM_EXPORT const char *cndevGetCardNameStringByDevId(cndevDevice_t h) {
    const sim_profile_t *p;
    const sim_device_t *d;
    if (resolve(h, 0, &p, &d) != CNDEV_SUCCESS)
        return "Unknown";
    return d->model; /* profiles are never freed: the pointer stays valid */
}

SIM_EXPORT cndevRet_t cndevGetCardSN(cndevCardSN_t *sn, cndevDevice_t h) {
    RESOLVE(h, 0);
    CHECK_VERSION(sn);
    sn->sn = serial_number(d);
    sn->motherBoardSn = 0x3723000000ULL + (uint64_t)(d->index / 2); /* two chips per MLU370-X8 card */
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetUUID(cndevUUID_t *uuid, cndevDevice_t h) {
    RESOLVE(h, 0);
    CHECK_VERSION(uuid);
    bare_uuid(d, uuid->uuid);
    uuid->ncsUUID64 = fnv64(d->uuid);
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetPCIeInfoV2(cndevPCIeInfoV2_t *pci, cndevDevice_t h) {
    RESOLVE(h, 0);
    if (pci == NULL)
        return CNDEV_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    pci->vendor = 0xcabc;
    pci->subsystemVendor = 0xcabc;
    pci->deviceId = card_id(d->model) == CN_MLU590 ? 0x0590 : 0x0370;
    pci->subsystemId = 0x0012;
    pci->domain = d->pci_domain;
    pci->bus = d->pci_bus;
    pci->device = d->pci_device;
    pci->function = d->pci_function;
    pci->moduleId = 0;
    pci->slotId = (uint16_t)d->index;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetNUMANodeIdByDevId(cndevNUMANodeId_t *numa, cndevDevice_t h) {
    RESOLVE(h, 0);
    CHECK_VERSION(numa);
    numa->nodeId = d->numa_node;
    return CNDEV_SUCCESS;
}

/* ---- state (INVALID_DEVICE_ID for a lost device) ------------------------------------------------- */

SIM_EXPORT cndevRet_t cndevGetMemoryUsageV2(cndevMemoryInfoV2_t *mem, cndevDevice_t h) {
    RESOLVE(h, 1);
    if (mem == NULL)
        return CNDEV_ERROR_INVALID_ARGUMENT;
    memset(mem, 0, sizeof *mem);
    mem->physicalMemoryTotal = (int64_t)(d->memory_bytes >> 20);
    mem->physicalMemoryUsed = (int64_t)(d->memory_used_bytes >> 20);
    mem->reservedMemory = 0;
    mem->virtualMemoryTotal = (int64_t)(d->memory_bytes >> 20);
    mem->virtualMemoryUsed = (int64_t)(d->memory_used_bytes >> 20);
    mem->globalMemory = 0;
    return CNDEV_SUCCESS;
}

static const sim_link_t *nth_mlulink(const sim_device_t *d, int n) {
    for (int k = 0; k < d->nlinks; k++)
        if (d->links[k].type == SIM_LINK_MLULINK && n-- == 0)
            return &d->links[k];
    return NULL;
}

static int mlulink_count(const sim_device_t *d) {
    int n = 0;
    for (int k = 0; k < d->nlinks; k++)
        n += d->links[k].type == SIM_LINK_MLULINK;
    return n;
}

SIM_EXPORT cndevRet_t cndevTopologyGetRelationship(cndevTopologyRelationship_t *rel, cndevDevice_t h1,
                                                   cndevDevice_t h2) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    cndevRet_t r = resolve(h1, 1, &p, &a);
    if (r != CNDEV_SUCCESS)
        return r;
    r = resolve(h2, 1, &p, &b);
    if (r != CNDEV_SUCCESS)
        return r;
    CHECK_VERSION(rel);
    if (a == b)
        rel->relation = CN_SELF;
    else if (a->numa_node >= 0 && a->numa_node == b->numa_node)
        rel->relation = CN_CPU;
    else
        rel->relation = CN_SYSTEM;
    return CNDEV_SUCCESS;
}

/* Port i = i-th mlulink entry of the device's profile links. */
SIM_EXPORT int32_t cndevGetMLULinkPortNumber(cndevDevice_t h) {
    const sim_profile_t *p;
    const sim_device_t *d;
    if (resolve(h, 1, &p, &d) != CNDEV_SUCCESS)
        return 0;
    return mlulink_count(d);
}

SIM_EXPORT cndevRet_t cndevGetMLULinkStatusV2(cndevMLULinkStatusV2_t *st, cndevDevice_t h, int32_t link) {
    RESOLVE(h, 1);
    if (st == NULL)
        return CNDEV_ERROR_INVALID_ARGUMENT;
    const sim_link_t *l = nth_mlulink(d, link);
    if (link < 0 || l == NULL)
        return mlulink_count(d) == 0 ? CNDEV_ERROR_NOT_SUPPORTED : CNDEV_ERROR_INVALID_LINK;
    memset(st, 0, sizeof *st);
    int up = sim_device_health(p, SIM_VENDOR_CAMBRICON, l->peer) != SIM_HEALTH_LOST;
    st->macState = up ? 1 : 0;
    st->serdesState = up ? 1 : 0;
    st->presenceState = 1;
    st->serdesProgress = up ? 1000 : 0;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetMLULinkRemoteInfo(cndevMLULinkRemoteInfo_t *ri, cndevDevice_t h, int32_t link) {
    RESOLVE(h, 1);
    CHECK_VERSION(ri);
    const sim_link_t *l = nth_mlulink(d, link);
    if (link < 0 || l == NULL)
        return mlulink_count(d) == 0 ? CNDEV_ERROR_NOT_SUPPORTED : CNDEV_ERROR_INVALID_LINK;
    const sim_device_t *peer = sim_vendor_device(p, SIM_VENDOR_CAMBRICON, l->peer);
    int32_t version = ri->version;
    memset(ri, 0, sizeof *ri);
    ri->version = version;
    ri->mcSn = serial_number(peer);
    ri->baSn = serial_number(peer);
    ri->slotId = (uint32_t)peer->index;
    /* Remote port: the peer's link back to us, else 0. */
    for (int k = 0, n = 0; k < peer->nlinks; k++) {
        if (peer->links[k].type != SIM_LINK_MLULINK)
            continue;
        if (peer->links[k].peer == d->index) {
            ri->portId = (uint32_t)n;
            break;
        }
        n++;
    }
    bare_uuid(peer, ri->uuid);
    ri->ncsUUID64 = fnv64(peer->uuid);
    ri->connectType = 0;
    snprintf(ri->port_name, sizeof ri->port_name, "mlu%d-port%u", peer->index, ri->portId);
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetCardHealthState(cndevCardHealthState_t *hs, cndevDevice_t h) {
    RESOLVE(h, 1);
    CHECK_VERSION(hs);
    int bad = sim_device_health(p, SIM_VENDOR_CAMBRICON, d->index) == SIM_HEALTH_CRITICAL;
    hs->health = bad ? 0 : 1;
    hs->deviceState = bad ? 0 : 1;
    hs->driverState = 4;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetTemperatureInfo(cndevTemperatureInfo_t *ti, cndevDevice_t h) {
    RESOLVE(h, 1);
    CHECK_VERSION(ti);
    int t = sim_device_temperature(p, SIM_VENDOR_CAMBRICON, d->index, WARNING_TEMPERATURE_C);
    int32_t version = ti->version;
    memset(ti, 0, sizeof *ti);
    ti->version = version;
    ti->board = t;
    ti->chip = t;
    ti->cluster[0] = t;
    ti->memory = t - 2;
    ti->airInlet = 25;
    ti->airOutlet = 40;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetDeviceUtilizationInfo(cndevUtilizationInfo_t *ui, cndevDevice_t h) {
    RESOLVE(h, 1);
    CHECK_VERSION(ui);
    int32_t version = ui->version;
    memset(ui, 0, sizeof *ui);
    ui->version = version;
    ui->averageCoreUtilization = d->utilization_pct;
    for (int i = 0; i < 8; i++)
        ui->coreUtilization[i] = d->utilization_pct;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetECCInfo(cndevECCInfo_t *ecc, cndevDevice_t h) {
    RESOLVE(h, 1);
    CHECK_VERSION(ecc);
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_CAMBRICON, d->index, &st);
    int32_t version = ecc->version;
    memset(ecc, 0, sizeof *ecc);
    ecc->version = version;
    ecc->oneBitError = st.ecc_single;
    ecc->multipleError = st.ecc_double;
    ecc->correctedError = st.ecc_single;
    ecc->uncorrectedError = st.ecc_double;
    ecc->totalError = st.ecc_single + st.ecc_double;
    return CNDEV_SUCCESS;
}

/* ---- sub-health signals (scenario directives in the fault file, driver/README.md) --------------- */

#define CNDEV_MLU_CLUSTER_FREQUENCY_COUNT 20
#define CNDEV_BOARD_MAX_MHZ 1300

typedef struct {
    int32_t version;
    uint32_t counter;
} cndevPcieReplayCounter_t;

typedef struct {
    int32_t version;
    int32_t currentSpeed;
    int32_t currentWidth;
} cndevCurrentPCIInfo_t;

typedef struct {
    int32_t version;
    int32_t maxSpeed;
    int32_t maxWidth;
} cndevPCIInfo_t;

typedef struct {
    uint64_t correctFecCnt;
    uint64_t uncorrectFecCnt;
    uint64_t rxBadFcsPkt;
    uint64_t txBadFcsPkt;
    uint64_t illegalAccessCnt;
    uint64_t reserved[11];
} cndevMLULinkErrorCounter_t;

typedef struct {
    int32_t version;
    int tdp, powerSetting, clockSetting, frequencyLocked, powerBrake, thermalSlowdown; /* 0 disable, 1 enable */
} cndevPerformanceThrottleReason_t;

typedef struct {
    int32_t version;
    int32_t boardFreq;
    int32_t ddrFreq;
    uint8_t overtempDfsFlag;
    uint8_t fastDfsFlag;
    uint16_t mluClusterFreqCount;
    uint16_t mluClusterFreq[CNDEV_MLU_CLUSTER_FREQUENCY_COUNT];
    int32_t boardDefaultFreq;
    int32_t boardFreqArange[2];
} cndevFrequencyInfo_t;

typedef struct {
    int32_t version;
    uint32_t isPending;
    uint32_t isFailure;
} cndevRetiredPageStatus_t;

typedef struct {
    int32_t version;
    uint32_t correctRows;
    uint32_t uncorrectRows;
    uint32_t pendingRows;
    uint32_t failedRows;
} cndevRemappedRow_t;

#define STATE_OF(h)                                                                                                \
    RESOLVE(h, 1);                                                                                                 \
    sim_dev_state_t st;                                                                                            \
    sim_device_state(p, SIM_VENDOR_CAMBRICON, d->index, &st)

SIM_EXPORT cndevRet_t cndevGetPcieReplayCounter(cndevPcieReplayCounter_t *rc, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(rc);
    rc->counter = (uint32_t)st.pcie_replays;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetCurrentPCIInfo(cndevCurrentPCIInfo_t *ci, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(ci);
    ci->currentSpeed = st.pcie_gen > 0 ? st.pcie_gen : SIM_PCIE_MAX_GEN;
    ci->currentWidth = st.pcie_width > 0 ? st.pcie_width : SIM_PCIE_MAX_WIDTH;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetMaxPCIInfo(cndevPCIInfo_t *mi, cndevDevice_t h) {
    RESOLVE(h, 1);
    (void)d;
    CHECK_VERSION(mi);
    mi->maxSpeed = SIM_PCIE_MAX_GEN;
    mi->maxWidth = SIM_PCIE_MAX_WIDTH;
    return CNDEV_SUCCESS;
}

/* The simulator keeps one fabric error count per device, reported on link 0: CRC errors as packets
 * received with a bad FCS, recoveries as uncorrected FEC codewords. */
SIM_EXPORT cndevRet_t cndevGetMLULinkErrorCounter(cndevMLULinkErrorCounter_t *ec, cndevDevice_t h, int link) {
    STATE_OF(h);
    if (ec == NULL || link < 0)
        return CNDEV_ERROR_INVALID_ARGUMENT;
    if (link >= d->nlinks)
        return CNDEV_ERROR_INVALID_LINK;
    memset(ec, 0, sizeof *ec);
    if (link == 0) {
        ec->rxBadFcsPkt = st.link_crc;
        ec->uncorrectFecCnt = st.link_recovery;
    }
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetPerformanceThrottleReason(cndevPerformanceThrottleReason_t *tr, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(tr);
    tr->tdp = (st.throttle & SIM_THROTTLE_POWER) != 0;
    tr->powerSetting = 0;
    tr->clockSetting = 0;
    tr->frequencyLocked = 0;
    tr->powerBrake = (st.throttle & SIM_THROTTLE_HW_SLOWDOWN) != 0;
    tr->thermalSlowdown = (st.throttle & SIM_THROTTLE_THERMAL) != 0;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetFrequencyInfo(cndevFrequencyInfo_t *fi, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(fi);
    int32_t version = fi->version;
    memset(fi, 0, sizeof *fi);
    fi->version = version;
    fi->boardFreq = CNDEV_BOARD_MAX_MHZ * st.clock_pct / 100;
    fi->ddrFreq = 3200;
    fi->overtempDfsFlag = (st.throttle & SIM_THROTTLE_THERMAL) != 0;
    fi->boardDefaultFreq = CNDEV_BOARD_MAX_MHZ;
    fi->boardFreqArange[0] = 400;
    fi->boardFreqArange[1] = CNDEV_BOARD_MAX_MHZ;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetRetiredPagesStatus(cndevRetiredPageStatus_t *rs, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(rs);
    rs->isPending = st.remap_pending ? 1u : 0u;
    rs->isFailure = 0;
    return CNDEV_SUCCESS;
}

SIM_EXPORT cndevRet_t cndevGetRemappedRows(cndevRemappedRow_t *rr, cndevDevice_t h) {
    STATE_OF(h);
    CHECK_VERSION(rr);
    rr->correctRows = st.retired_pages;
    rr->uncorrectRows = st.ecc_double > 0 ? 1u : 0u;
    rr->pendingRows = st.remap_pending ? 1u : 0u;
    rr->failedRows = 0;
    return CNDEV_SUCCESS;
}
