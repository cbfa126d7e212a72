/*
 * Simulated Ascend DCMI (libdcmi.so). One chip per card: card_id = vendor-local index, device_id = 0,
 * logic id = index, physical id = the profile's `minor` (/dev/davinci<phy id>).
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

#define DCMI_OK 0
#define DCMI_ERR_CODE_INVALID_PARAMETER (-8001)
#define DCMI_ERR_CODE_INNER_ERR (-8005)
#define DCMI_ERR_CODE_INVALID_DEVICE_ID (-8007)
#define DCMI_ERR_CODE_DEVICE_NOT_EXIST (-8008)
#define DCMI_ERR_CODE_NOT_REDAY (-8012)
#define DCMI_ERR_CODE_NOT_SUPPORT (-8255)

/* Topology (gpustack pydcmi, current driver). */
#define DCMI_TOPO_TYPE_SELF 0
#define DCMI_TOPO_TYPE_SYS 1
#define DCMI_TOPO_TYPE_PHB 2
#define DCMI_TOPO_TYPE_HCCS 3

#define DCMI_HCCS_MAX_PCS_NUM 16
#define WARNING_TEMPERATURE_C 90

struct dcmi_chip_info {
    unsigned char chip_type[32];
    unsigned char chip_name[32];
    unsigned char chip_ver[32];
    unsigned int aicore_cnt;
};

struct dcmi_chip_info_v2 {
    unsigned char chip_type[32];
    unsigned char chip_name[32];
    unsigned char chip_ver[32];
    unsigned int aicore_cnt;
    unsigned char npu_name[32];
};

struct dcmi_pcie_info_all {
    unsigned int venderid;
    unsigned int subvenderid;
    unsigned int deviceid;
    unsigned int subdeviceid;
    int domain;
    unsigned int bdf_busid;
    unsigned int bdf_deviceid;
    unsigned int bdf_funcid;
    unsigned char reserve[32];
};

struct dcmi_die_id {
    unsigned int soc_die[5];
};

struct dcmi_get_memory_info_stru {
    unsigned long long memory_size;      /* MB */
    unsigned long long memory_available; /* MB */
    unsigned int freq;
    unsigned long hugepagesize;          /* KB */
    unsigned long hugepages_total;
    unsigned long hugepages_free;
    unsigned int utiliza;
    unsigned char reserve[60];
};

struct dcmi_hbm_info {
    unsigned long long memory_size;  /* MB */
    unsigned int freq;
    unsigned long long memory_usage; /* MB */
    int temp;
    unsigned int bandwith_util_rate;
};

struct dcmi_ecc_info {
    int enable_flag;
    unsigned int single_bit_error_cnt;
    unsigned int double_bit_error_cnt;
    unsigned int total_single_bit_error_cnt;
    unsigned int total_double_bit_error_cnt;
    unsigned int single_bit_isolated_pages_cnt;
    unsigned int double_bit_isolated_pages_cnt;
    unsigned int single_bit_next_isolated_pages_cnt;
    unsigned int double_bit_next_isolated_pages_cnt;
};

struct dcmi_hccs_bandwidth_info {
    int profiling_time;
    double total_txbw;
    double total_rxbw;
    double tx_bandwidth[DCMI_HCCS_MAX_PCS_NUM];
    double rx_bandwidth[DCMI_HCCS_MAX_PCS_NUM];
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static const sim_profile_t *g_profile;

static const sim_profile_t *profile(void) {
    pthread_mutex_lock(&g_lock);
    const sim_profile_t *p = g_profile;
    pthread_mutex_unlock(&g_lock);
    return p;
}

/* Resolve (card, device). With `state`, a lost device answers INVALID_DEVICE_ID. */
static int resolve(int card_id, int device_id, int state, const sim_profile_t **pp, const sim_device_t **dp) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return DCMI_ERR_CODE_NOT_REDAY;
    const sim_device_t *d = device_id == 0 ? sim_vendor_device(p, SIM_VENDOR_ASCEND, card_id) : NULL;
    if (d == NULL)
        return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    if (state && sim_device_health(p, SIM_VENDOR_ASCEND, d->index) == SIM_HEALTH_LOST)
        return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    *pp = p;
    *dp = d;
    return DCMI_OK;
}

#define RESOLVE(card, dev, state)                                                                                  \
    const sim_profile_t *p;                                                                                        \
    const sim_device_t *d;                                                                                         \
    do {                                                                                                           \
        int r_ = resolve((card), (dev), (state), &p, &d);                                                          \
        if (r_ != DCMI_OK)                                                                                         \
            return r_;                                                                                             \
    } while (0)

static unsigned int aicore_count(const char *model) {
    if (sim_contains(model, "910B1") || sim_contains(model, "910B2"))
        return 24;
    if (sim_contains(model, "910B"))
        return 20;
    if (sim_contains(model, "910"))
        return 30;
    if (sim_contains(model, "310P"))
        return 8;
    return 20;
}

SIM_EXPORT int dcmi_init(void) {
    const sim_profile_t *p;
    if (sim_profile_load(&p, NULL, 0) != 0) {
        const char *env = getenv(SIM_ENV_PROFILE);
        return (env == NULL || env[0] == '\0') ? DCMI_ERR_CODE_DEVICE_NOT_EXIST : DCMI_ERR_CODE_INNER_ERR;
    }
    pthread_mutex_lock(&g_lock);
    g_profile = p;
    pthread_mutex_unlock(&g_lock);
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_card_list(int *card_num, int *card_list, int list_len) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return DCMI_ERR_CODE_NOT_REDAY;
    if (card_num == NULL || card_list == NULL || list_len < 0)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    int n = sim_vendor_count(p, SIM_VENDOR_ASCEND);
    if (list_len < n)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    for (int i = 0; i < n; i++)
        card_list[i] = i;
    *card_num = n;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_card_num_list(int *card_num, int *card_list, int list_len) {
    return dcmi_get_card_list(card_num, card_list, list_len);
}

SIM_EXPORT int dcmi_get_device_num_in_card(int card_id, int *device_num) {
    RESOLVE(card_id, 0, 0);
    (void)d;
    if (device_num == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *device_num = 1;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_logic_id(int *device_logic_id, int card_id, int device_id) {
    RESOLVE(card_id, device_id, 0);
    if (device_logic_id == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *device_logic_id = d->index;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_phyid_from_logicid(unsigned int logicid, unsigned int *phyid) {
    RESOLVE((int)logicid, 0, 0);
    if (phyid == NULL || logicid > INT32_MAX)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *phyid = (unsigned int)d->minor;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_logicid_from_phyid(unsigned int phyid, unsigned int *logicid) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return DCMI_ERR_CODE_NOT_REDAY;
    if (logicid == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    int n = sim_vendor_count(p, SIM_VENDOR_ASCEND);
    for (int i = 0; i < n; i++) {
        if ((unsigned int)sim_vendor_device(p, SIM_VENDOR_ASCEND, i)->minor == phyid) {
            *logicid = (unsigned int)i;
            return DCMI_OK;
        }
    }
    return DCMI_ERR_CODE_INVALID_DEVICE_ID;
}

SIM_EXPORT int dcmi_get_card_id_device_id_from_logicid(int *card_id, int *device_id, unsigned int logic_id) {
    RESOLVE((int)logic_id, 0, 0);
    if (card_id == NULL || device_id == NULL || logic_id > INT32_MAX)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *card_id = d->index;
    *device_id = 0;
    return DCMI_OK;
}

static void copy_fixed(unsigned char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memset(dst, 0, cap);
    memcpy(dst, src, n);
}

static void fill_chip(const sim_device_t *d, unsigned char *type, unsigned char *name, unsigned char *ver,
                      unsigned int *aicore) {
    memset(type, 0, 32);
    memset(name, 0, 32);
    memset(ver, 0, 32);
    snprintf((char *)type, 32, "Ascend");
    copy_fixed(name, 32, d->model);
    snprintf((char *)ver, 32, "V1");
    *aicore = aicore_count(d->model);
}

SIM_EXPORT int dcmi_get_device_chip_info(int card_id, int device_id, struct dcmi_chip_info *chip_info) {
    RESOLVE(card_id, device_id, 0);
    if (chip_info == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    fill_chip(d, chip_info->chip_type, chip_info->chip_name, chip_info->chip_ver, &chip_info->aicore_cnt);
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_chip_info_v2(int card_id, int device_id, struct dcmi_chip_info_v2 *chip_info) {
    RESOLVE(card_id, device_id, 0);
    if (chip_info == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    fill_chip(d, chip_info->chip_type, chip_info->chip_name, chip_info->chip_ver, &chip_info->aicore_cnt);
    copy_fixed(chip_info->npu_name, sizeof chip_info->npu_name, d->model);
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_product_type(int card_id, int device_id, char *product_type_str, int buf_size) {
    RESOLVE(card_id, device_id, 0);
    if (product_type_str == NULL || buf_size <= 0)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    const char *t = sim_contains(d->model, "910B") ? "Atlas 800T A2"
                  : sim_contains(d->model, "310P") ? "Atlas 300I Pro"
                                                    : "Atlas 800";
    return sim_copy_str(product_type_str, (size_t)buf_size, t) == 0 ? DCMI_OK : DCMI_ERR_CODE_INVALID_PARAMETER;
}

/* Die id: the profile uuid "XXXXXXXX-XXXXXXXX-XXXXXXXX-XXXXXXXX-XXXXXXXX" read as 5 words; any other
 * uuid is hashed (FNV-1a) into the 5 words. */
SIM_EXPORT int dcmi_get_device_die_v2(int card_id, int device_id, int die_type, struct dcmi_die_id *die) {
    RESOLVE(card_id, device_id, 0);
    if (die == NULL || (die_type != 0 && die_type != 1))
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    unsigned int w[5];
    if (strlen(d->uuid) == 44 &&
        sscanf(d->uuid, "%8x-%8x-%8x-%8x-%8x", &w[0], &w[1], &w[2], &w[3], &w[4]) == 5) {
        memcpy(die->soc_die, w, sizeof w);
    } else {
        uint32_t h = 2166136261u;
        for (int k = 0; k < 5; k++) {
            for (const char *s = d->uuid; *s != '\0'; s++)
                h = (h ^ (unsigned char)*s) * 16777619u;
            die->soc_die[k] = h;
        }
    }
    if (die_type == 1)
        die->soc_die[4] ^= 0x1u; /* VDIE differs from NDIE */
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_pcie_info_v2(int card_id, int device_id, struct dcmi_pcie_info_all *pcie_info) {
    RESOLVE(card_id, device_id, 0);
    if (pcie_info == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    memset(pcie_info, 0, sizeof *pcie_info);
    pcie_info->venderid = 0x19e5;
    pcie_info->subvenderid = 0x0200;
    pcie_info->deviceid = sim_contains(d->model, "910B") ? 0xd802 : sim_contains(d->model, "310P") ? 0xd500 : 0xd801;
    pcie_info->subdeviceid = 0x0100;
    pcie_info->domain = (int)d->pci_domain;
    pcie_info->bdf_busid = d->pci_bus;
    pcie_info->bdf_deviceid = d->pci_device;
    pcie_info->bdf_funcid = d->pci_function;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_pcie_info(int card_id, int device_id, struct dcmi_pcie_info_all *pcie_info) {
    return dcmi_get_device_pcie_info_v2(card_id, device_id, pcie_info);
}

SIM_EXPORT int dcmi_get_device_memory_info_v3(int card_id, int device_id, struct dcmi_get_memory_info_stru *mem) {
    RESOLVE(card_id, device_id, 1);
    if (mem == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    memset(mem, 0, sizeof *mem);
    mem->memory_size = d->memory_bytes >> 20;
    mem->memory_available = (d->memory_bytes - d->memory_used_bytes) >> 20;
    mem->freq = 1600;
    mem->hugepagesize = 2048;
    mem->utiliza = (unsigned int)(d->memory_used_bytes * 100 / d->memory_bytes);
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *hbm) {
    RESOLVE(card_id, device_id, 1);
    if (hbm == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    memset(hbm, 0, sizeof *hbm);
    hbm->memory_size = d->memory_bytes >> 20;
    hbm->freq = 1600;
    hbm->memory_usage = d->memory_used_bytes >> 20;
    hbm->temp = d->temperature_c;
    hbm->bandwith_util_rate = 0;
    return DCMI_OK;
}

/* CPUs of the device's NUMA node, assuming 48 cores per node ("0-47", "48-95"); "" when unknown. */
SIM_EXPORT int dcmi_get_affinity_cpu_info_by_device_id(int card_id, int device_id, char *affinity_cpu, int *length) {
    RESOLVE(card_id, device_id, 0);
    if (affinity_cpu == NULL || length == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    char buf[32] = "";
    if (d->numa_node >= 0)
        snprintf(buf, sizeof buf, "%d-%d", d->numa_node * 48, d->numa_node * 48 + 47);
    memcpy(affinity_cpu, buf, strlen(buf) + 1);
    *length = (int)strlen(buf);
    return DCMI_OK;
}

static int has_link(const sim_device_t *a, int peer) {
    for (int k = 0; k < a->nlinks; k++)
        if (a->links[k].peer == peer && a->links[k].type == SIM_LINK_HCCS)
            return 1;
    return 0;
}

SIM_EXPORT int dcmi_get_topo_info_by_device_id(int card1, int dev1, int card2, int dev2, int *topo_type) {
    const sim_profile_t *p;
    const sim_device_t *a, *b;
    int r = resolve(card1, dev1, 1, &p, &a);
    if (r != DCMI_OK)
        return r;
    r = resolve(card2, dev2, 1, &p, &b);
    if (r != DCMI_OK)
        return r;
    if (topo_type == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    if (a == b)
        *topo_type = DCMI_TOPO_TYPE_SELF;
    else if (has_link(a, b->index) || has_link(b, a->index))
        *topo_type = DCMI_TOPO_TYPE_HCCS;
    else if (a->numa_node >= 0 && a->numa_node == b->numa_node)
        *topo_type = DCMI_TOPO_TYPE_PHB;
    else
        *topo_type = DCMI_TOPO_TYPE_SYS;
    return DCMI_OK;
}

/* The simulator reports each HCCS link's capacity (profile gbps) as its measured bandwidth. */
SIM_EXPORT int dcmi_get_hccs_link_bandwidth_info(int card_id, int device_id, struct dcmi_hccs_bandwidth_info *bw) {
    RESOLVE(card_id, device_id, 1);
    if (bw == NULL || bw->profiling_time < 1 || bw->profiling_time > 1000)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    int t = bw->profiling_time;
    memset(bw, 0, sizeof *bw);
    bw->profiling_time = t;
    int n = 0;
    for (int k = 0; k < d->nlinks && n < DCMI_HCCS_MAX_PCS_NUM; k++) {
        if (d->links[k].type != SIM_LINK_HCCS)
            continue;
        bw->tx_bandwidth[n] = d->links[k].gbps;
        bw->rx_bandwidth[n] = d->links[k].gbps;
        bw->total_txbw += d->links[k].gbps;
        bw->total_rxbw += d->links[k].gbps;
        n++;
    }
    if (n == 0)
        return DCMI_ERR_CODE_NOT_SUPPORT;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_health(int card_id, int device_id, unsigned int *health) {
    RESOLVE(card_id, device_id, 1);
    if (health == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    switch (sim_device_health(p, SIM_VENDOR_ASCEND, d->index)) {
    case SIM_HEALTH_OK: *health = 0; break;
    case SIM_HEALTH_WARNING: *health = 1; break;
    case SIM_HEALTH_CRITICAL: *health = 3; break;
    case SIM_HEALTH_LOST: return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    }
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_network_health(int card_id, int device_id, int *result) {
    RESOLVE(card_id, device_id, 1);
    (void)d;
    if (result == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *result = 0; /* DCMI_RDFX_DETECT_OK */
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_errorcode_v2(int card_id, int device_id, int *error_count,
                                            unsigned int *error_code_list, unsigned int list_len) {
    RESOLVE(card_id, device_id, 1);
    if (error_count == NULL || (error_code_list == NULL && list_len > 0))
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_ASCEND, d->index, &st);
    unsigned int n = (unsigned int)st.nerrorcodes;
    if (n > list_len)
        n = list_len;
    for (unsigned int k = 0; k < n; k++)
        error_code_list[k] = st.errorcodes[k];
    *error_count = (int)n;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_ecc_info(int card_id, int device_id, int device_type, struct dcmi_ecc_info *ecc) {
    RESOLVE(card_id, device_id, 1);
    if (ecc == NULL || device_type < 0)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_ASCEND, d->index, &st);
    memset(ecc, 0, sizeof *ecc);
    ecc->enable_flag = 1;
    ecc->single_bit_error_cnt = (unsigned int)st.ecc_single;
    ecc->double_bit_error_cnt = (unsigned int)st.ecc_double;
    ecc->total_single_bit_error_cnt = (unsigned int)st.ecc_single;
    ecc->total_double_bit_error_cnt = (unsigned int)st.ecc_double;
    ecc->single_bit_isolated_pages_cnt = st.retired_pages;
    ecc->double_bit_isolated_pages_cnt = st.ecc_double > 0 ? 1u : 0u;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_temperature(int card_id, int device_id, int *temperature) {
    RESOLVE(card_id, device_id, 1);
    if (temperature == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *temperature = sim_device_temperature(p, SIM_VENDOR_ASCEND, d->index, WARNING_TEMPERATURE_C);
    return DCMI_OK;
}

/* input_type: 1 memory, 2 AI core, 3 AI CPU, 4 control CPU, 5 memory bandwidth, 6 HBM, ... */
SIM_EXPORT int dcmi_get_device_utilization_rate(int card_id, int device_id, int input_type, unsigned int *rate) {
    RESOLVE(card_id, device_id, 1);
    if (rate == NULL || input_type < 1 || input_type > 13)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    unsigned int mem_pct = (unsigned int)(d->memory_used_bytes * 100 / d->memory_bytes);
    *rate = (input_type == 1 || input_type == 6) ? mem_pct : (unsigned int)d->utilization_pct;
    return DCMI_OK;
}

/* Power in 0.1 W: idle 90 W plus 3 W per utilisation percent. */
SIM_EXPORT int dcmi_get_device_power_info(int card_id, int device_id, int *power) {
    RESOLVE(card_id, device_id, 1);
    if (power == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    *power = 900 + 30 * d->utilization_pct;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_driver_version(char *ver, unsigned int len) {
    const sim_profile_t *p = profile();
    if (p == NULL)
        return DCMI_ERR_CODE_NOT_REDAY;
    if (ver == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    return sim_copy_str(ver, len, p->driver_version) == 0 ? DCMI_OK : DCMI_ERR_CODE_INVALID_PARAMETER;
}

SIM_EXPORT int dcmi_get_dcmi_version(char *ver, int len) {
    if (ver == NULL || len <= 0)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    return sim_copy_str(ver, (size_t)len, "6.0.0") == 0 ? DCMI_OK : DCMI_ERR_CODE_INVALID_PARAMETER;
}

/* ---- sub-health signals (scenario directives in the fault file, driver/README.md) --------------- */

struct dcmi_chip_pcie_err_rate {
    unsigned int reg_deskew_fifo_overflow_intr_status;
    unsigned int reg_symbol_unlock_intr_status;
    unsigned int reg_deskew_unlock_intr_status;
    unsigned int reg_phystatus_timeout_intr_status;
    unsigned int symbol_unlock_counter;
    unsigned int pcs_rx_err_cnt;
    unsigned int phy_lane_err_counter;
    unsigned int pcs_rcv_err_status;
    unsigned int symbol_unlock_err_status;
    unsigned int phy_lane_err_status;
    unsigned int dl_lcrc_err_num;
    unsigned int dl_dcrc_err_num;
};

enum { DCMI_FREQ_DDR = 1, DCMI_FREQ_CTRLCPU = 2, DCMI_FREQ_HBM = 6, DCMI_FREQ_AICORE_CURRENT = 7,
       DCMI_FREQ_AICORE_MAX = 9 };
#define DCMI_AICORE_MAX_MHZ 1800

/* The link layer's LCRC errors are what the data link layer replays: the simulator reports its PCIe
 * replay counter there. */
SIM_EXPORT int dcmi_get_device_pcie_error_cnt(int card_id, int device_id, struct dcmi_chip_pcie_err_rate *info) {
    RESOLVE(card_id, device_id, 1);
    if (info == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_ASCEND, d->index, &st);
    memset(info, 0, sizeof *info);
    info->dl_lcrc_err_num = (unsigned int)st.pcie_replays;
    info->pcs_rx_err_cnt = (unsigned int)st.pcie_replays;
    return DCMI_OK;
}

SIM_EXPORT int dcmi_get_device_frequency(int card_id, int device_id, int input_type, unsigned int *frequency) {
    RESOLVE(card_id, device_id, 1);
    if (frequency == NULL)
        return DCMI_ERR_CODE_INVALID_PARAMETER;
    sim_dev_state_t st;
    sim_device_state(p, SIM_VENDOR_ASCEND, d->index, &st);
    switch (input_type) {
    case DCMI_FREQ_DDR: *frequency = 3200; break;
    case DCMI_FREQ_CTRLCPU: *frequency = 1900; break;
    case DCMI_FREQ_HBM: *frequency = 1600; break;
    case DCMI_FREQ_AICORE_CURRENT: *frequency = DCMI_AICORE_MAX_MHZ * (unsigned int)st.clock_pct / 100u; break;
    case DCMI_FREQ_AICORE_MAX: *frequency = DCMI_AICORE_MAX_MHZ; break;
    default: return DCMI_ERR_CODE_INVALID_PARAMETER;
    }
    return DCMI_OK;
}
