/*
 * t_compute - a workload for compute limits: launches simulated kernels through one runtime's
 * launch entry points (all of them in turn) and synchronises every few launches, like a training
 * loop. Linked against the simulated runtimes (driver/runtime); run under libhcs_interceptor.so.
 *
 *   t_compute <cuda|acl|hip|cnrt|acl-op|aclnn|cndrv> <device> <seconds> <flops per kernel> [batch]
 *
 * acl-op: ACL operators (aclopExecuteV2, aclopExecute, aclopExecWithHandle in turn); aclnn: the
 * two-phase aclnn API (aclnnXxxGetWorkspaceSize + aclnnXxx, whose executor runs through
 * libnnopbase.so's CommonOpExecutorRun); cndrv: Cambricon's driver API (cnInvokeKernel). They run
 * on the Ascend / Cambricon devices of the acl / cnrt modes.
 *
 * Prints one JSON line: {"pid", "launches", "wall_ns", "cpu_ns", "rc"}. The device time each
 * process got is read from the simulated device's own accounting (bench/compute_share.py).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"

static uint64_t clk(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define DEPTH 4 /* batches in flight */

static void kernel_stub(void) {
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s <cuda|acl|hip|cnrt> <device> <seconds> <flops> [batch]\n", argv[0]);
        return 2;
    }
    const char *rt = argv[1];
    int dev = atoi(argv[2]);
    double seconds = atof(argv[3]);
    unsigned long long flops = strtoull(argv[4], NULL, 10);
    int batch = argc > 5 ? atoi(argv[5]) : 4;
    void *params[1] = {&flops};
    int rc = 0;
    CUstream cs = NULL;
    CUfunction cf = NULL;
    CUgraphExec cge = NULL;
    hipStream_t hs = NULL;
    hipFunction_t hf = NULL;
    hipGraphExec_t hge = NULL;
    aclrtStream as = NULL;
    cnrtQueue_t cq = NULL;
    int acl_handle = 1;
    int acl_mode = 0; /* 0 aclrtLaunchKernel, 1 operators, 2 aclnn */
    CNqueue nq = NULL;
    aclDataBuffer *op_in[1] = {NULL};
    aclopHandle *op_handle = NULL;
    if (strcmp(rt, "cuda") == 0) {
        CUdevice d;
        CUcontext ctx;
        CUmodule mod;
        CUgraph graph;
        rc = cuInit(0);
        rc = rc ? rc : cuDeviceGet(&d, dev);
        rc = rc ? rc : cuDevicePrimaryCtxRetain(&ctx, d);
        rc = rc ? rc : cuCtxSetCurrent(ctx);
        rc = rc ? rc : cuModuleLoadData(&mod, "hcs-sim");
        rc = rc ? rc : cuModuleGetFunction(&cf, mod, "flops");
        rc = rc ? rc : cuStreamCreate(&cs, 0);
        rc = rc ? rc : cuStreamBeginCapture_v2(cs, CU_STREAM_CAPTURE_MODE_GLOBAL);
        rc = rc ? rc : cuLaunchKernel(cf, 1, 1, 1, 1, 1, 1, 0, cs, params, NULL);
        rc = rc ? rc : cuStreamEndCapture(cs, &graph);
        rc = rc ? rc : cuGraphInstantiateWithFlags(&cge, graph, 0);
    } else if (strcmp(rt, "hip") == 0) {
        hipModule_t mod;
        hipGraph_t graph;
        rc = hipSetDevice(dev);
        rc = rc ? rc : hipModuleLoadData(&mod, "hcs-sim");
        rc = rc ? rc : hipModuleGetFunction(&hf, mod, "flops");
        rc = rc ? rc : hipStreamCreate(&hs);
        rc = rc ? rc : hipStreamBeginCapture(hs, hipStreamCaptureModeGlobal);
        rc = rc ? rc : hipModuleLaunchKernel(hf, 1, 1, 1, 1, 1, 1, 0, hs, params, NULL);
        rc = rc ? rc : hipStreamEndCapture(hs, &graph);
        rc = rc ? rc : hipGraphInstantiateWithFlags(&hge, graph, 0);
    } else if (strcmp(rt, "acl") == 0 || strcmp(rt, "acl-op") == 0 || strcmp(rt, "aclnn") == 0) {
        acl_mode = strcmp(rt, "acl-op") == 0 ? 1 : strcmp(rt, "aclnn") == 0 ? 2 : 0;
        rc = aclInit(NULL);
        rc = rc ? rc : aclrtSetDevice(dev);
        rc = rc ? rc : aclrtCreateStream(&as);
        if (rc == 0 && acl_mode == 1) {
            op_in[0] = aclCreateDataBuffer(&flops, sizeof flops);
            rc = op_in[0] == NULL ? 1 : aclopCreateHandle("HcsSimFlops", 1, NULL, 0, NULL, NULL, &op_handle);
        }
    } else if (strcmp(rt, "cndrv") == 0) {
        CNdev d;
        CNcontext ctx;
        rc = cnInit(0);
        rc = rc ? rc : cnDeviceGet(&d, dev);
        rc = rc ? rc : cnCtxCreate(&ctx, 0, d);
        rc = rc ? rc : cnCreateQueue(&nq, 0);
    } else if (strcmp(rt, "cnrt") == 0) {
        rc = cnrtSetDevice(dev);
        rc = rc ? rc : cnrtQueueCreate(&cq);
    } else {
        fprintf(stderr, "unknown runtime %s\n", rt);
        return 2;
    }
    if (rc != 0) {
        printf("{\"pid\": %d, \"rc\": %d, \"stage\": \"setup\"}\n", (int)getpid(), rc);
        return 1;
    }
    uint64_t t0 = clk(CLOCK_MONOTONIC), c0 = clk(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t end = t0 + (uint64_t)(seconds * 1e9);
    unsigned long long launches = 0, batches = 0;
    CUevent cev[DEPTH] = {NULL};
    hipEvent_t hev[DEPTH] = {NULL};
    aclrtEvent aev[DEPTH] = {NULL};
    cnrtNotifier_t nev[DEPTH] = {NULL};
    CNnotifier dev_n[DEPTH] = {NULL};
    for (int i = 0; i < DEPTH && rc == 0; i++)
        rc = cs != NULL ? cuEventCreate(&cev[i], 0) : hs != NULL ? hipEventCreate(&hev[i])
           : as != NULL ? aclrtCreateEvent(&aev[i]) : nq != NULL ? cnCreateNotifier(&dev_n[i], 0)
                        : cnrtNotifierCreate(&nev[i]);
    dim3 one = {1, 1, 1};
    cnrtDim3_t cone = {1, 1, 1};
    /* T_COMPUTE_GETPROC=1: CUDA launches through the pointer cuGetProcAddress hands out */
    __typeof__(&cuLaunchKernel) launch_fn = cuLaunchKernel;
    const char *gp = getenv("T_COMPUTE_GETPROC");
    if (cs != NULL && gp != NULL && strcmp(gp, "1") == 0) {
        void *fn = NULL;
        rc = cuGetProcAddress("cuLaunchKernel", &fn, 12000, 0);
        if (rc == 0)
            launch_fn = (__typeof__(&cuLaunchKernel))fn;
    }
    /* T_COMPUTE_DLSYM=1 (aclnn): run the executor through the pointer dlsym hands out for
     * libnnopbase.so's (mangled) CommonOpExecutorRun, as a framework that binds it lazily would */
    __typeof__(&CommonOpExecutorRun) run_fn = NULL;
    const char *ds = getenv("T_COMPUTE_DLSYM");
    if (acl_mode == 2 && ds != NULL && strcmp(ds, "1") == 0) {
        void *h = dlopen("libnnopbase.so", RTLD_NOW | RTLD_NOLOAD);
        run_fn = h != NULL ? (__typeof__(&CommonOpExecutorRun))dlsym(h, HCS_COMMON_OP_EXECUTOR_RUN_SYM) : NULL;
        if (run_fn == NULL)
            rc = 1;
    }
    /* T_COMPUTE_LAUNCHES=n: stop after n launches (instruction counts under callgrind) */
    const char *nl = getenv("T_COMPUTE_LAUNCHES");
    unsigned long long max_launches = nl != NULL ? strtoull(nl, NULL, 10) : 0;
    while (rc == 0 && clk(CLOCK_MONOTONIC) < end && (max_launches == 0 || launches < max_launches)) {
        for (int i = 0; i < batch && rc == 0; i++, launches++) {
            int k = (int)(launches % 4);
            if (cs != NULL) {
                CUlaunchConfig cfg = {1, 1, 1, 1, 1, 1, 0, cs, NULL, 0};
                if (launch_fn != cuLaunchKernel)
                    k = 0;
                rc = k == 0 ? launch_fn(cf, 1, 1, 1, 1, 1, 1, 0, cs, params, NULL)
                   : k == 1 ? cuLaunchKernelEx(&cfg, cf, params, NULL)
                   : k == 2 ? cuLaunchCooperativeKernel(cf, 1, 1, 1, 1, 1, 1, 0, cs, params)
                            : cuGraphLaunch(cge, cs);
            } else if (hs != NULL) {
                rc = k == 0 ? hipLaunchKernel((const void *)kernel_stub, one, one, params, 0, hs)
                   : k == 1 ? hipModuleLaunchKernel(hf, 1, 1, 1, 1, 1, 1, 0, hs, params, NULL)
                   : k == 2 ? hipExtLaunchKernel((const void *)kernel_stub, one, one, params, 0, hs, NULL, NULL, 0)
                            : hipGraphLaunch(hge, hs);
            } else if (as != NULL && acl_mode == 1) {
                int j = (int)(launches % 3);
                rc = j == 0 ? aclopExecuteV2("HcsSimFlops", 1, NULL, op_in, 0, NULL, NULL, NULL, as)
                   : j == 1 ? aclopExecute("HcsSimFlops", 1, NULL, (const aclDataBuffer *const *)op_in, 0, NULL, NULL,
                                           NULL, as)
                            : aclopExecWithHandle(op_handle, 1, (const aclDataBuffer *const *)op_in, 0, NULL, as);
            } else if (as != NULL && acl_mode == 2) {
                uint64_t ws = 0;
                aclOpExecutor *ex = NULL;
                rc = aclnnHcsSimFlopsGetWorkspaceSize(flops, &ws, &ex);
                rc = rc ? rc : run_fn != NULL ? run_fn(NULL, ws, ex, as) : aclnnHcsSimFlops(NULL, ws, ex, as);
            } else if (as != NULL) {
                rc = aclrtLaunchKernel(&acl_handle, 1, &flops, sizeof flops, as);
            } else if (nq != NULL) {
                rc = cnInvokeKernel((CNkernel)&acl_handle, 1, 1, 1, 1, 0, nq, params, NULL);
            } else {
                rc = cnrtInvokeKernel((const void *)kernel_stub, cone, 1, params, 0, cq);
            }
        }
        /* pipelined like a framework: an event after each batch, wait for the one DEPTH-1 batches
         * before (the queue never drains, a stalled CPU thread does not idle the device) */
        int cur = (int)(batches++ % DEPTH), prev = (int)(batches % DEPTH);
        if (rc == 0)
            rc = cs != NULL ? cuEventRecord(cev[cur], cs) : hs != NULL ? hipEventRecord(hev[cur], hs)
               : as != NULL ? aclrtRecordEvent(aev[cur], as) : nq != NULL ? cnPlaceNotifier(dev_n[cur], nq)
                            : cnrtPlaceNotifier(nev[cur], cq);
        if (rc == 0 && batches >= DEPTH)
            rc = cs != NULL ? cuEventSynchronize(cev[prev]) : hs != NULL ? hipEventSynchronize(hev[prev])
               : as != NULL ? aclrtSynchronizeEvent(aev[prev]) : nq != NULL ? cnWaitNotifier(dev_n[prev])
                            : cnrtWaitNotifier(nev[prev]);
    }
    if (rc == 0)
        rc = cs != NULL ? cuStreamSynchronize(cs) : hs != NULL ? hipStreamSynchronize(hs)
           : as != NULL ? aclrtSynchronizeStream(as) : nq != NULL ? cnQueueSync(nq) : cnrtQueueSync(cq);
    uint64_t wall = clk(CLOCK_MONOTONIC) - t0, cpu = clk(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("{\"pid\": %d, \"launches\": %llu, \"wall_ns\": %llu, \"cpu_ns\": %llu, \"rc\": %d}\n", (int)getpid(),
           launches, (unsigned long long)wall, (unsigned long long)cpu, rc);
    return rc == 0 ? 0 : 1;
}
