/*
 * hcs_vendor_launch.h - the kernel-launch, stream, event and graph subset of the vendor ABIs that
 * HCS's compute limits touch (cuda.h, acl/acl_rt.h, acl/acl_op.h, aclnn, hip/hip_runtime_api.h, cnrt.h,
 * cn_api.h). Declared as
 * the vendors' own headers do, so the interceptor, the simulated runtimes (driver/runtime) and the
 * tests build without any vendor SDK. Kept apart from hcs_vendor_abi.h (the VRAM subset).
 *
 * Simulated kernels (driver/runtime, driver/README.md "Simulated device"): any function handle the
 * fake runtimes hand out runs a kernel whose cost in floating-point operations is the unsigned
 * long long that the FIRST kernel parameter points to (kernelParams[0] / args[0]; ACL: the first
 * 8 bytes of argsData). The real signatures are unchanged.
 */
#ifndef HCS_VENDOR_LAUNCH_H
#define HCS_VENDOR_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#include "hcs_vendor_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ CUDA driver API */
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUlaunchAttribute_st CUlaunchAttribute;

typedef struct CUlaunchConfig_st {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

#define CUDA_ERROR_NOT_READY 600
#define CUDA_ERROR_INVALID_HANDLE 400
#define CU_STREAM_CAPTURE_MODE_GLOBAL 0

CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleUnload(CUmodule hmod);
CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name);
CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                        unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                        unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra);
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                             unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                             unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra);
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra);
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                   unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                   unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                   void **kernelParams);
CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags);
CUresult cuStreamDestroy_v2(CUstream hStream);
CUresult cuStreamSynchronize(CUstream hStream);
CUresult cuStreamBeginCapture_v2(CUstream hStream, int mode);
CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags);
CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream);
CUresult cuGraphExecDestroy(CUgraphExec hGraphExec);
CUresult cuGraphDestroy(CUgraph hGraph);
CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags);
CUresult cuEventRecord(CUevent hEvent, CUstream hStream);
CUresult cuEventQuery(CUevent hEvent);
CUresult cuEventSynchronize(CUevent hEvent);
CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult cuEventDestroy_v2(CUevent hEvent);

/* ------------------------------------------------------------------ Ascend ACL runtime */
typedef void *aclrtStream;
typedef void *aclrtFuncHandle;

aclError aclrtCreateStream(aclrtStream *stream);
aclError aclrtDestroyStream(aclrtStream stream);
aclError aclrtSynchronizeStream(aclrtStream stream);
aclError aclrtSynchronizeDevice(void);
typedef void *aclrtEvent;
aclError aclrtCreateEvent(aclrtEvent *event);
aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream);
aclError aclrtSynchronizeEvent(aclrtEvent event);
aclError aclrtDestroyEvent(aclrtEvent event);
aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                           aclrtStream stream);

/* Operator execution (acl/acl_op.h; libascendcl.so). Simulated ops: the cost in floating-point
 * operations is the unsigned long long at the data address of inputs[0]. */
typedef struct aclTensorDesc aclTensorDesc;
typedef struct aclDataBuffer aclDataBuffer;
typedef struct aclopAttr aclopAttr;
typedef struct aclopHandle aclopHandle;
aclDataBuffer *aclCreateDataBuffer(void *data, size_t size);
aclError aclDestroyDataBuffer(const aclDataBuffer *dataBuffer);
aclError aclopExecute(const char *opType, int numInputs, const aclTensorDesc *const inputDesc[],
                      const aclDataBuffer *const inputs[], int numOutputs, const aclTensorDesc *const outputDesc[],
                      aclDataBuffer *const outputs[], const aclopAttr *attr, aclrtStream stream);
aclError aclopExecuteV2(const char *opType, int numInputs, aclTensorDesc *inputDesc[], aclDataBuffer *inputs[],
                        int numOutputs, aclTensorDesc *outputDesc[], aclDataBuffer *outputs[], aclopAttr *attr,
                        aclrtStream stream);
aclError aclopCreateHandle(const char *opType, int numInputs, const aclTensorDesc *const inputDesc[], int numOutputs,
                           const aclTensorDesc *const outputDesc[], const aclopAttr *opAttr, aclopHandle **handle);
void aclopDestroyHandle(aclopHandle *handle);
aclError aclopExecWithHandle(aclopHandle *handle, int numInputs, const aclDataBuffer *const inputs[], int numOutputs,
                             aclDataBuffer *const outputs[], aclrtStream stream);

/* aclnn two-phase operator API (CANN opapi): aclnnXxxGetWorkspaceSize(..., &workspaceSize, &executor)
 * then aclnnXxx(workspace, workspaceSize, executor, stream), which every generated op implements as
 * a call of libnnopbase.so's CommonOpExecutorRun - a C++ function (opdev/op_executor.h, no extern
 * "C"), so its symbol is the Itanium-mangled name below (uint64_t = unsigned long on LP64 Linux,
 * aclrtStream = void *). */
typedef int32_t aclnnStatus;
typedef struct aclOpExecutor aclOpExecutor;
#define HCS_COMMON_OP_EXECUTOR_RUN_SYM "_Z19CommonOpExecutorRunPvmP13aclOpExecutorS_"
aclnnStatus CommonOpExecutorRun(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
                                aclrtStream stream) __asm__(HCS_COMMON_OP_EXECUTOR_RUN_SYM);
#define ACLNN_ERR_INNER 561000
/* The simulated opapi's one operator (libopapi.so): a kernel of `flops` floating-point operations. */
aclnnStatus aclnnHcsSimFlopsGetWorkspaceSize(uint64_t flops, uint64_t *workspaceSize, aclOpExecutor **executor);
aclnnStatus aclnnHcsSimFlops(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor, aclrtStream stream);

/* ------------------------------------------------------------------ HIP */
typedef struct hipModule_st *hipModule_t;
typedef struct hipFunction_st *hipFunction_t;
typedef struct hipEvent_st *hipEvent_t;
typedef struct hipGraph_st *hipGraph_t;
typedef struct hipGraphExec_st *hipGraphExec_t;
typedef struct {
    uint32_t x, y, z;
} dim3;
#define hipErrorNotReady 600
#define hipErrorInvalidHandle 400
#define hipStreamCaptureModeGlobal 0

hipError_t hipModuleLoadData(hipModule_t *module, const void *image);
hipError_t hipModuleGetFunction(hipFunction_t *function, hipModule_t module, const char *kname);
hipError_t hipLaunchKernel(const void *function_address, dim3 numBlocks, dim3 dimBlocks, void **args,
                           size_t sharedMemBytes, hipStream_t stream);
hipError_t hipModuleLaunchKernel(hipFunction_t f, unsigned int gridDimX, unsigned int gridDimY,
                                 unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                 unsigned int blockDimZ, unsigned int sharedMemBytes, hipStream_t stream,
                                 void **kernelParams, void **extra);
hipError_t hipExtLaunchKernel(const void *function_address, dim3 numBlocks, dim3 dimBlocks, void **args,
                              size_t sharedMemBytes, hipStream_t stream, hipEvent_t startEvent,
                              hipEvent_t stopEvent, int flags);
hipError_t hipStreamCreate(hipStream_t *stream);
hipError_t hipStreamDestroy(hipStream_t stream);
hipError_t hipStreamSynchronize(hipStream_t stream);
hipError_t hipDeviceSynchronize(void);
hipError_t hipStreamBeginCapture(hipStream_t stream, int mode);
hipError_t hipStreamEndCapture(hipStream_t stream, hipGraph_t *pGraph);
hipError_t hipGraphInstantiateWithFlags(hipGraphExec_t *pGraphExec, hipGraph_t graph, unsigned long long flags);
hipError_t hipGraphLaunch(hipGraphExec_t graphExec, hipStream_t stream);
hipError_t hipGraphExecDestroy(hipGraphExec_t graphExec);
hipError_t hipGraphDestroy(hipGraph_t graph);
hipError_t hipEventCreate(hipEvent_t *event);
hipError_t hipEventRecord(hipEvent_t event, hipStream_t stream);
hipError_t hipEventSynchronize(hipEvent_t event);
hipError_t hipEventDestroy(hipEvent_t event);

/* ------------------------------------------------------------------ Cambricon CNRT */
typedef struct cnrtQueue *cnrtQueue_t;
typedef struct {
    unsigned int x, y, z;
} cnrtDim3_t;
typedef int cnrtFunctionType_t;

cnrtRet_t cnrtQueueCreate(cnrtQueue_t *pQueue);
cnrtRet_t cnrtQueueDestroy(cnrtQueue_t queue);
cnrtRet_t cnrtQueueSync(cnrtQueue_t queue);
cnrtRet_t cnrtSyncDevice(void);
typedef struct cnrtNotifier *cnrtNotifier_t;
cnrtRet_t cnrtNotifierCreate(cnrtNotifier_t *pNotifier);
cnrtRet_t cnrtPlaceNotifier(cnrtNotifier_t notifier, cnrtQueue_t queue);
cnrtRet_t cnrtWaitNotifier(cnrtNotifier_t notifier);
cnrtRet_t cnrtNotifierDestroy(cnrtNotifier_t notifier);
cnrtRet_t cnrtInvokeKernel(const void *function, cnrtDim3_t dim, cnrtFunctionType_t ktype, void **args,
                           size_t reserved, cnrtQueue_t queue);

/* ------------------------------------------------------------------ Cambricon CNDrv (cn_api.h, libcndrv.so) */
typedef int CNresult;
typedef int CNdev;
typedef struct CNcontext_st *CNcontext;
typedef struct CNqueue_st *CNqueue;
typedef struct CNkernel_st *CNkernel;
typedef struct CNnotifier_st *CNnotifier;
typedef int KernelClass;
#define CN_SUCCESS 0
#define CN_ERROR_NOT_INITIALIZED 100002
#define CN_ERROR_INVALID_DEVICE 100005
#define CN_ERROR_INVALID_VALUE 100006
#define CN_ERROR_INVALID_HANDLE 100014
#define CN_CONTEXT_ERROR_INVALID 100201
CNresult cnInit(unsigned int flags);
CNresult cnDeviceGet(CNdev *device, int ordinal);
CNresult cnCtxCreate(CNcontext *pctx, unsigned int flags, CNdev dev);
CNresult cnCtxSetCurrent(CNcontext ctx);
CNresult cnCtxGetDevice(CNdev *device);
CNresult cnCtxSync(void);
CNresult cnCreateQueue(CNqueue *pQueue, unsigned int flags);
CNresult cnDestroyQueue(CNqueue queue);
CNresult cnQueueSync(CNqueue queue);
CNresult cnCreateNotifier(CNnotifier *notifier, unsigned int flags);
CNresult cnPlaceNotifier(CNnotifier notifier, CNqueue queue);
CNresult cnWaitNotifier(CNnotifier notifier);
CNresult cnDestroyNotifier(CNnotifier notifier);
/* Simulated kernels: kernelParams[0] points to the cost in floating-point operations. */
CNresult cnInvokeKernel(CNkernel hkernel, unsigned int dimx, unsigned int dimy, unsigned int dimz, KernelClass c,
                        unsigned int reserve, CNqueue hqueue, void **kernelParams, void **extra);

#ifdef __cplusplus
}
#endif

#endif /* HCS_VENDOR_LAUNCH_H */
