/*
 * compute_check - a fixed CUDA kernel loop for the compute-share check (e2e/gpu/check.sh,
 * run_checks.py). No CUDA toolkit: libcuda.so.1 is dlopen'ed, the kernel is PTX text that the
 * driver JIT-compiles (cuModuleLoadData), and it is launched with cuLaunchKernel.
 *
 *   compute_check calibrate <iters> <grid> <block>   {"ms_per_kernel": ..} (alone, 20 kernels)
 *   compute_check run <seconds> <iters> <grid> <block>
 *       launch batches of 8 kernels, an event after each batch, wait for the batch before
 *       (the queue never drains); {"kernels": n, "wall_s": ..}
 *
 * The kernel's first parameter is its loop count (each thread: iters dependent FMAs); against the
 * simulated driver (driver/runtime) the first parameter is the kernel's cost in flops instead, so
 * the same program dry-runs there. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"

static const char ptx[] =
    ".version 7.0\n"
    ".target sm_70\n"
    ".address_size 64\n"
    ".visible .entry spin(.param .u64 iters, .param .u64 out)\n"
    "{\n"
    "  .reg .pred %p;\n"
    "  .reg .b64 %rd<6>;\n"
    "  .reg .f32 %f<3>;\n"
    "  ld.param.u64 %rd1, [iters];\n"
    "  ld.param.u64 %rd4, [out];\n"
    "  mov.u64 %rd2, 0;\n"
    "  mov.f32 %f1, 0f3F800000;\n"
    "  mov.f32 %f2, 0f3F7FFFFE;\n"
    "LOOP:\n"
    "  fma.rn.f32 %f1, %f1, %f2, 0f33D6BF95;\n"
    "  add.u64 %rd2, %rd2, 1;\n"
    "  setp.lt.u64 %p, %rd2, %rd1;\n"
    "  @%p bra LOOP;\n"
    "  cvta.to.global.u64 %rd5, %rd4;\n"
    "  st.global.f32 [%rd5], %f1;\n"
    "  ret;\n"
    "}\n";

static CUresult (*p_cuInit)(unsigned int);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, CUstream, void **, void **);
static CUresult (*p_cuEventCreate)(CUevent *, unsigned);
static CUresult (*p_cuEventRecord)(CUevent, CUstream);
static CUresult (*p_cuEventSynchronize)(CUevent);

#define LOAD(lib, var, name)                                                                             \
    do {                                                                                                 \
        *(void **)(&var) = dlsym(lib, name);                                                             \
        if (var == NULL) {                                                                               \
            printf("{\"error\": \"libcuda.so.1 has no %s\"}\n", name);                                  \
            exit(2);                                                                                     \
        }                                                                                                \
    } while (0)

static CUfunction fn;
static CUdeviceptr out;

static void setup(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("{\"error\": \"dlopen libcuda.so.1: %s\"}\n", dlerror());
        exit(2);
    }
    LOAD(lib, p_cuInit, "cuInit");
    LOAD(lib, p_cuDeviceGet, "cuDeviceGet");
    LOAD(lib, p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    LOAD(lib, p_cuCtxSetCurrent, "cuCtxSetCurrent");
    LOAD(lib, p_cuCtxSynchronize, "cuCtxSynchronize");
    LOAD(lib, p_cuMemAlloc, "cuMemAlloc_v2");
    LOAD(lib, p_cuModuleLoadData, "cuModuleLoadData");
    LOAD(lib, p_cuModuleGetFunction, "cuModuleGetFunction");
    LOAD(lib, p_cuLaunchKernel, "cuLaunchKernel");
    LOAD(lib, p_cuEventCreate, "cuEventCreate");
    LOAD(lib, p_cuEventRecord, "cuEventRecord");
    LOAD(lib, p_cuEventSynchronize, "cuEventSynchronize");
    CUdevice d;
    CUcontext c;
    CUmodule m;
    CUresult rc = p_cuInit(0);
    const char *stage = "cuInit";
    if (rc == CUDA_SUCCESS && (stage = "cuDeviceGet", rc = p_cuDeviceGet(&d, 0)) == CUDA_SUCCESS &&
        (stage = "cuDevicePrimaryCtxRetain", rc = p_cuDevicePrimaryCtxRetain(&c, d)) == CUDA_SUCCESS &&
        (stage = "cuCtxSetCurrent", rc = p_cuCtxSetCurrent(c)) == CUDA_SUCCESS &&
        (stage = "cuModuleLoadData", rc = p_cuModuleLoadData(&m, ptx)) == CUDA_SUCCESS &&
        (stage = "cuModuleGetFunction", rc = p_cuModuleGetFunction(&fn, m, "spin")) == CUDA_SUCCESS)
        (stage = "cuMemAlloc", rc = p_cuMemAlloc(&out, 64));
    if (rc != CUDA_SUCCESS) {
        printf("{\"error\": \"%s failed with %d\"}\n", stage, rc);
        exit(2);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static CUresult launch(unsigned long long *iters, unsigned grid, unsigned block) {
    void *params[2] = {iters, &out};
    return p_cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, NULL, params, NULL);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s calibrate <iters> <grid> <block> | run <seconds> <iters> <grid> <block>\n",
                argv[0]);
        return 2;
    }
    setup();
    if (strcmp(argv[1], "calibrate") == 0) {
        unsigned long long iters = strtoull(argv[2], NULL, 10);
        unsigned grid = (unsigned)atoi(argv[3]), block = (unsigned)atoi(argv[4]);
        CUresult rc = launch(&iters, grid, block); /* warm-up (JIT, clocks) */
        rc = rc ? rc : p_cuCtxSynchronize();
        double t0 = now();
        for (int i = 0; i < 20 && rc == CUDA_SUCCESS; i++)
            rc = launch(&iters, grid, block);
        rc = rc ? rc : p_cuCtxSynchronize();
        double ms = (now() - t0) * 1e3 / 20;
        printf("{\"ms_per_kernel\": %.6f, \"rc\": %d}\n", ms, rc);
        return rc == CUDA_SUCCESS ? 0 : 1;
    }
    if (strcmp(argv[1], "run") == 0 && argc >= 6) {
        double seconds = atof(argv[2]);
        unsigned long long iters = strtoull(argv[3], NULL, 10);
        unsigned grid = (unsigned)atoi(argv[4]), block = (unsigned)atoi(argv[5]);
        CUevent ev[2];
        CUresult rc = p_cuEventCreate(&ev[0], 0);
        rc = rc ? rc : p_cuEventCreate(&ev[1], 0);
        unsigned long long kernels = 0, batches = 0;
        double t0 = now(), end = t0 + seconds;
        while (rc == CUDA_SUCCESS && now() < end) {
            for (int i = 0; i < 8 && rc == CUDA_SUCCESS; i++, kernels++)
                rc = launch(&iters, grid, block);
            int cur = (int)(++batches % 2);
            rc = rc ? rc : p_cuEventRecord(ev[cur], NULL);
            if (rc == CUDA_SUCCESS && batches > 1)
                rc = p_cuEventSynchronize(ev[1 - cur]);
        }
        rc = rc ? rc : p_cuCtxSynchronize();
        printf("{\"kernels\": %llu, \"wall_s\": %.6f, \"rc\": %d}\n", kernels, now() - t0, rc);
        return rc == CUDA_SUCCESS ? 0 : 1;
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
