/*
 * Simulated libnnopbase.so: the aclnn operator framework's executor. In CANN every generated
 * aclnnXxx(workspace, workspaceSize, executor, stream) - the second phase of the two-phase operator
 * API - runs the executor its aclnnXxxGetWorkspaceSize built by calling this library's
 * CommonOpExecutorRun (a C++ function: the exported symbol is its mangled name,
 * HCS_COMMON_OP_EXECUTOR_RUN_SYM), which launches the op's kernels through the runtime below ACL.
 * Here an executor holds one kernel's cost in floating-point operations; running it enqueues that
 * on the stream's device (libascendcl.so's hcs_sim_acl_enqueue, not an ACL entry point) and frees
 * the executor (a non-repeatable executor is single-use in CANN too).
 */
#define _GNU_SOURCE
#include <stdlib.h>

#include "hcs_vendor_abi.h"
#include "hcs_vendor_launch.h"

#define EXPORT __attribute__((visibility("default")))
#define EXECUTOR_MAGIC 0x4e4e4f31u
#define ACLNN_ERR_PARAM_NULLPTR 161001
#define ACLNN_ERR_PARAM_INVALID 161002

struct aclOpExecutor {
    unsigned magic;
    unsigned long long flops;
};

aclError hcs_sim_acl_enqueue(aclrtStream stream, unsigned long long flops);

/* For the simulated opapi's first phase (the real one builds executors in C++ inside this library). */
EXPORT aclOpExecutor *hcs_sim_nnop_executor_new(unsigned long long flops) {
    struct aclOpExecutor *e = malloc(sizeof *e);
    if (e != NULL) {
        e->magic = EXECUTOR_MAGIC;
        e->flops = flops;
    }
    return e;
}

EXPORT aclnnStatus CommonOpExecutorRun(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
                                       aclrtStream stream) {
    (void)workspace, (void)workspaceSize;
    if (executor == NULL)
        return ACLNN_ERR_PARAM_NULLPTR;
    if (executor->magic != EXECUTOR_MAGIC)
        return ACLNN_ERR_PARAM_INVALID;
    unsigned long long flops = executor->flops;
    executor->magic = 0;
    free(executor);
    return hcs_sim_acl_enqueue(stream, flops) == ACL_SUCCESS ? 0 : ACLNN_ERR_INNER;
}
