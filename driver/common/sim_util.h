/* sim_util.h - tiny helpers shared by the simulated management libraries (header-only). */
#ifndef HCS_SIM_UTIL_H
#define HCS_SIM_UTIL_H

#include <string.h>
#include <time.h>

/* Library-visibility: every library is built with -fvisibility=hidden; only SIM_EXPORT symbols
 * are exported (the vendor ABI). */
#define SIM_EXPORT __attribute__((visibility("default")))

/* Copy a NUL-terminated string into a caller buffer of `cap` bytes. Returns 0, or -1 when it does
 * not fit (the buffer is then left holding an empty string if cap > 0). */
static inline int sim_copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (dst == NULL || n + 1 > cap) {
        if (dst != NULL && cap > 0)
            dst[0] = '\0';
        return -1;
    }
    memcpy(dst, src, n + 1);
    return 0;
}

static inline long long sim_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sim_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Case-insensitive substring test. */
static inline int sim_contains(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p != '\0'; p++) {
        size_t i = 0;
        while (i < n && p[i] != '\0') {
            char a = p[i], b = needle[i];
            if (a >= 'A' && a <= 'Z')
                a = (char)(a - 'A' + 'a');
            if (b >= 'A' && b <= 'Z')
                b = (char)(b - 'A' + 'a');
            if (a != b)
                break;
            i++;
        }
        if (i == n)
            return 1;
    }
    return n == 0;
}

#endif
