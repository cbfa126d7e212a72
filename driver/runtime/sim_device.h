/*
 * sim_device.h - a simulated accelerator that executes work, shared by every process on the node.
 *
 * One shared-memory file per device ($HCS_SIM_DEVICE_DIR, default /dev/shm:
 * hcs-simdev-<uuid>) holds the device's state; every process that launches work on the device
 * maps it. A kernel costs flops / (tflops_fp16 * 1e12) seconds of device time (tflops_fp16 from
 * the node profile). Each process has one context per device (all its streams share its queue,
 * in launch order). The device runs one context at a time and switches round-robin between the
 * contexts that have work, every timeslice_us of device time (profile) or when a context's queue
 * drains - what time-slicing between processes does on a real GPU. No kernels of different
 * contexts run concurrently (no MPS), a context switch costs nothing, and a kernel can be
 * preempted at any nanosecond (real GPUs: instruction/block boundaries).
 *
 * The state advances lazily: whoever takes the device lock first catches the simulation up to
 * the present (CLOCK_MONOTONIC). Nothing spins: waiting for completion sleeps until the moment
 * the work would finish with the current queues, then checks again (new work can only delay it).
 * The lock is a robust process-shared mutex: a process killed while holding it leaves a
 * consistent device (its context's queued work is dropped, as a real driver does on exit).
 *
 * The device's own accounting - the device time each context has received - is what
 * bench/compute_share.py reads (hcs_sim_*_accounting, exported by every fake runtime).
 */
#ifndef HCS_SIM_DEVICE_H
#define HCS_SIM_DEVICE_H

#include <stdint.h>

#include "sim_profile.h"

#define SIM_DEV_MAX_CTX 64

enum sim_dev_rc { SIM_DEV_OK = 0, SIM_DEV_BADDEV = 1, SIM_DEV_NOPROFILE = 2, SIM_DEV_FULL = 3, SIM_DEV_IO = 4 };

/* A ticket: the context's cumulative submitted device time (ns) after a launch; the work is done
 * when the context's executed device time reaches it. */
typedef uint64_t sim_ticket_t;

/* Queue a kernel of `flops` floating-point operations on device dev (profile vendor-local index)
 * for the calling process; returns at once (asynchronous). *ticket may be NULL. */
int sim_dev_launch(sim_vendor_t v, int dev, uint64_t flops, sim_ticket_t *ticket);
/* Queue `ns` of device time directly (a captured graph replays its total). */
int sim_dev_launch_ns(sim_vendor_t v, int dev, uint64_t ns, sim_ticket_t *ticket);
/* The calling process's current ticket (what an event recorded now waits for). */
int sim_dev_mark(sim_vendor_t v, int dev, sim_ticket_t *ticket);
/* 1 when the calling process's work up to ticket has finished, 0 when not, <0 on error. */
int sim_dev_done(sim_vendor_t v, int dev, sim_ticket_t ticket);
/* Sleep until the calling process's work up to ticket has finished. */
int sim_dev_wait(sim_vendor_t v, int dev, sim_ticket_t ticket);
/* Sleep until all the calling process's work on dev has finished. */
int sim_dev_sync(sim_vendor_t v, int dev);
/* Device time this process's context has received (done_ns) and has queued (pending_ns). */
int sim_dev_time(sim_vendor_t v, int dev, uint64_t *done_ns, uint64_t *pending_ns);
/* Device time of a kernel of `flops` on dev. */
uint64_t sim_dev_cost_ns(sim_vendor_t v, int dev, uint64_t flops);

/* A host-side event (cuEvent / hipEvent / aclrtEvent / cnrtNotifier of the fake runtimes). */
struct sim_event {
    unsigned magic;
    int vendor, dev, recorded;
    sim_ticket_t ticket;
};
#define SIM_EVENT_MAGIC 0x53455631u
struct sim_event *sim_event_new(void);
int sim_event_record(struct sim_event *e, sim_vendor_t v, int dev); /* SIM_DEV_* */
int sim_event_wait(struct sim_event *e);                             /* SIM_DEV_*, BADDEV for a bad handle */
int sim_event_free(struct sim_event *e);

/* The device's own accounting, for benchmarks and tests. */
struct hcs_sim_acct {
    int32_t pid;          /* process of the context (0: free slot) */
    int32_t pad;
    uint64_t done_ns;     /* device time the context has received */
    uint64_t pending_ns;  /* device time queued, not yet executed */
    uint64_t launches;    /* kernels launched */
};
/* Fills up to max entries (live contexts), *now_ns = the device clock (CLOCK_MONOTONIC) they are
 * valid at, *busy_ns = total device time executed. Returns the number of entries or <0. */
int sim_dev_accounting(sim_vendor_t v, int dev, struct hcs_sim_acct *out, int max, uint64_t *now_ns,
                       uint64_t *busy_ns);

/* Defines the per-runtime exports hcs_sim_<name>_accounting / hcs_sim_<name>_device_time:
 * ordinal_to_dev maps the runtime's ordinal to the profile index. */
#define SIM_DEVICE_EXPORTS(name, vendor, ordinal_to_dev)                                                 \
    __attribute__((visibility("default"))) int hcs_sim_##name##_accounting(                              \
        int dev, struct hcs_sim_acct *out, int max, uint64_t *now_ns, uint64_t *busy_ns) {                \
        return sim_dev_accounting(vendor, dev, out, max, now_ns, busy_ns);                               \
    }                                                                                                    \
    __attribute__((visibility("default"))) int hcs_sim_##name##_device_time(int ordinal, uint64_t *done_ns, \
                                                                             uint64_t *pending_ns) {     \
        return sim_dev_time(vendor, ordinal_to_dev(ordinal), done_ns, pending_ns);                       \
    }

#endif
