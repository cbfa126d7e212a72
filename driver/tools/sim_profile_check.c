/*
 * sim-profile-check - validate node profiles with the same parser the simulated libraries use.
 *
 *   sim-profile-check FILE...
 *
 * Prints one JSON line per valid file ({"file":..., "name":..., "devices":N, "vendors":{...}}) on
 * stdout; for an invalid file prints the library's one-line error on stderr. Exit status 1 if any
 * file is invalid, 2 on usage errors.
 */
#include <stdio.h>
#include <string.h>

#include "sim_profile.h"

static void json_str(const char *s) {
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROFILE.json...\n", argv[0]);
        return 2;
    }
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        char err[1024];
        sim_profile_t *p = sim_profile_parse_file(argv[i], err, sizeof err);
        if (p == NULL) {
            fprintf(stderr, "%s\n", err);
            bad = 1;
            continue;
        }
        printf("{\"file\": ");
        json_str(argv[i]);
        printf(", \"name\": ");
        json_str(p->name);
        printf(", \"devices\": %d, \"vendors\": {", p->ndevices);
        for (int v = 0, first = 1; v < SIM_VENDOR_COUNT; v++) {
            if (p->vendor_count[v] == 0)
                continue;
            printf("%s\"%s\": %d", first ? "" : ", ", sim_vendor_name((sim_vendor_t)v), p->vendor_count[v]);
            first = 0;
        }
        int links = 0;
        for (int d = 0; d < p->ndevices; d++)
            links += p->devices[d].nlinks;
        printf("}, \"links\": %d}\n", links);
        sim_profile_free(p);
    }
    return bad;
}
