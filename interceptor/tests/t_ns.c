/*
 * libt_ns.so - a library that allocates device memory itself (linked against libcuda.so.1 the way
 * a framework's kernels library is). t_cuda's "dlmopen_alloc" case loads it with
 * dlmopen(LM_ID_NEWLM): in a new link-map namespace neither LD_PRELOAD nor /etc/ld.so.preload put
 * the interceptor, so its calls would bind straight to the vendor runtime - unless the load is
 * refused.
 */
#include <stdint.h>

#include "hcs_vendor_abi.h"

__attribute__((visibility("default"))) int t_ns_alloc(uint64_t bytes) {
    CUcontext c;
    CUdeviceptr p;
    if (cuInit(0) != CUDA_SUCCESS || cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS ||
        cuCtxSetCurrent(c) != CUDA_SUCCESS)
        return -1;
    return (int)cuMemAlloc_v2(&p, bytes);
}
