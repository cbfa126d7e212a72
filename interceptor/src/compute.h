/*
 * compute.h - compute limits: hold a container to its share of each device's time.
 *
 * Share = granted TFLOPS / the device's TFLOPS at the exchange rate, per device, written by the
 * node agent into the share file next to the VRAM quota (managed container:
 * /var/run/hcs/shm/compute on the agent's read-only mount, with a record of the same grant in the
 * quota file as "# hcs-compute <index> <share>" lines; development: HCS_COMPUTE_FILE or
 * HCS_COMPUTE_SHARE). Format and semantics: interceptor/README.md "Compute limits".
 *
 * Controller (per container = "group", per device):
 *  - device time is accounted per kernel from completion: the runtime's own timing of the work the
 *    process's context has executed (done) and has queued (pending);
 *  - the group's budget is a token bucket of device time in a per-device ledger shared by every
 *    process of every container on the device (robust process-shared mutex in a shared-memory
 *    file, like the VRAM ledger it survives any process dying at any instruction): it fills at
 *    share x wall time (capped at, and starting with, share x 250 ms: the work a container may keep
 *    queued, so a host stall shorter than that does not idle the device), completed device time is
 *    taken out of it;
 *  - a launch is admitted while tokens - the group's queued work >= one kernel: queued work never
 *    exceeds what the group has earned, so executed device time never runs ahead of the share
 *    (hard); the launching thread sleeps (never spins) until enough has been earned;
 *  - burst: while no other group on the device has asked for time in the last 50 ms, the group may
 *    queue up to 20 ms of device time beyond its tokens, without debt; once another group asks,
 *    it is back to its tokens and what it queued drains in under the yield bound.
 * Hot path: one relaxed load when no limit is set; with a limit one atomic decrement of a
 * per-device launch credit, refilled by the slow path (timing query + ledger) every few ms.
 */
#ifndef HCS_COMPUTE_H
#define HCS_COMPUTE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "region.h"

/* HCS_RT_CNDRV: Cambricon launches through the driver API (cnInvokeKernel); the same device and,
 * under the agent (device key = UUID), the same ledger as CNRT's. */
enum hcs_rt { HCS_RT_CUDA = 0, HCS_RT_ACL = 1, HCS_RT_HIP = 2, HCS_RT_CNRT = 3, HCS_RT_CNDRV = 4, HCS_RT_COUNT = 5 };
enum hcs_compute_policy { HCS_POLICY_HARD = 0, HCS_POLICY_BURST = 1 };

#define HCS_SHARE_NONE 0.0 /* no limit on the device */
#define HCS_COMPUTE_FLOOR_SHARE 0.05 /* a bad share file without the agent's record */

struct hcs_compute_conf {
    double share[HCS_MAX_DEVICES]; /* 0 = unlimited, else (0, 1] */
    char key[HCS_MAX_DEVICES][64];  /* the device's ledger name (agent: its UUID); "" = "<rt>-<index>" */
    int policy;
    char group[96];
    bool any;
};

/* Parse share-file text. 0, or -1 with a one-line reason (naming origin:line) in err. */
int hcs_compute_parse(struct hcs_compute_conf *c, const char *text, const char *origin, char *err, size_t errlen);
/* The agent's record in the quota file text: "# hcs-compute <index|*> <share>" lines. Returns the
 * number of devices recorded (0: none). */
int hcs_compute_parse_record(struct hcs_compute_conf *c, const char *quota_text);

/* Called once by the interceptor's initialisation. managed: the agent's files decide;
 * share_text/record_text: the share file and quota file contents (NULL when absent),
 * share_origin names the share file in messages; ledger_dir: where the per-device ledgers live
 * (NULL: process-local ledger, still enforcing per process). log(level, msg). */
typedef void (*hcs_compute_log_fn)(int level, const char *msg);
typedef void *(*hcs_compute_resolve_fn)(int rt, const char *name);
void hcs_compute_setup(bool managed, const char *share_text, bool share_present, const char *share_origin,
                       const char *record_text, const char *ledger_dir, hcs_compute_log_fn log,
                       hcs_compute_resolve_fn resolve);

struct hcs_compute_dev;
struct hcs_compute {
    _Atomic bool active; /* some device has a limit */
    struct hcs_compute_conf conf;
};
extern struct hcs_compute hcs_compute_g __attribute__((visibility("hidden")));
extern _Atomic int64_t hcs_compute_credit[HCS_RT_COUNT][HCS_MAX_DEVICES] __attribute__((visibility("hidden")));

/* Slow path: wait until the group may launch again on dev (ordinal: the runtime's own number). */
void hcs_compute_admit_slow(int rt, int dev, int ordinal) __attribute__((visibility("hidden")));

/* Before every kernel / graph launch. dev: the container's index of the device, ordinal: the
 * runtime's. */
static inline void hcs_compute_admit(int rt, int dev, int ordinal) {
    if (__builtin_expect(!atomic_load_explicit(&hcs_compute_g.active, memory_order_relaxed), 1))
        return;
    if (dev < 0 || dev >= HCS_MAX_DEVICES || hcs_compute_g.conf.share[dev] <= 0.0)
        return;
    if (__builtin_expect(atomic_fetch_sub_explicit(&hcs_compute_credit[rt][dev], 1, memory_order_relaxed) > 0, 1))
        return;
    hcs_compute_admit_slow(rt, dev, ordinal);
}

#endif /* HCS_COMPUTE_H */
