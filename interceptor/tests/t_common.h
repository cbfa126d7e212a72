/* t_common.h - tiny check helpers for the interceptor's C test programs. */
#ifndef HCS_T_COMMON_H
#define HCS_T_COMMON_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failures;

#define CHECK(cond)                                                                                      \
    do {                                                                                                 \
        if (!(cond)) {                                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                              \
            t_failures++;                                                                                \
        }                                                                                                \
    } while (0)

#define CHECK_EQ(a, b)                                                                                   \
    do {                                                                                                 \
        long long _a = (long long)(a), _b = (long long)(b);                                              \
        if (_a != _b) {                                                                                  \
            fprintf(stderr, "FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, _a, _b); \
            t_failures++;                                                                                \
        }                                                                                                \
    } while (0)

#define CHECK_U64(a, b)                                                                                  \
    do {                                                                                                 \
        unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b);                   \
        if (_a != _b) {                                                                                  \
            fprintf(stderr, "FAIL %s:%d: %s == %s (%llu != %llu)\n", __FILE__, __LINE__, #a, #b, _a, _b); \
            t_failures++;                                                                                \
        }                                                                                                \
    } while (0)

static inline uint64_t env_u64(const char *name) {
    const char *v = getenv(name);
    if (v == NULL) {
        fprintf(stderr, "test setup: %s is not set\n", name);
        exit(2);
    }
    return strtoull(v, NULL, 10);
}

static inline int t_finish(const char *name) {
    if (t_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, t_failures);
        return 1;
    }
    printf("ok %s\n", name);
    return 0;
}

#endif
