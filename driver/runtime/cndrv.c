/*
 * Simulated Cambricon CNDrv (libcndrv.so), the driver API below CNRT: contexts, queues, notifiers
 * and cnInvokeKernel on the shared simulated device (sim_device.h, the Cambricon devices of the
 * profile). Codes from cn_api.h. A context is current per thread (cnCtxSetCurrent); a queue
 * belongs to the device of the context current when it was created.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"
#include "sim_device.h"
#include "sim_mem.h"

#define EXPORT __attribute__((visibility("default")))
#define CTX_MAGIC 0x434e4331u
#define QUEUE_MAGIC 0x434e5131u

struct CNcontext_st {
    unsigned magic;
    int dev;
};

struct CNqueue_st {
    unsigned magic;
    int dev;
};

static __thread struct CNcontext_st *cur_ctx;

static CNresult sim_rc(int rc) {
    return rc == SIM_DEV_OK ? CN_SUCCESS : rc == SIM_DEV_BADDEV ? CN_ERROR_INVALID_DEVICE : CN_ERROR_NOT_INITIALIZED;
}

EXPORT CNresult cnInit(unsigned int flags) {
    (void)flags;
    return CN_SUCCESS;
}

EXPORT CNresult cnDeviceGet(CNdev *device, int ordinal) {
    if (device == NULL)
        return CN_ERROR_INVALID_VALUE;
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (n < 0)
        return CN_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= n)
        return CN_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CN_SUCCESS;
}

EXPORT CNresult cnCtxCreate(CNcontext *pctx, unsigned int flags, CNdev dev) {
    (void)flags;
    if (pctx == NULL)
        return CN_ERROR_INVALID_VALUE;
    int n = sim_mem_count(SIM_VENDOR_CAMBRICON);
    if (dev < 0 || dev >= n)
        return CN_ERROR_INVALID_DEVICE;
    struct CNcontext_st *c = malloc(sizeof *c);
    if (c == NULL)
        return CN_ERROR_NOT_INITIALIZED;
    c->magic = CTX_MAGIC;
    c->dev = dev;
    *pctx = cur_ctx = c; /* created contexts become current, as in CNDrv */
    return CN_SUCCESS;
}

EXPORT CNresult cnCtxSetCurrent(CNcontext ctx) {
    if (ctx != NULL && ctx->magic != CTX_MAGIC)
        return CN_CONTEXT_ERROR_INVALID;
    cur_ctx = ctx;
    return CN_SUCCESS;
}

EXPORT CNresult cnCtxGetDevice(CNdev *device) {
    if (device == NULL)
        return CN_ERROR_INVALID_VALUE;
    if (cur_ctx == NULL)
        return CN_CONTEXT_ERROR_INVALID;
    *device = cur_ctx->dev;
    return CN_SUCCESS;
}

EXPORT CNresult cnCtxSync(void) {
    if (cur_ctx == NULL)
        return CN_CONTEXT_ERROR_INVALID;
    return sim_rc(sim_dev_sync(SIM_VENDOR_CAMBRICON, cur_ctx->dev));
}

static CNresult queue_dev(CNqueue q, int *dev) {
    if (q != NULL) {
        if (q->magic != QUEUE_MAGIC)
            return CN_ERROR_INVALID_HANDLE;
        *dev = q->dev;
        return CN_SUCCESS;
    }
    if (cur_ctx == NULL)
        return CN_CONTEXT_ERROR_INVALID;
    *dev = cur_ctx->dev;
    return CN_SUCCESS;
}

EXPORT CNresult cnCreateQueue(CNqueue *pQueue, unsigned int flags) {
    (void)flags;
    if (pQueue == NULL)
        return CN_ERROR_INVALID_VALUE;
    if (cur_ctx == NULL)
        return CN_CONTEXT_ERROR_INVALID;
    struct CNqueue_st *q = malloc(sizeof *q);
    if (q == NULL)
        return CN_ERROR_NOT_INITIALIZED;
    q->magic = QUEUE_MAGIC;
    q->dev = cur_ctx->dev;
    *pQueue = q;
    return CN_SUCCESS;
}

EXPORT CNresult cnDestroyQueue(CNqueue queue) {
    if (queue == NULL || queue->magic != QUEUE_MAGIC)
        return CN_ERROR_INVALID_HANDLE;
    queue->magic = 0;
    free(queue);
    return CN_SUCCESS;
}

EXPORT CNresult cnQueueSync(CNqueue queue) {
    int dev;
    CNresult rc = queue_dev(queue, &dev);
    return rc != CN_SUCCESS ? rc : sim_rc(sim_dev_sync(SIM_VENDOR_CAMBRICON, dev));
}

EXPORT CNresult cnCreateNotifier(CNnotifier *notifier, unsigned int flags) {
    (void)flags;
    if (notifier == NULL)
        return CN_ERROR_INVALID_VALUE;
    *notifier = (CNnotifier)sim_event_new();
    return *notifier != NULL ? CN_SUCCESS : CN_ERROR_NOT_INITIALIZED;
}

EXPORT CNresult cnPlaceNotifier(CNnotifier notifier, CNqueue queue) {
    int dev;
    CNresult rc = queue_dev(queue, &dev);
    if (rc != CN_SUCCESS)
        return rc;
    int r = sim_event_record((struct sim_event *)notifier, SIM_VENDOR_CAMBRICON, dev);
    return r == SIM_DEV_BADDEV && notifier != NULL ? CN_ERROR_INVALID_HANDLE : sim_rc(r);
}

EXPORT CNresult cnWaitNotifier(CNnotifier notifier) {
    return sim_event_wait((struct sim_event *)notifier) == SIM_DEV_OK ? CN_SUCCESS : CN_ERROR_INVALID_HANDLE;
}

EXPORT CNresult cnDestroyNotifier(CNnotifier notifier) {
    return sim_event_free((struct sim_event *)notifier) == SIM_DEV_OK ? CN_SUCCESS : CN_ERROR_INVALID_HANDLE;
}

/* kernelParams[0] points to the kernel's cost in floating-point operations (unsigned long long). */
EXPORT CNresult cnInvokeKernel(CNkernel hkernel, unsigned int dimx, unsigned int dimy, unsigned int dimz,
                               KernelClass c, unsigned int reserve, CNqueue hqueue, void **kernelParams,
                               void **extra) {
    (void)dimx, (void)dimy, (void)dimz, (void)c, (void)reserve, (void)extra;
    if (hkernel == NULL || kernelParams == NULL || kernelParams[0] == NULL)
        return CN_ERROR_INVALID_VALUE;
    int dev;
    CNresult rc = queue_dev(hqueue, &dev);
    if (rc != CN_SUCCESS)
        return rc;
    unsigned long long flops;
    memcpy(&flops, kernelParams[0], sizeof flops);
    return sim_rc(sim_dev_launch(SIM_VENDOR_CAMBRICON, dev, flops, NULL));
}

static int same_index(int ordinal) {
    return ordinal;
}
SIM_DEVICE_EXPORTS(cndrv, SIM_VENDOR_CAMBRICON, same_index)
