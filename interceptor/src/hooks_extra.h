/*
 * hooks_extra.h - the allocation APIs beyond the plain malloc/free pairs (issue 22): CUDA virtual
 * memory management, stream-ordered memory pools, arrays and the v1 entry points; HIP, ACL and
 * CNRT equivalents. The hooks themselves live in hooks_extra.c, which hcs_interceptor.c includes
 * (one translation unit: they share its static state, accounting helpers and symbol table).
 *
 * X(name, lib, hooked), appended to HCS_SYMBOLS in hcs_interceptor.c.
 */
#ifndef HCS_HOOKS_EXTRA_H
#define HCS_HOOKS_EXTRA_H

#define HCS_SYMBOLS_EXTRA(X)                                                                             \
    X(cuMemAlloc, LIB_CUDA, 1)                                                                           \
    X(cuMemFree, LIB_CUDA, 1)                                                                            \
    X(cuMemMap, LIB_CUDA, 1)                                                                             \
    X(cuMemUnmap, LIB_CUDA, 1)                                                                           \
    X(cuMemRetainAllocationHandle, LIB_CUDA, 1)                                                          \
    X(cuMemPoolCreate, LIB_CUDA, 1)                                                                      \
    X(cuMemPoolDestroy, LIB_CUDA, 1)                                                                     \
    X(cuMemPoolTrimTo, LIB_CUDA, 1)                                                                      \
    X(cuStreamSynchronize, LIB_CUDA, 1)                                                                  \
    X(cuStreamSynchronize_ptsz, LIB_CUDA, 1)                                                             \
    X(cuCtxSynchronize, LIB_CUDA, 1)                                                                     \
    X(cuArrayCreate_v2, LIB_CUDA, 1)                                                                     \
    X(cuArray3DCreate_v2, LIB_CUDA, 1)                                                                   \
    X(cuArrayDestroy, LIB_CUDA, 1)                                                                       \
    X(cuMipmappedArrayCreate, LIB_CUDA, 1)                                                               \
    X(cuMipmappedArrayDestroy, LIB_CUDA, 1)                                                              \
    X(cuMemPoolGetAttribute, LIB_CUDA, 0)                                                                \
    X(cuDeviceGetMemPool, LIB_CUDA, 0)                                                                   \
    X(hipExtMallocWithFlags, LIB_HIP, 1)                                                                 \
    X(hipMemCreate, LIB_HIP, 1)                                                                          \
    X(hipMemRelease, LIB_HIP, 1)                                                                         \
    X(hipMemMap, LIB_HIP, 1)                                                                             \
    X(hipMemUnmap, LIB_HIP, 1)                                                                           \
    X(aclrtMallocAlign32, LIB_ACL, 1)                                                                    \
    X(aclrtMallocPhysical, LIB_ACL, 1)                                                                   \
    X(aclrtFreePhysical, LIB_ACL, 1)                                                                     \
    X(aclrtMapMem, LIB_ACL, 1)                                                                           \
    X(aclrtUnmapMem, LIB_ACL, 1)                                                                         \
    X(cnrtMallocConstant, LIB_CNRT, 1)

/* per-thread-default-stream variant (cuda.h maps cuStreamSynchronize to it under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM) */
CUresult cuStreamSynchronize_ptsz(CUstream hStream);

#endif /* HCS_HOOKS_EXTRA_H */
