/*
 * Simulated libopapi.so: one aclnn operator in CANN's two-phase form. Like every generated aclnn
 * op, its second phase is a call of libnnopbase.so's CommonOpExecutorRun (through the PLT: the
 * dynamic linker resolves it, so an LD_PRELOADed definition of the same symbol takes its place).
 */
#define _GNU_SOURCE
#include <stdlib.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"

#define EXPORT __attribute__((visibility("default")))
#define ACLNN_ERR_PARAM_NULLPTR 161001

aclOpExecutor *hcs_sim_nnop_executor_new(unsigned long long flops);

EXPORT aclnnStatus aclnnHcsSimFlopsGetWorkspaceSize(uint64_t flops, uint64_t *workspaceSize, aclOpExecutor **executor) {
    if (workspaceSize == NULL || executor == NULL)
        return ACLNN_ERR_PARAM_NULLPTR;
    *executor = hcs_sim_nnop_executor_new(flops);
    *workspaceSize = 0;
    return *executor != NULL ? 0 : ACLNN_ERR_INNER;
}

EXPORT aclnnStatus aclnnHcsSimFlops(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
                                    aclrtStream stream) {
    return CommonOpExecutorRun(workspace, workspaceSize, executor, stream);
}
