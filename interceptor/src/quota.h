/* quota.h - per-device VRAM quota: the fixed quota file of a managed container, or (development
 * mode) HCS_QUOTA_FILE / HCS_VRAM_QUOTA (format: README.md). */
#ifndef HCS_QUOTA_H
#define HCS_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "region.h"

#define HCS_UNLIMITED UINT64_MAX

struct hcs_quota {
    bool configured;                  /* false: no quota anywhere -> pure pass-through */
    uint64_t limit[HCS_MAX_DEVICES];  /* bytes; HCS_UNLIMITED when the device has no quota */
    char source[4200];                /* "HCS_QUOTA_FILE=/x" or "HCS_VRAM_QUOTA" (for messages) */
};

/* Parse a Kubernetes-style byte quantity: "17179869184", "16Gi", "512Mi", "1.5Gi", "16G", "100M".
 * Returns 0 and *out, or -1 (malformed, negative or overflowing). */
int hcs_parse_bytes(const char *s, size_t len, uint64_t *out);

/* Parse quota file text (one "<index|*> <bytes>" per line, '#' comments). 0, or -1 with a message
 * naming origin:line in err. */
int hcs_quota_parse_file_text(struct hcs_quota *q, const char *text, const char *origin, char *err,
                              size_t errlen);
/* Parse the env form: "16Gi" (every device) or "0:16Gi,1:8Gi". */
int hcs_quota_parse_env(struct hcs_quota *q, const char *value, char *err, size_t errlen);
/* From a quota file (the managed container's fixed, read-only one). 0, or -1 with message. */
int hcs_quota_load_file(struct hcs_quota *q, const char *path, char *err, size_t errlen);
/* Same, from an open descriptor (not closed); origin names it in messages. */
int hcs_quota_load_fd(struct hcs_quota *q, int fd, const char *origin, char *err, size_t errlen);
/* Development mode, from the process environment: HCS_QUOTA_FILE wins over HCS_VRAM_QUOTA. 0, or -1 with message. */
int hcs_quota_load(struct hcs_quota *q, char *err, size_t errlen);

#endif /* HCS_QUOTA_H */
