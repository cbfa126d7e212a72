/*
 * t_vendors - Ascend ACL, Hygon HIP and Cambricon CNRT cases for libhcs_interceptor.so, linked
 * against the simulated runtimes. Usage: t_vendors <acl|hip|cnrt> <boundary|physical>.
 * boundary: quota (HCS_TEST_QUOTA) exact at the edge, vendor OOM code, queries report the quota.
 * physical: no interceptor; the simulated card's capacity (HCS_TEST_PHYS) is enforced.
 */
#include "hcs_vendor_abi.h"
#include "t_common.h"

struct vendor {
    const char *name;
    int oom;
    int (*alloc)(void **, size_t);
    int (*free_)(void *);
    int (*info)(size_t *, size_t *);
};

static int acl_alloc(void **p, size_t n) { return aclrtMalloc(p, n, 0); }
static int acl_free(void *p) { return aclrtFree(p); }
static int acl_info(size_t *f, size_t *t) { return aclrtGetMemInfo(ACL_HBM_MEM, f, t); }
static int acl_alloc_cached(void **p, size_t n) { return aclrtMallocCached(p, n, 0); }
static int hip_alloc(void **p, size_t n) { return hipMalloc(p, n); }
static int hip_alloc_managed(void **p, size_t n) { return hipMallocManaged(p, n, 1); }
static int hip_alloc_async(void **p, size_t n) { return hipMallocAsync(p, n, NULL); }
static int hip_free(void *p) { return hipFree(p); }
static int hip_free_async(void *p) { return hipFreeAsync(p, NULL); }
static int hip_info(size_t *f, size_t *t) { return hipMemGetInfo(f, t); }
static int cnrt_alloc(void **p, size_t n) { return cnrtMalloc(p, n); }
static int cnrt_free(void *p) { return cnrtFree(p); }
static int cnrt_info(size_t *f, size_t *t) { return cnrtMemGetInfo(f, t); }

static void boundary(const struct vendor *v, uint64_t q) {
    void *a = NULL, *b = NULL;
    size_t f = 0, t = 0;
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(t, q);
    CHECK_U64(f, q);
    CHECK_EQ(v->alloc(&a, q - 100), 0);
    CHECK_EQ(v->alloc(&b, 101), v->oom);
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(f, 100);
    CHECK_EQ(v->alloc(&b, 100), 0);
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(f, 0);
    CHECK_U64(t, q);
    void *c = NULL;
    CHECK_EQ(v->alloc(&c, 1), v->oom);
    CHECK_EQ(v->free_(b), 0);
    CHECK_EQ(v->free_(a), 0);
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(f, q);
    CHECK_EQ(v->alloc(&a, q + 1), v->oom);
    CHECK_EQ(v->alloc(&a, q), 0);
    CHECK_EQ(v->free_(a), 0);
}

static void physical(const struct vendor *v, uint64_t phys) {
    void *a = NULL, *b = NULL;
    size_t f = 0, t = 0;
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(t, phys);
    CHECK_EQ(v->alloc(&a, phys + 1), v->oom);
    CHECK_EQ(v->alloc(&a, phys), 0);
    CHECK_EQ(v->alloc(&b, 1), v->oom);
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(f, 0);
    CHECK_EQ(v->free_(a), 0);
    CHECK_EQ(v->info(&f, &t), 0);
    CHECK_U64(f, phys);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: t_vendors <acl|hip|cnrt> <boundary|physical>\n");
        return 2;
    }
    const char *vn = argv[1], *mode = argv[2];
    struct vendor vs[6];
    int n = 0;
    if (strcmp(vn, "acl") == 0) {
        if (aclInit(NULL) != ACL_SUCCESS || aclrtSetDevice(0) != ACL_SUCCESS) {
            fprintf(stderr, "setup: aclInit/aclrtSetDevice failed\n");
            return 2;
        }
        vs[n++] = (struct vendor){"aclrtMalloc", ACL_ERROR_RT_MEMORY_ALLOCATION, acl_alloc, acl_free, acl_info};
        vs[n++] = (struct vendor){"aclrtMallocCached", ACL_ERROR_RT_MEMORY_ALLOCATION, acl_alloc_cached, acl_free,
                                  acl_info};
    } else if (strcmp(vn, "hip") == 0) {
        if (hipSetDevice(0) != hipSuccess) {
            fprintf(stderr, "setup: hipSetDevice failed\n");
            return 2;
        }
        vs[n++] = (struct vendor){"hipMalloc", hipErrorOutOfMemory, hip_alloc, hip_free, hip_info};
        vs[n++] = (struct vendor){"hipMallocManaged", hipErrorOutOfMemory, hip_alloc_managed, hip_free, hip_info};
        vs[n++] = (struct vendor){"hipMallocAsync", hipErrorOutOfMemory, hip_alloc_async, hip_free_async, hip_info};
    } else if (strcmp(vn, "cnrt") == 0) {
        if (cnrtSetDevice(0) != cnrtSuccess) {
            fprintf(stderr, "setup: cnrtSetDevice failed\n");
            return 2;
        }
        vs[n++] = (struct vendor){"cnrtMalloc", cnrtErrorNoMem, cnrt_alloc, cnrt_free, cnrt_info};
    } else {
        fprintf(stderr, "unknown vendor %s\n", vn);
        return 2;
    }
    for (int i = 0; i < n; i++) {
        int before = t_failures;
        if (strcmp(mode, "boundary") == 0)
            boundary(&vs[i], env_u64("HCS_TEST_QUOTA"));
        else
            physical(&vs[i], env_u64("HCS_TEST_PHYS"));
        if (t_failures != before)
            fprintf(stderr, "  (in %s)\n", vs[i].name);
    }
    if (strcmp(vn, "hip") == 0 && strcmp(mode, "boundary") == 0) {
        /* pitch: charged pitch*height (256-byte pitch in the simulated runtime) */
        uint64_t q = env_u64("HCS_TEST_QUOTA");
        void *p = NULL;
        size_t pitch = 0, f = 0, t = 0;
        CHECK_EQ(hipMallocPitch(&p, &pitch, 200, 10), 0);
        CHECK_EQ(pitch, 256);
        CHECK_EQ(hipMemGetInfo(&f, &t), 0);
        CHECK_U64(f, q - 2560);
        CHECK_EQ(hipFree(p), 0);
        CHECK_EQ(hipMemGetInfo(&f, &t), 0);
        CHECK_U64(f, q);
    }
    char name[64];
    snprintf(name, sizeof name, "%s %s", vn, mode);
    return t_finish(name);
}
