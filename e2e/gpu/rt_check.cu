// rt_check.cu - CUDA runtime API checks of libhcs_interceptor.so (built only when nvcc exists).
//   rt_check limits <quota>    cudaMemGetInfo reports the quota; past it cudaMalloc fails
//   rt_check loop <n> <bytes>  n cudaMalloc/cudaFree pairs, ns per pair
// One JSON line on stdout.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    if (cudaFree(0) != cudaSuccess) { printf("{\"error\": \"no CUDA device\"}\n"); return 2; }
    const size_t MiB = 1 << 20;
    if (strcmp(argv[1], "limits") == 0) {
        size_t q = strtoull(argv[2], nullptr, 10);
        size_t f0 = 0, t0 = 0, f1 = 0, t1 = 0;
        cudaError_t i0 = cudaMemGetInfo(&f0, &t0);
        void *a = nullptr, *b = nullptr, *x = nullptr;
        cudaError_t ra = cudaMalloc(&a, q - 256 * MiB);
        cudaError_t rover = cudaMalloc(&x, 512 * MiB);
        if (rover == cudaSuccess) cudaFree(x);
        cudaGetLastError();
        cudaError_t rrest = cudaMalloc(&b, 256 * MiB);
        cudaError_t i1 = cudaMemGetInfo(&f1, &t1);
        if (ra == cudaSuccess) cudaFree(a);
        if (rrest == cudaSuccess) cudaFree(b);
        bool pass = i0 == cudaSuccess && t0 == q && ra == cudaSuccess && rover == cudaErrorMemoryAllocation &&
                    rrest == cudaSuccess && i1 == cudaSuccess && f1 == 0;
        printf("{\"mode\": \"cudart\", \"pass\": %s, \"total_reported\": %zu, \"free_reported\": %zu, "
               "\"cudaMalloc_quota_minus_256MiB\": %d, \"cudaMalloc_512MiB_over\": %d, \"cudaMalloc_exact_rest\": %d, "
               "\"free_when_full\": %zu}\n",
               pass ? "true" : "false", t0, f0, (int)ra, (int)rover, (int)rrest, f1);
        return pass ? 0 : 1;
    }
    if (strcmp(argv[1], "loop") == 0 && argc > 3) {
        long n = atol(argv[2]);
        size_t bytes = strtoull(argv[3], nullptr, 10);
        void *p;
        for (int i = 0; i < 100; i++) { cudaMalloc(&p, bytes); cudaFree(p); }
        long errors = 0;
        auto t0 = std::chrono::steady_clock::now();
        for (long i = 0; i < n; i++)
            if (cudaMalloc(&p, bytes) != cudaSuccess || cudaFree(p) != cudaSuccess) errors++;
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        printf("{\"pairs\": %ld, \"bytes\": %zu, \"ns_per_pair\": %.1f, \"errors\": %ld}\n", n, bytes,
               dt / n * 1e9, errors);
        return errors ? 1 : 0;
    }
    return 2;
}
