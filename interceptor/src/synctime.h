/*
 * synctime.h - the interceptor's own synchronise timing: the sub-health fallback signal when the
 * node agent cannot load eBPF probes (hcs/devices/workload.py, docs/operations.md "Sub-health").
 *
 * Every successful cuCtxSynchronize / cuStreamSynchronize(_ptsz) is timed (two vDSO clock reads
 * around the runtime's call) and appended to a per-device ring in the node-wide compute dir (the
 * agent's node.computeDir, /var/run/hcs/compute in a managed container; HCS_COMPUTE_DIR in
 * development; nothing is recorded without one):
 *
 *     <dir>/hcs-sync-<32 lowercase hex digits of the device UUID>.ring
 *
 * Layout (little-endian, fixed size HCS_ST_FILE_SIZE):
 *   header (64 bytes): u32 magic "HST1", u32 version 1, u32 slots (512), u32 entry size (24),
 *                      u64 reserved (0), 40 reserved bytes;
 *   slots x entry:     u64 seq = pid << 32 | n (the writing process's n-th sample, 1 .. 2^32-1),
 *                      u64 end_ns (CLOCK_MONOTONIC at return), u64 latency_ns;
 *   a sample goes to slot HCS_ST_SLOT(pid, n), written with one pwrite of its 24 bytes.
 * The file is never mapped: a container truncating or replacing the shared file cannot fault
 * another container's process (a mapping would take SIGBUS). A reader takes the slots whose bytes
 * changed since its last read, and only entries in the slot their seq names; it treats everything
 * as advisory, tenant-writable data (any container of the node can write the dir): bounded,
 * validated, never trusted for anything but the straggler signal. Writers of several processes
 * may overwrite each other's samples before they are read: fine for a latency floor.
 *
 * Runtimes: CUDA (the device's UUID from cuDeviceGetUuid) and, since issue 20's second part, Ascend
 * ACL, HIP and CNRT (hcs_synctime_record_rt): their runtimes have no UUID call the management
 * libraries agree with, so their ring is named by the agent's device list, "<index> <uuid>" per
 * line (<ledger dir>/devices in a managed container, where the index is the in-container ordinal;
 * the file HCS_SYNC_DEVICES names in development). A UUID is named by its hex digits: a "GPU-",
 * "MIG-", "MLU-" or "0x" prefix and dashes dropped, lower case, 8 to 64 digits
 * (hcs.devices.workload.ring_name does the same).
 *
 * Hot path: launches are untouched; a synchronise costs two vDSO clock reads, one process-local
 * atomic add and one pwrite (the first synchronise per device opens the file once).
 */
#ifndef HCS_SYNCTIME_H
#define HCS_SYNCTIME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HCS_ST_MAGIC 0x31545348u /* "HST1" in memory order */
#define HCS_ST_VERSION 1u
#define HCS_ST_SLOTS 512u

struct hcs_st_entry {
    uint64_t seq;
    uint64_t end_ns;
    uint64_t lat_ns;
};

struct hcs_st_file {
    _Atomic uint32_t magic;
    uint32_t version;
    uint32_t slots;
    uint32_t entry_size;
    uint64_t reserved0;
    uint64_t reserved[5];
    struct hcs_st_entry e[HCS_ST_SLOTS];
};

#define HCS_ST_FILE_SIZE (sizeof(struct hcs_st_file))
/* the slot of process pid's n-th sample (n >= 1): consecutive samples fill consecutive slots, and
 * processes start at different places */
#define HCS_ST_SLOT(pid, n) ((((uint64_t)(pid) * 7919u) + (uint64_t)(n)) % HCS_ST_SLOTS)

/* uuid(ordinal, out): the device's 16-byte UUID, 0 on success. */
typedef int (*hcs_st_uuid_fn)(int ordinal, uint8_t out[16]);
typedef void (*hcs_st_log_fn)(int level, const char *msg);

/* dir NULL or "": timing off. Called once by the interceptor's initialisation. */
void hcs_synctime_setup(const char *dir, hcs_st_uuid_fn uuid, hcs_st_log_fn log) __attribute__((visibility("hidden")));

extern _Atomic bool hcs_synctime_on __attribute__((visibility("hidden")));

uint64_t hcs_synctime_now(void) __attribute__((visibility("hidden")));

/* Append one sample for the device behind the runtime ordinal (no-op when off or unmappable). */
void hcs_synctime_record(int ordinal, uint64_t lat_ns, uint64_t end_ns) __attribute__((visibility("hidden")));

/* Runtimes (index of hcs_synctime_record_rt) */
enum { HCS_ST_RT_CUDA = 0, HCS_ST_RT_ACL = 1, HCS_ST_RT_HIP = 2, HCS_ST_RT_CNRT = 3, HCS_ST_RTS = 4 };

/* The device list for the non-CUDA runtimes ("<index> <uuid>" per line; NULL or "": none, their
 * synchronises are then not recorded, said once). Loaded once: later calls do nothing. */
void hcs_synctime_devices(const char *path) __attribute__((visibility("hidden")));

/* A UUID's ring id: 8..64 lower-case hex digits into hex (>= 65 bytes); false when it has none. */
bool hcs_synctime_id(const char *uuid, size_t n, char *hex) __attribute__((visibility("hidden")));

/* Append one sample for runtime rt's device ordinal (the CUDA case is hcs_synctime_record). */
void hcs_synctime_record_rt(int rt, int ordinal, uint64_t lat_ns, uint64_t end_ns) __attribute__((visibility("hidden")));

#endif /* HCS_SYNCTIME_H */
