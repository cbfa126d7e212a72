/*
 * vram_counter - the checkpoint tests' workload: a counter that holds "simulated VRAM" state.
 *
 * In the simulated runtimes device memory is host memory of the process (driver/runtime/sim_mem.c), so a
 * buffer of VRAM_MIB MiB filled with a known pattern stands for the device state CRIU must carry over.
 * Every 100 ms it advances one step, folds the step into the buffer (one 64-bit word per MiB), checks one
 * MiB chunk against the pattern, and prints one line:
 *
 *     step=<n> t=<unix seconds, ms> vram_mib=<m> ok=<1|0> device=<contents of $HCS_DEVICE_FILE or ->
 *
 * ok=0 means the state did not survive (a restore that lost or corrupted memory). The device line is read
 * from a file each step, so a restored process reports the device its new pod was assigned.
 * Static (no libc in the busybox image): gcc -static -O2.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)

static uint64_t pattern(uint64_t word) { return word * 0x9E3779B97F4A7C15ULL; }

static void read_device(const char *path, char *out, size_t n) {
    snprintf(out, n, "-");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(out, (int)n, f)) out[strcspn(out, "\n")] = 0;
    else snprintf(out, n, "-");
    fclose(f);
}

int main(int argc, char **argv) {
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    const char *devfile = getenv("HCS_DEVICE_FILE");
    size_t words_per_mib = MIB / sizeof(uint64_t);
    uint64_t *buf = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < mib * words_per_mib; i++) buf[i] = pattern(i);
    /* buf[m * words_per_mib] holds the step sum for chunk m: pattern + step_sum */
    uint64_t step = 0;
    char dev[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        step++;
        for (size_t m = 0; m < mib; m++) buf[m * words_per_mib] += step;
        uint64_t sum = step * (step + 1) / 2;
        size_t m = step % (mib ? mib : 1);
        int ok = 1;
        for (size_t i = 0; i < words_per_mib && mib; i++) {
            size_t w = m * words_per_mib + i;
            uint64_t want = pattern(w) + (i == 0 ? sum : 0);
            if (buf[w] != want) { ok = 0; break; }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        read_device(devfile, dev, sizeof dev);
        printf("step=%llu t=%lld.%03ld vram_mib=%lu ok=%d device=%s\n", (unsigned long long)step,
               (long long)ts.tv_sec, ts.tv_nsec / 1000000, mib, ok, dev);
        struct timespec d = {0, 100 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
}
