/*
 * sim_json.h - a small, strict JSON (RFC 8259) parser for the simulated drivers' profiles.
 * Self-contained C11; a parse builds a tree of heap values freed with sj_free().
 */
#ifndef HCS_SIM_JSON_H
#define HCS_SIM_JSON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SJ_NULL, SJ_BOOL, SJ_NUMBER, SJ_STRING, SJ_ARRAY, SJ_OBJECT } sj_type;

typedef struct sj_value sj_value;
struct sj_value {
    sj_type type;
    int line;        /* 1-based line where the value starts */
    int boolean;     /* SJ_BOOL */
    double number;   /* SJ_NUMBER */
    int is_integer;  /* SJ_NUMBER written without fraction/exponent */
    char *string;    /* SJ_STRING (NUL-terminated, UTF-8; may contain embedded NUL via \u0000 -> rejected) */
    size_t count;    /* SJ_ARRAY / SJ_OBJECT: number of items */
    sj_value *items; /* SJ_ARRAY / SJ_OBJECT: values */
    char **keys;     /* SJ_OBJECT: keys, parallel to items */
};

/* Parse text (len bytes). Returns NULL and fills err ("line L, column C: what") on error. */
sj_value *sj_parse(const char *text, size_t len, char *err, size_t errlen);
void sj_free(sj_value *v);

/* Member of an object by key, or NULL (also NULL when obj is not an object). */
const sj_value *sj_get(const sj_value *obj, const char *key);

/* Human name of a type: "null", "boolean", "number", "string", "array", "object". */
const char *sj_type_name(sj_type t);

#ifdef __cplusplus
}
#endif

#endif
