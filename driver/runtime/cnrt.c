/*
 * Simulated Cambricon CNRT (libcnrt.so): device selection, cnrtMalloc / cnrtFree / cnrtMemGetInfo
 * backed by host memory (sim_mem.c), sized by the node profile (Cambricon devices).
 * Codes from cnrt.h 6.x (hcs_vendor_abi.h). Device 0 is current by default.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_faults.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define cnrtErrorNoDevice 100004

static __thread int cur_dev;

static cnrtRet_t map_rc(int rc) {
    switch (rc) {
    case SIM_MEM_OK: return cnrtSuccess;
    case SIM_MEM_OOM: return cnrtErrorNoMem;
    case SIM_MEM_HOSTOOM: return cnrtErrorNoMem;
    case SIM_MEM_BADDEV: return cnrtErrorDeviceInvalid;
    case SIM_MEM_BADPTR: return cnrtErrorArgsInvalid;
    default: return cnrtErrorInit;
    }
}

EXPORT cnrtRet_t cnrtGetDeviceCount(unsigned int *count) {
    if (count == NULL)
        return cnrtErrorArgsInvalid;
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (n < 0)
        return cnrtErrorInit;
    *count = (unsigned int)n;
    return n == 0 ? cnrtErrorNoDevice : cnrtSuccess;
}

EXPORT cnrtRet_t cnrtSetDevice(int device) {
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (n < 0)
        return cnrtErrorInit;
    if (device < 0 || device >= n)
        return cnrtErrorDeviceInvalid;
    cur_dev = device;
    return cnrtSuccess;
}

EXPORT cnrtRet_t cnrtGetDevice(int *device) {
    if (device == NULL)
        return cnrtErrorArgsInvalid;
    *device = cur_dev;
    return cnrtSuccess;
}

static cnrtRet_t dev_alloc(void **pPtr, size_t bytes) {
    if (pPtr == NULL || bytes == 0)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_alloc(SIM_VENDOR_CAMBRICON, cur_dev, bytes, 1, pPtr));
}

EXPORT cnrtRet_t cnrtMalloc(void **pPtr, size_t bytes) {
    return dev_alloc(pPtr, bytes);
}

EXPORT cnrtRet_t cnrtFree(void *ptr) {
    if (ptr == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_free(ptr));
}

EXPORT cnrtRet_t cnrtMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes == NULL || total_bytes == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_info(SIM_VENDOR_CAMBRICON, cur_dev, free_bytes, total_bytes));
}

/* device constant memory: charged to the card like cnrtMalloc, freed with cnrtFree */
EXPORT cnrtRet_t cnrtMallocConstant(void **pPtr, size_t bytes) {
    return dev_alloc(pPtr, bytes); /* not through the exported cnrtMalloc: its own entry point */
}

/* pinned host memory: not device memory */
EXPORT cnrtRet_t cnrtHostMalloc(void **pPtr, size_t bytes) {
    if (pPtr == NULL || bytes == 0)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_alloc(SIM_VENDOR_CAMBRICON, 0, bytes, 0, pPtr));
}

EXPORT cnrtRet_t cnrtFreeHost(void *ptr) {
    if (ptr == NULL)
        return cnrtErrorArgsInvalid;
    return map_rc(sim_mem_free(ptr));
}
/* ---- simulated kernels (sim_device.h): cnrtInvokeKernel, queues. A queue belongs to the device
 * current when it was created; one device queue per process and device. */

#define QUEUE_MAGIC 0x43515531u

struct cnrtQueue {
    unsigned magic;
    int dev;
};

static cnrtRet_t sim_rc(int rc) {
    return rc == SIM_DEV_OK ? cnrtSuccess : rc == SIM_DEV_BADDEV ? cnrtErrorDeviceInvalid : cnrtErrorInit;
}

static cnrtRet_t queue_dev(cnrtQueue_t q, int *dev) {
    if (q != NULL && q->magic != QUEUE_MAGIC)
        return cnrtErrorArgsInvalid;
    *dev = q != NULL ? q->dev : cur_dev;
    return cnrtSuccess;
}

EXPORT cnrtRet_t cnrtQueueCreate(cnrtQueue_t *pQueue) {
    if (pQueue == NULL)
        return cnrtErrorArgsInvalid;
    cnrtQueue_t q = malloc(sizeof *q);
    if (q == NULL)
        return cnrtErrorNoMem;
    q->magic = QUEUE_MAGIC;
    q->dev = cur_dev;
    *pQueue = q;
    return cnrtSuccess;
}

EXPORT cnrtRet_t cnrtQueueDestroy(cnrtQueue_t queue) {
    if (queue == NULL || queue->magic != QUEUE_MAGIC)
        return cnrtErrorArgsInvalid;
    queue->magic = 0;
    free(queue);
    return cnrtSuccess;
}


/* Sub-health scenario (fault file "sync_us"/"slow"): a synchronise on this device takes that long,
 * as cuCtxSynchronize does (driver/README.md). Separate from the launch paths. */
static void sync_scenario(int dev) {
    const sim_profile_t *p;
    if (dev >= 0 && sim_mem_profile(&p) == SIM_MEM_OK)
        sim_device_sync_delay(p, SIM_VENDOR_CAMBRICON, dev);
}

/* the device an event was recorded on (-1: not recorded / not an event) */
static int event_dev(const void *event) {
    const struct sim_event *e = event;
    return e != NULL && e->magic == SIM_EVENT_MAGIC && e->recorded ? e->dev : -1;
}

/* shared by cnrtQueueSync and cnrtSyncQueue (not through the exported name: an interposer times
 * each call once) */
static cnrtRet_t queue_sync(cnrtQueue_t queue) {
    int dev;
    cnrtRet_t rc = queue_dev(queue, &dev);
    if (rc != cnrtSuccess)
        return rc;
    sync_scenario(dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_CAMBRICON, dev));
}

EXPORT cnrtRet_t cnrtQueueSync(cnrtQueue_t queue) {
    return queue_sync(queue);
}

/* CNRT 4.x/5.x name of cnrtQueueSync */
EXPORT cnrtRet_t cnrtSyncQueue(cnrtQueue_t queue) {
    return queue_sync(queue);
}

EXPORT cnrtRet_t cnrtSyncDevice(void) {
    sync_scenario(cur_dev);
    return sim_rc(sim_dev_sync(SIM_VENDOR_CAMBRICON, cur_dev));
}

/* args[0] points to the kernel's cost in floating-point operations (unsigned long long). */
EXPORT cnrtRet_t cnrtInvokeKernel(const void *function, cnrtDim3_t dim, cnrtFunctionType_t ktype, void **args,
                                  size_t reserved, cnrtQueue_t queue) {
    (void)dim, (void)ktype, (void)reserved;
    if (function == NULL || args == NULL || args[0] == NULL)
        return cnrtErrorArgsInvalid;
    int dev;
    cnrtRet_t rc = queue_dev(queue, &dev);
    if (rc != cnrtSuccess)
        return rc;
    unsigned long long flops;
    memcpy(&flops, args[0], sizeof flops);
    return sim_rc(sim_dev_launch(SIM_VENDOR_CAMBRICON, dev, flops, NULL));
}

EXPORT cnrtRet_t cnrtNotifierCreate(cnrtNotifier_t *pNotifier) {
    if (pNotifier == NULL)
        return cnrtErrorArgsInvalid;
    *pNotifier = (cnrtNotifier_t)sim_event_new();
    return *pNotifier != NULL ? cnrtSuccess : cnrtErrorNoMem;
}

EXPORT cnrtRet_t cnrtPlaceNotifier(cnrtNotifier_t notifier, cnrtQueue_t queue) {
    int dev;
    cnrtRet_t rc = queue_dev(queue, &dev);
    if (rc != cnrtSuccess)
        return rc;
    int r = sim_event_record((struct sim_event *)notifier, SIM_VENDOR_CAMBRICON, dev);
    return r == SIM_DEV_BADDEV && notifier != NULL ? cnrtErrorArgsInvalid : sim_rc(r);
}

EXPORT cnrtRet_t cnrtWaitNotifier(cnrtNotifier_t notifier) {
    sync_scenario(event_dev(notifier));
    return sim_event_wait((struct sim_event *)notifier) == SIM_DEV_OK ? cnrtSuccess : cnrtErrorArgsInvalid;
}

EXPORT cnrtRet_t cnrtNotifierDestroy(cnrtNotifier_t notifier) {
    return sim_event_free((struct sim_event *)notifier) == SIM_DEV_OK ? cnrtSuccess : cnrtErrorArgsInvalid;
}

static int same_index(int ordinal) {
    return ordinal;
}
SIM_DEVICE_EXPORTS(cnrt, SIM_VENDOR_CAMBRICON, same_index)
