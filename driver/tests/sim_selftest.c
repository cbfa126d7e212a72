/*
 * sim_selftest - drives the simulated libraries from C (used for the ASan/UBSan build, where loading
 * them into Python would need LD_PRELOAD of the sanitizer runtime).
 *
 *   sim_selftest <lib dir> <profiles dir>
 *
 * Exercises: every shipped profile through all four libraries, malformed profiles, the fault file
 * (health, ECC, Xid events through nvmlEventSetWait_v2, DCMI error codes) and a mutation fuzz of the
 * JSON/profile parser. Exit status 0 = all checks passed.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim_profile.h"

static int g_failures;
static int g_checks;

#define CHECK(cond, ...)                                                                                           \
    do {                                                                                                           \
        g_checks++;                                                                                                \
        if (!(cond)) {                                                                                             \
            g_failures++;                                                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                                                          \
            fputc('\n', stderr);                                                                                   \
        }                                                                                                          \
    } while (0)

static void *open_lib(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        exit(2);
    }
    return h;
}

static void *sym(void *lib, const char *name) {
    void *f = dlsym(lib, name);
    if (f == NULL) {
        fprintf(stderr, "missing symbol %s\n", name);
        exit(2);
    }
    return f;
}

#define FN(lib, ret, name, args) ret(*name) args = (ret(*) args)sym(lib, #name)

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    void *device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

static void write_file(const char *path, const char *text) {
    char tmp[8400];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        exit(2);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        perror(tmp);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static void append_file(const char *path, const char *text) {
    FILE *f = fopen(path, "a");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* ---- per-profile inventory through all libraries ------------------------------------------------ */

static void check_nvml(void *lib, const sim_profile_t *ref) {
    FN(lib, int, nvmlInitWithFlags, (unsigned int));
    FN(lib, int, nvmlShutdown, (void));
    FN(lib, int, nvmlDeviceGetCount_v2, (unsigned int *));
    FN(lib, int, nvmlDeviceGetHandleByIndex_v2, (unsigned int, void **));
    FN(lib, int, nvmlDeviceGetName, (void *, char *, unsigned int));
    FN(lib, int, nvmlDeviceGetUUID, (void *, char *, unsigned int));
    FN(lib, int, nvmlDeviceGetPciInfo_v3, (void *, nvmlPciInfo_t *));
    FN(lib, int, nvmlDeviceGetMemoryInfo, (void *, nvmlMemory_t *));
    FN(lib, int, nvmlDeviceGetNumaNodeId, (void *, unsigned int *));
    FN(lib, int, nvmlDeviceGetNvLinkState, (void *, unsigned int, int *));
    FN(lib, int, nvmlDeviceGetNvLinkRemotePciInfo_v2, (void *, unsigned int, nvmlPciInfo_t *));
    FN(lib, int, nvmlDeviceGetNvLinkRemoteDeviceType, (void *, unsigned int, int *));
    FN(lib, int, nvmlDeviceGetHandleByUUID, (const char *, void **));
    FN(lib, int, nvmlDeviceGetHandleByPciBusId_v2, (const char *, void **));
    FN(lib, int, nvmlDeviceGetTopologyCommonAncestor, (void *, void *, int *));
    CHECK(nvmlInitWithFlags(0) == 0, "nvml init for %s", ref->path);
    unsigned int n = 99;
    CHECK(nvmlDeviceGetCount_v2(&n) == 0 && (int)n == sim_vendor_count(ref, SIM_VENDOR_NVIDIA), "count %u", n);
    for (unsigned int i = 0; i < n; i++) {
        const sim_device_t *d = sim_vendor_device(ref, SIM_VENDOR_NVIDIA, (int)i);
        void *h = NULL, *h2 = NULL;
        char buf[96];
        CHECK(nvmlDeviceGetHandleByIndex_v2(i, &h) == 0, "handle %u", i);
        CHECK(nvmlDeviceGetName(h, buf, sizeof buf) == 0 && strcmp(buf, d->model) == 0, "name %s", buf);
        CHECK(nvmlDeviceGetUUID(h, buf, sizeof buf) == 0 && strcmp(buf, d->uuid) == 0, "uuid %s", buf);
        CHECK(nvmlDeviceGetUUID(h, buf, 5) == 7, "short uuid buffer must be INSUFFICIENT_SIZE");
        CHECK(nvmlDeviceGetHandleByUUID(d->uuid, &h2) == 0 && h2 == h, "by uuid");
        nvmlPciInfo_t pci;
        CHECK(nvmlDeviceGetPciInfo_v3(h, &pci) == 0 && pci.bus == d->pci_bus, "pci");
        CHECK(nvmlDeviceGetHandleByPciBusId_v2(pci.busId, &h2) == 0 && h2 == h, "by pci %s", pci.busId);
        nvmlMemory_t m;
        CHECK(nvmlDeviceGetMemoryInfo(h, &m) == 0 && m.total == d->memory_bytes, "memory");
        unsigned int numa = 99;
        CHECK(nvmlDeviceGetNumaNodeId(h, &numa) == 0 && (int)numa == d->numa_node, "numa");
        for (int k = 0; k < d->nlinks; k++) {
            int active = -1;
            CHECK(nvmlDeviceGetNvLinkState(h, (unsigned int)k, &active) == 0 && active == 1, "link %d", k);
            unsigned int want_bus = d->links[k].sw >= 0 ? ref->switches[d->links[k].sw].pci_bus
                                                        : sim_vendor_device(ref, SIM_VENDOR_NVIDIA, d->links[k].peer)->pci_bus;
            CHECK(nvmlDeviceGetNvLinkRemotePciInfo_v2(h, (unsigned int)k, &pci) == 0 && pci.bus == want_bus,
                  "remote pci %d", k);
            int remote_type = -1;
            CHECK(nvmlDeviceGetNvLinkRemoteDeviceType(h, (unsigned int)k, &remote_type) == 0 &&
                      remote_type == (d->links[k].sw >= 0 ? 2 : 0),
                  "remote type %d", k);
        }
        int active;
        CHECK(nvmlDeviceGetNvLinkState(h, (unsigned int)d->nlinks, &active) == 3, "link past the end");
        int lvl = -1;
        CHECK(nvmlDeviceGetTopologyCommonAncestor(h, h, &lvl) == 0 && lvl == 0, "topology self");
    }
    CHECK(nvmlShutdown() == 0, "shutdown");
}

static void check_dcmi(void *lib, const sim_profile_t *ref) {
    FN(lib, int, dcmi_init, (void));
    FN(lib, int, dcmi_get_card_list, (int *, int *, int));
    FN(lib, int, dcmi_get_card_num_list, (int *, int *, int));
    FN(lib, int, dcmi_get_device_chip_info, (int, int, void *));
    FN(lib, int, dcmi_get_topo_info_by_device_id, (int, int, int, int, int *));
    FN(lib, int, dcmi_get_device_health, (int, int, unsigned int *));
    CHECK(dcmi_init() == 0, "dcmi init");
    int num = -1, list[64], num2 = -1;
    CHECK(dcmi_get_card_list(&num, list, 64) == 0 && num == sim_vendor_count(ref, SIM_VENDOR_ASCEND), "cards");
    CHECK(dcmi_get_card_num_list(&num2, list, 64) == 0 && num2 == num, "card_num_list alias");
    for (int i = 0; i < num; i++) {
        const sim_device_t *d = sim_vendor_device(ref, SIM_VENDOR_ASCEND, i);
        unsigned char chip[100];
        CHECK(dcmi_get_device_chip_info(list[i], 0, chip) == 0 && strcmp((char *)chip + 32, d->model) == 0,
              "chip name");
        for (int k = 0; k < d->nlinks; k++) {
            int topo = -1;
            CHECK(dcmi_get_topo_info_by_device_id(list[i], 0, d->links[k].peer, 0, &topo) == 0 && topo == 3,
                  "hccs topo");
        }
        unsigned int health = 9;
        CHECK(dcmi_get_device_health(list[i], 0, &health) == 0 && health == 0, "health");
    }
}

static void check_rsmi(void *lib, const sim_profile_t *ref) {
    FN(lib, int, rsmi_init, (uint64_t));
    FN(lib, int, rsmi_shut_down, (void));
    FN(lib, int, rsmi_num_monitor_devices, (uint32_t *));
    FN(lib, int, rsmi_dev_name_get, (uint32_t, char *, size_t));
    FN(lib, int, rsmi_dev_pci_id_get, (uint32_t, uint64_t *));
    FN(lib, int, rsmi_dev_memory_total_get, (uint32_t, int, uint64_t *));
    FN(lib, int, rsmi_topo_get_link_type, (uint32_t, uint32_t, uint64_t *, int *));
    CHECK(rsmi_init(0) == 0, "rsmi init");
    uint32_t n = 99;
    CHECK(rsmi_num_monitor_devices(&n) == 0 && (int)n == sim_vendor_count(ref, SIM_VENDOR_HYGON), "count");
    for (uint32_t i = 0; i < n; i++) {
        const sim_device_t *d = sim_vendor_device(ref, SIM_VENDOR_HYGON, (int)i);
        char name[64];
        uint64_t v = 0;
        CHECK(rsmi_dev_name_get(i, name, sizeof name) == 0 && strcmp(name, d->model) == 0, "name");
        CHECK(rsmi_dev_pci_id_get(i, &v) == 0 && ((v >> 8) & 0xff) == d->pci_bus, "bdf");
        CHECK(rsmi_dev_memory_total_get(i, 0, &v) == 0 && v == d->memory_bytes, "vram");
        for (int k = 0; k < d->nlinks; k++) {
            uint64_t hops;
            int type = -1;
            CHECK(rsmi_topo_get_link_type(i, (uint32_t)d->links[k].peer, &hops, &type) == 0 && type == 2, "xgmi");
        }
    }
    CHECK(rsmi_shut_down() == 0, "shutdown");
}

static void check_cndev(void *lib, const sim_profile_t *ref) {
    FN(lib, int, cndevInit, (int));
    FN(lib, int, cndevGetDeviceCount, (void *));
    FN(lib, int, cndevGetUUID, (void *, int));
    FN(lib, int, cndevGetMemoryUsageV2, (void *, int));
    FN(lib, int32_t, cndevGetMLULinkPortNumber, (int));
    FN(lib, int, cndevGetMLULinkRemoteInfo, (void *, int, int));
    CHECK(cndevInit(0) == 0, "cndev init");
    struct {
        int32_t version;
        uint32_t number;
    } ci = {6, 99};
    CHECK(cndevGetDeviceCount(&ci) == 0 && (int)ci.number == sim_vendor_count(ref, SIM_VENDOR_CAMBRICON), "count");
    for (int i = 0; i < (int)ci.number; i++) {
        const sim_device_t *d = sim_vendor_device(ref, SIM_VENDOR_CAMBRICON, i);
        struct {
            int32_t version;
            uint8_t uuid[37];
            uint64_t ncs;
        } u = {6, {0}, 0};
        CHECK(cndevGetUUID(&u, i) == 0 && strstr(d->uuid, (char *)u.uuid) != NULL, "uuid");
        int64_t mem[22];
        CHECK(cndevGetMemoryUsageV2(mem, i) == 0 && (uint64_t)mem[0] == d->memory_bytes >> 20, "memory");
        CHECK(cndevGetMLULinkPortNumber(i) == d->nlinks, "ports");
        unsigned char remote[400];
        memset(remote, 0, sizeof remote);
        *(int32_t *)(void *)remote = 6;
        for (int k = 0; k < d->nlinks; k++)
            CHECK(cndevGetMLULinkRemoteInfo(remote, i, k) == 0, "remote %d", k);
        CHECK(cndevGetMLULinkRemoteInfo(remote, i, d->nlinks) == (d->nlinks ? 11 : 10), "remote past end");
    }
}

/* ---- faults ------------------------------------------------------------------------------------- */

static void check_faults(void *nvml, void *dcmi, const char *profile_path) {
    char faults[8400];
    if (snprintf(faults, sizeof faults, "%s.faults", profile_path) >= (int)sizeof faults)
        return;
    unlink(faults);
    setenv("HCS_SIM_PROFILE", profile_path, 1);
    FN(nvml, int, nvmlInitWithFlags, (unsigned int));
    FN(nvml, int, nvmlDeviceGetHandleByIndex_v2, (unsigned int, void **));
    FN(nvml, int, nvmlDeviceGetMemoryInfo, (void *, nvmlMemory_t *));
    FN(nvml, int, nvmlDeviceGetTemperature, (void *, int, unsigned int *));
    FN(nvml, int, nvmlDeviceGetTotalEccErrors, (void *, int, int, unsigned long long *));
    FN(nvml, int, nvmlEventSetCreate, (void **));
    FN(nvml, int, nvmlDeviceRegisterEvents, (void *, unsigned long long, void *));
    FN(nvml, int, nvmlEventSetWait_v2, (void *, nvmlEventData_t *, unsigned int));
    FN(nvml, int, nvmlEventSetFree, (void *));
    CHECK(nvmlInitWithFlags(0) == 0, "init for faults");
    void *h0, *h3;
    nvmlDeviceGetHandleByIndex_v2(0, &h0);
    nvmlDeviceGetHandleByIndex_v2(3, &h3);
    /* An event already in the file before the set exists must not be delivered. */
    write_file(faults, "nvidia 0 xid 31\n");
    void *set = NULL;
    CHECK(nvmlEventSetCreate(&set) == 0, "event set");
    CHECK(nvmlDeviceRegisterEvents(h0, 0xB, set) == 0 && nvmlDeviceRegisterEvents(h3, 0xB, set) == 0, "register");
    nvmlEventData_t ev;
    CHECK(nvmlEventSetWait_v2(set, &ev, 60) == 10, "old event must not be delivered (TIMEOUT)");
    append_file(faults, "nvidia 3 xid 79\nnvidia 0 ecc double 2\n");
    CHECK(nvmlEventSetWait_v2(set, &ev, 2000) == 0 && ev.device == h3 && ev.eventType == 0x8 && ev.eventData == 79,
          "xid 79 on device 3");
    CHECK(nvmlEventSetWait_v2(set, &ev, 2000) == 0 && ev.device == h0 && ev.eventType == 0x2, "ecc double event");
    CHECK(nvmlEventSetWait_v2(set, &ev, 0) == 10, "no more events");
    unsigned long long cnt = 0;
    CHECK(nvmlDeviceGetTotalEccErrors(h0, 1, 0, &cnt) == 0 && cnt == 2, "ecc counter %llu", cnt);
    append_file(faults, "nvidia 3 health critical\nnvidia 0 health warning\n");
    nvmlMemory_t m;
    CHECK(nvmlDeviceGetMemoryInfo(h3, &m) == 15, "critical -> GPU_IS_LOST");
    unsigned int t = 0;
    CHECK(nvmlDeviceGetTemperature(h0, 0, &t) == 0 && t == 90, "warning -> 90 C");
    append_file(faults, "nvidia 3 clear\nbogus line here\n");
    CHECK(nvmlDeviceGetMemoryInfo(h3, &m) == 0, "clear -> ok");
    CHECK(nvmlEventSetFree(set) == 0, "free set");

    FN(dcmi, int, dcmi_init, (void));
    FN(dcmi, int, dcmi_get_device_health, (int, int, unsigned int *));
    FN(dcmi, int, dcmi_get_device_errorcode_v2, (int, int, int *, unsigned int *, unsigned int));
    CHECK(dcmi_init() == 0, "dcmi init (mixed)");
    append_file(faults, "ascend 1 health critical\nascend 2 errorcode 0x80E01801\nascend 3 health lost\n");
    unsigned int health = 0;
    CHECK(dcmi_get_device_health(1, 0, &health) == 0 && health == 3, "dcmi critical=3");
    int count = 0;
    unsigned int codes[8];
    CHECK(dcmi_get_device_errorcode_v2(2, 0, &count, codes, 8) == 0 && count == 1 && codes[0] == 0x80E01801u,
          "error code");
    CHECK(dcmi_get_device_health(3, 0, &health) == -8007, "dcmi lost=-8007");
    unlink(faults);
    CHECK(dcmi_get_device_health(3, 0, &health) == 0 && health == 0, "fault file removed -> ok");
}

/* ---- scenarios (timed lines, rates, ramps, noise) on a stepped clock --------------------------------- */

static void set_clock(const char *path, double t) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.3f\n", t);
    char tmp[8600];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return;
    write_file(tmp, buf);
    CHECK(rename(tmp, path) == 0, "clock rename");
}

static void check_scenarios(void *nvml, const char *profile_copy, const char *tmpdir) {
    char faults[8500], clock[8500];
    if (snprintf(faults, sizeof faults, "%s.faults", profile_copy) >= (int)sizeof faults ||
        snprintf(clock, sizeof clock, "%s/clock", tmpdir) >= (int)sizeof clock)
        return;
    set_clock(clock, 0);
    setenv("HCS_SIM_PROFILE", profile_copy, 1);
    setenv("HCS_SIM_CLOCK", clock, 1);
    FN(nvml, int, nvmlInitWithFlags, (unsigned int));
    FN(nvml, int, nvmlDeviceGetHandleByIndex_v2, (unsigned int, void **));
    FN(nvml, int, nvmlDeviceGetTemperature, (void *, int, unsigned int *));
    FN(nvml, int, nvmlDeviceGetTotalEccErrors, (void *, int, int, unsigned long long *));
    FN(nvml, int, nvmlDeviceGetPcieReplayCounter, (void *, unsigned int *));
    FN(nvml, int, nvmlDeviceGetClockInfo, (void *, int, unsigned int *));
    FN(nvml, int, nvmlDeviceGetCurrPcieLinkWidth, (void *, unsigned int *));
    CHECK(nvmlInitWithFlags(0) == 0, "init for scenarios");
    write_file(faults, "nvidia 0 noise 5\n@10 nvidia 1 pcie_replay_rate 0 10 10\n@10 nvidia 2 temperature 50 90 20\n"
                       "@5 nvidia 3 ecc_rate single 2\n@12 nvidia 3 ecc_rate single 0\n@3 nvidia 4 pcie_link 4 2\n"
                       "@3 nvidia 4 clock_pct 50\n@99999999999999999999 nvidia 5 slow 1\n@1e400 nvidia 5 slow 1\n");
    void *h[5];
    for (unsigned int i = 0; i < 5; i++)
        nvmlDeviceGetHandleByIndex_v2(i, &h[i]);
    unsigned int v = 0;
    unsigned long long c = 0;
    CHECK(nvmlDeviceGetPcieReplayCounter(h[1], &v) == 0 && v == 0, "replays before onset %u", v);
    set_clock(clock, 15);
    CHECK(nvmlDeviceGetPcieReplayCounter(h[1], &v) == 0 && v == 12, "ramp integral at 15 s: %u", v);
    set_clock(clock, 20);
    CHECK(nvmlDeviceGetPcieReplayCounter(h[1], &v) == 0 && v == 50, "ramp integral at 20 s: %u", v);
    CHECK(nvmlDeviceGetTemperature(h[2], 0, &v) == 0 && v == 70, "temperature ramp at 20 s: %u", v);
    CHECK(nvmlDeviceGetTotalEccErrors(h[3], 0, 0, &c) == 0 && c == 14, "closed rate segment: %llu", c);
    CHECK(nvmlDeviceGetClockInfo(h[4], 1, &v) == 0 && v == 705, "clock_pct 50: %u", v);
    CHECK(nvmlDeviceGetCurrPcieLinkWidth(h[4], &v) == 0 && v == 4, "pcie width %u", v);
    /* noise: monotone counters, bounded temperature, over a simulated day (and back in time) */
    unsigned long long last = 0;
    int ok = 1;
    for (int t = 0; t <= 86400; t += 600) {
        set_clock(clock, t);
        unsigned int temp = 0;
        nvmlDeviceGetTotalEccErrors(h[0], 0, 0, &c);
        nvmlDeviceGetTemperature(h[0], 0, &temp);
        ok &= c >= last && temp < 80;
        last = c;
    }
    CHECK(ok && last > 0, "noise counters monotone and temperature bounded (sbe %llu)", last);
    set_clock(clock, 0);
    CHECK(nvmlDeviceGetTotalEccErrors(h[0], 0, 0, &c) == 0 && c == 0, "clock back to 0: %llu", c);
    set_clock(clock, 86400);
    CHECK(nvmlDeviceGetTotalEccErrors(h[0], 0, 0, &c) == 0 && c == last, "same day, same noise: %llu", c);
    unlink(faults);
    unlink(clock);
    unsetenv("HCS_SIM_CLOCK");
}

/* ---- malformed profiles ---------------------------------------------------------------------------- */

static void check_bad_profiles(void *nvml, const char *tmpdir) {
    FN(nvml, int, nvmlInitWithFlags, (unsigned int));
    static const struct {
        const char *json;
        const char *expect;
    } cases[] = {
        {"{\"devices\": [{\"vendor\": \"nvidia\"}]}", "devices[0].model: missing"},
        {"{\"devices\": [{\"vendor\": \"amd\", \"model\": \"x\"}]}", "devices[0].vendor: unknown vendor \"amd\""},
        {"{\"devices\": [{\"vendor\":\"nvidia\",\"model\":\"m\",\"uuid\":\"a\",\"pci_bus_id\":\"0000:01:00.0\","
         "\"memory_mib\":1,\"numa_node\":0},{\"vendor\":\"nvidia\",\"model\":\"m\",\"uuid\":\"b\","
         "\"pci_bus_id\":\"0000:01:00.0\",\"memory_mib\":1,\"numa_node\":0}]}",
         "devices[1].pci_bus_id: duplicate of devices[0]"},
        {"{\"devices\": [{\"vendor\":\"nvidia\",\"model\":\"m\",\"uuid\":\"a\",\"pci_bus_id\":\"0000:01:00.0\","
         "\"memory_mib\":1,\"numa_node\":0,\"links\":[{\"peer\":4,\"type\":\"nvlink\",\"gbps\":1}]}]}",
         "devices[0].links[0].peer: 4 names no nvidia device"},
        {"{\"devices\": [", "invalid JSON: line 1"},
        {"{\"devices\": [{\"vendor\":\"nvidia\",\"model\":\"m\",\"uuid\":\"a\",\"pci_bus_id\":\"1:2:3\","
         "\"memory_mib\":1,\"numa_node\":0}]}",
         "devices[0].pci_bus_id: \"1:2:3\" is not a PCI address"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/bad%zu.json", tmpdir, i);
        write_file(path, cases[i].json);
        char err[1024];
        sim_profile_t *p = sim_profile_parse_file(path, err, sizeof err);
        CHECK(p == NULL && strstr(err, cases[i].expect) != NULL && strstr(err, path) != NULL, "case %zu: %s", i,
              err);
        sim_profile_free(p);
        setenv("HCS_SIM_PROFILE", path, 1);
        CHECK(nvmlInitWithFlags(0) == 999, "bad profile must fail nvmlInit (case %zu)", i);
        unlink(path);
    }
    unsetenv("HCS_SIM_PROFILE");
    CHECK(nvmlInitWithFlags(0) == 9, "unset profile -> DRIVER_NOT_LOADED");
}

/* ---- fuzz -------------------------------------------------------------------------------------------- */

static void fuzz_parser(const char *profile_path, const char *tmpdir) {
    FILE *f = fopen(profile_path, "rb");
    if (f == NULL)
        return;
    static char orig[1 << 17];
    size_t n = fread(orig, 1, sizeof orig - 1, f);
    fclose(f);
    char path[4096];
    snprintf(path, sizeof path, "%s/fuzz.json", tmpdir);
    static char buf[1 << 17];
    unsigned int seed = 12345;
    const char alphabet[] = "{}[]\",:0123456789-.eE \\ntfu\x01\xff";
    int accepted = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int edits = 1 + (int)(rand_r(&seed) % 4);
        for (int e = 0; e < edits && len > 0; e++) {
            size_t pos = (size_t)rand_r(&seed) % len;
            int op = rand_r(&seed) % 3;
            if (op == 0)
                buf[pos] = alphabet[(size_t)rand_r(&seed) % (sizeof alphabet - 1)];
            else if (op == 1)
                len = pos; /* truncate */
            else
                memmove(buf + pos, buf + pos + 1, len - pos - 1), len--;
        }
        buf[len] = '\0';
        FILE *o = fopen(path, "wb");
        fwrite(buf, 1, len, o);
        fclose(o);
        char err[512];
        sim_profile_t *p = sim_profile_parse_file(path, err, sizeof err);
        if (p != NULL)
            accepted++;
        else
            CHECK(strncmp(err, "hcs-sim: ", 9) == 0, "error message format: %s", err);
        sim_profile_free(p);
    }
    unlink(path);
    printf("fuzz: 400 mutations, %d still valid\n", accepted);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <lib dir> <profiles dir>\n", argv[0]);
        return 2;
    }
    const char *libdir = argv[1], *profdir = argv[2];
    void *nvml = open_lib(libdir, "libnvidia-ml.so.1");
    void *dcmi = open_lib(libdir, "libdcmi.so");
    void *rsmi = open_lib(libdir, "librocm_smi64.so.2");
    void *cndev = open_lib(libdir, "libcndev.so");
    DIR *dir = opendir(profdir);
    if (dir == NULL) {
        perror(profdir);
        return 2;
    }
    struct dirent *e;
    int profiles = 0;
    char mixed[4096] = "";
    while ((e = readdir(dir)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", profdir, e->d_name);
        char err[1024];
        sim_profile_t *ref = sim_profile_parse_file(path, err, sizeof err);
        CHECK(ref != NULL, "shipped profile %s: %s", path, err);
        if (ref == NULL)
            continue;
        setenv("HCS_SIM_PROFILE", path, 1);
        check_nvml(nvml, ref);
        check_dcmi(dcmi, ref);
        check_rsmi(rsmi, ref);
        check_cndev(cndev, ref);
        if (strstr(e->d_name, "mixed") != NULL)
            snprintf(mixed, sizeof mixed, "%s", path);
        sim_profile_free(ref);
        profiles++;
    }
    closedir(dir);
    CHECK(profiles >= 8, "found %d profiles", profiles);
    char tmpdir[] = "/tmp/hcs-sim-selftest-XXXXXX";
    CHECK(mkdtemp(tmpdir) != NULL, "mkdtemp");
    if (mixed[0] != '\0') {
        /* Work on a copy so the fault file never lands next to the shipped profile. */
        char copy[8400], cmd[17000];
        if (snprintf(copy, sizeof copy, "%s/mixed.json", tmpdir) >= (int)sizeof copy ||
            snprintf(cmd, sizeof cmd, "cp '%s' '%s'", mixed, copy) >= (int)sizeof cmd)
            return 2;
        CHECK(system(cmd) == 0, "copy mixed profile");
        check_faults(nvml, dcmi, copy);
        fuzz_parser(copy, tmpdir);
        unlink(copy);
    }
    {
        char src[4096], copy[8400], cmd[17000];
        snprintf(src, sizeof src, "%s/a100-80g-nvlink-8.json", profdir);
        if (snprintf(copy, sizeof copy, "%s/scenario.json", tmpdir) >= (int)sizeof copy ||
            snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, copy) >= (int)sizeof cmd)
            return 2;
        CHECK(system(cmd) == 0, "copy a100 profile");
        check_scenarios(nvml, copy, tmpdir);
        unlink(copy);
    }
    check_bad_profiles(nvml, tmpdir);
    rmdir(tmpdir);
    /* The libraries stay loaded: their cached profiles are reachable until exit (no leak report). */
    printf("sim_selftest: %d profiles, %d checks, %d failures\n", profiles, g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
