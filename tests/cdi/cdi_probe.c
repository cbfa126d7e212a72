/* Loads a vendor runtime library by soname, as an application does, and reports where it came from.
 *
 *   cdi_probe SONAME INIT_SYMBOL|- COUNT_SYMBOL
 *
 * Prints LIB=<path the loader opened>, INIT=<rc>, COUNT=<rc>:<devices>. INIT_SYMBOL is called with a
 * zero argument (cuInit(0), aclInit(NULL)); COUNT_SYMBOL with a pointer to an unsigned int
 * (cuDeviceGetCount, aclrtGetDeviceCount, hipGetDeviceCount, cnrtGetDeviceCount). Exit 0 when the
 * library loaded, 2 otherwise. Used by tests/cdi/test_cdi_host_libraries.py inside a pod.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

typedef int (*init_fn)(void *);
typedef int (*count_fn)(unsigned int *);

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SONAME INIT_SYMBOL|- COUNT_SYMBOL\n", argv[0]);
        return 1;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (h == NULL) {
        printf("LIB=none\nERROR=%s\n", dlerror());
        return 2;
    }
    struct link_map *map = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map != NULL)
        printf("LIB=%s\n", map->l_name);
    if (strcmp(argv[2], "-") != 0) {
        void *sym = dlsym(h, argv[2]);
        init_fn init;
        memcpy(&init, &sym, sizeof init);
        printf("INIT=%d\n", sym != NULL ? init(NULL) : -1000);
    }
    void *sym = dlsym(h, argv[3]);
    unsigned int n = 0;
    count_fn count;
    memcpy(&count, &sym, sizeof count);
    int rc = sym != NULL ? count(&n) : -1000;
    printf("COUNT=%d:%u\n", rc, n);
    fflush(stdout);
    return 0;
}
