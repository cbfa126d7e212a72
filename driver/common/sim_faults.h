/*
 * sim_faults.h - run-time fault injection shared by every simulated vendor library.
 *
 * The fault file is $HCS_SIM_FAULTS, default "<profile path>.faults" (format: driver/README.md).
 * It is re-read whenever its size, mtime or inode changes; the check is a single stat() and is
 * done by every function below. A missing file means "no faults". Bad lines are reported on
 * stderr ("hcs-sim: <file>:<line>: ...") and skipped; they never fail a call.
 *
 * Device state = the profile's initial health, then every directive of the file applied in order.
 * Events (xid, ecc lines) get a process-wide increasing sequence number. When the file grows by
 * appending, only the appended lines produce new events; when it is rewritten, every event line of
 * the new content is new. An event consumer takes a cursor (sim_event_cursor) and later pulls
 * events with seq >= cursor (sim_events_next), so it only sees events appended after it started.
 *
 * All functions are thread-safe.
 */
#ifndef HCS_SIM_FAULTS_H
#define HCS_SIM_FAULTS_H

#include <stdint.h>

#include "sim_profile.h"

#include <stdint.h>
#include <sys/ioctl.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SIM_MAX_ERRORCODES 32
#define SIM_EVENT_LOG 4096 /* events kept for consumers; older ones are dropped */

typedef enum {
    SIM_EVENT_XID = 1,
    SIM_EVENT_ECC_SINGLE = 2,
    SIM_EVENT_ECC_DOUBLE = 3
} sim_event_kind_t;

typedef struct {
    uint64_t seq;
    sim_vendor_t vendor;
    int index;                /* vendor-local device index */
    sim_event_kind_t kind;
    unsigned long long value; /* Xid code for XID; error count for ECC */
} sim_event_t;

typedef struct {
    sim_health_t health;
    uint64_t ecc_single;      /* correctable (single-bit) error count */
    uint64_t ecc_double;      /* uncorrectable (double-bit) error count */
    int nerrorcodes;
    unsigned int errorcodes[SIM_MAX_ERRORCODES]; /* ascend errorcode lines, in order */
    /* Sub-health signals (scenario directives, driver/README.md "Scenarios"); evaluated at the
     * scenario time of the query (sim_scenario_time). */
    uint64_t pcie_replays;    /* PCIe replay counter */
    int pcie_width;           /* current link width; 0 = nominal (SIM_PCIE_MAX_WIDTH) */
    int pcie_gen;             /* current link generation; 0 = nominal (SIM_PCIE_MAX_GEN) */
    uint64_t link_crc;        /* fabric (NVLink/HCCS/xGMI/MLU-Link) CRC errors, all links together */
    uint64_t link_recovery;   /* fabric link recoveries / replays */
    unsigned int throttle;    /* SIM_THROTTLE_* bits */
    int clock_pct;            /* current core clock in % of the maximum (100 = nominal) */
    int temperature_c;        /* current temperature; -1000 = the profile's value */
    unsigned int retired_pages; /* retired (isolated) memory pages */
    int remap_pending;        /* a row remap / page retirement waits for the next reset */
    int slow_pct;             /* runtime synchronise calls take this much % longer (straggler) */
    unsigned int sync_us;     /* simulated synchronise time in the runtime (0 = returns at once) */
    uint32_t noise_seed;      /* healthy-but-noisy jitter enabled (0 = off) */
} sim_dev_state_t;

#define SIM_THROTTLE_POWER 0x1u       /* power cap (normal under load) */
#define SIM_THROTTLE_THERMAL 0x2u     /* thermal slowdown */
#define SIM_THROTTLE_HW_SLOWDOWN 0x4u /* hardware slowdown (power brake, HW failure) */
#define SIM_PCIE_MAX_WIDTH 16
#define SIM_PCIE_MAX_GEN 4
#define SIM_MAX_CLOCK_MHZ 1410

/*
 * Scenario time in seconds: the value in the file named by $HCS_SIM_CLOCK when set (a stepped,
 * simulated clock shared by every process: the benchmark writes it), otherwise
 * (now - epoch) * $HCS_SIM_TIME_SCALE (default 1), where epoch is the fault file's "epoch <unix-s>"
 * line or, without one, the time this process first read the file's current content.
 */
double sim_scenario_time(const sim_profile_t *p);

/* Current temperature of a device: a scenario's temperature line, else the profile's value raised to
 * warning_c while the device's health is "warning". */
int sim_device_temperature(const sim_profile_t *p, sim_vendor_t vendor, int index, int warning_c);

/* The simulated runtimes' synchronise calls: wait the device's sync_us, made slow_pct % longer
 * (a straggler). Returns at once when the scenario sets no sync_us. With HCS_SIM_DEVICE_NODES (the
 * directory where the simulated driver, hcs-simdrv, serves "<vendor>-<index>" device nodes) the
 * wait is an ioctl on the device's node, which the driver answers after that delay: the driver
 * ioctl path the agent's eBPF syscall tracepoints time. */
void sim_device_sync_delay(const sim_profile_t *p, sim_vendor_t vendor, int index);

/* The delay itself (ns, 0 for none), and a sleep of ns that survives signals. */
uint64_t sim_device_sync_ns(const sim_profile_t *p, sim_vendor_t vendor, int index);
void sim_sleep_ns(uint64_t ns);

/* The simulated driver's synchronise ioctl (no argument data: FUSE forwards it as a restricted ioctl). */
#define SIM_IOC_SYNC _IO('H', 0x51)

/* Re-read the fault file if it changed. Returns 0. */
int sim_faults_refresh(const sim_profile_t *p);

/* Current state of a device (refreshes first). Returns 0, or -1 for a bad vendor/index. */
int sim_device_state(const sim_profile_t *p, sim_vendor_t vendor, int index, sim_dev_state_t *out);

/* Shortcut: current health (refreshes first); SIM_HEALTH_LOST for a bad vendor/index. */
sim_health_t sim_device_health(const sim_profile_t *p, sim_vendor_t vendor, int index);

/* Sequence number the next new event will get (refreshes first). */
uint64_t sim_event_cursor(const sim_profile_t *p);

/*
 * Next event with seq >= *cursor of the given vendor (SIM_VENDOR_INVALID = any vendor), refreshing
 * first. Returns 1 and fills *out (and sets *cursor = out->seq + 1) when there is one; returns 0
 * and sets *cursor to the next sequence number otherwise. Does not block.
 */
int sim_events_next(const sim_profile_t *p, uint64_t *cursor, sim_vendor_t vendor, sim_event_t *out);

/* Path of the fault file in use (never NULL once a profile is loaded). */
const char *sim_faults_path(const sim_profile_t *p);

#ifdef __cplusplus
}
#endif

#endif /* HCS_SIM_FAULTS_H */
