/* sim_json.c - strict JSON parser (see sim_json.h). */
#include "sim_json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SJ_MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len;
    size_t pos;
    int line;
    size_t line_start;
    char *err;
    size_t errlen;
    int failed;
} sj_parser;

static void sj_fail(sj_parser *p, const char *fmt, ...) {
    if (p->failed)
        return;
    p->failed = 1;
    if (p->err == NULL || p->errlen == 0)
        return;
    int n = snprintf(p->err, p->errlen, "line %d, column %zu: ", p->line, p->pos - p->line_start + 1);
    if (n < 0 || (size_t)n >= p->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static void sj_skip_ws(sj_parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == '\n') {
            p->pos++;
            p->line++;
            p->line_start = p->pos;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            p->pos++;
        } else {
            break;
        }
    }
}

static void sj_free_inner(sj_value *v) {
    if (v == NULL)
        return;
    free(v->string);
    v->string = NULL;
    for (size_t i = 0; i < v->count; i++) {
        sj_free_inner(&v->items[i]);
        if (v->keys != NULL)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    v->items = NULL;
    v->keys = NULL;
    v->count = 0;
}

void sj_free(sj_value *v) {
    sj_free_inner(v);
    free(v);
}

static int sj_parse_value(sj_parser *p, sj_value *out, int depth);

static void sj_put_utf8(char *buf, size_t *n, unsigned long cp) {
    if (cp < 0x80) {
        buf[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        buf[(*n)++] = (char)(0xC0 | (cp >> 6));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        buf[(*n)++] = (char)(0xE0 | (cp >> 12));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        buf[(*n)++] = (char)(0xF0 | (cp >> 18));
        buf[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int sj_hex4(sj_parser *p, unsigned long *out) {
    if (p->pos + 4 > p->len) {
        sj_fail(p, "truncated \\u escape");
        return -1;
    }
    unsigned long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + (size_t)i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned long)(c - 'A' + 10);
        else {
            sj_fail(p, "bad hex digit in \\u escape");
            return -1;
        }
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* p->pos at the opening quote. Returns a malloc'd string or NULL. */
static char *sj_parse_string(sj_parser *p) {
    p->pos++; /* opening quote */
    size_t start = p->pos;
    /* Output is never longer than the input span. */
    size_t end = start;
    while (end < p->len && p->s[end] != '"') {
        if (p->s[end] == '\\')
            end++;
        end++;
    }
    if (end >= p->len) {
        sj_fail(p, "unterminated string");
        return NULL;
    }
    char *buf = malloc(end - start + 1);
    if (buf == NULL) {
        sj_fail(p, "out of memory");
        return NULL;
    }
    size_t n = 0;
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            buf[n] = '\0';
            return buf;
        }
        if (c < 0x20) {
            sj_fail(p, "control character in string (escape it)");
            free(buf);
            return NULL;
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            p->pos++;
            continue;
        }
        p->pos++;
        if (p->pos >= p->len)
            break;
        char e = p->s[p->pos++];
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned long cp;
            if (sj_hex4(p, &cp) != 0) {
                free(buf);
                return NULL;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned long lo;
                if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    sj_fail(p, "unpaired surrogate in \\u escape");
                    free(buf);
                    return NULL;
                }
                p->pos += 2;
                if (sj_hex4(p, &lo) != 0) {
                    free(buf);
                    return NULL;
                }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    sj_fail(p, "unpaired surrogate in \\u escape");
                    free(buf);
                    return NULL;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                sj_fail(p, "unpaired surrogate in \\u escape");
                free(buf);
                return NULL;
            }
            if (cp == 0) {
                sj_fail(p, "\\u0000 is not allowed in strings");
                free(buf);
                return NULL;
            }
            /* An escape is >= 6 input bytes and at most 4 output bytes (12 -> 4 for pairs). */
            sj_put_utf8(buf, &n, cp);
            break;
        }
        default:
            sj_fail(p, "invalid escape '\\%c'", e);
            free(buf);
            return NULL;
        }
    }
    sj_fail(p, "unterminated string");
    free(buf);
    return NULL;
}

static int sj_parse_number(sj_parser *p, sj_value *out) {
    size_t start = p->pos;
    size_t i = p->pos;
    int integer = 1;
    if (i < p->len && p->s[i] == '-')
        i++;
    if (i >= p->len) {
        sj_fail(p, "bad number");
        return -1;
    }
    if (p->s[i] == '0') {
        i++;
    } else if (p->s[i] >= '1' && p->s[i] <= '9') {
        while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9')
            i++;
    } else {
        sj_fail(p, "bad number");
        return -1;
    }
    if (i < p->len && p->s[i] == '.') {
        integer = 0;
        i++;
        if (i >= p->len || p->s[i] < '0' || p->s[i] > '9') {
            sj_fail(p, "bad number: digit expected after '.'");
            return -1;
        }
        while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9')
            i++;
    }
    if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
        integer = 0;
        i++;
        if (i < p->len && (p->s[i] == '+' || p->s[i] == '-'))
            i++;
        if (i >= p->len || p->s[i] < '0' || p->s[i] > '9') {
            sj_fail(p, "bad number: digit expected in exponent");
            return -1;
        }
        while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9')
            i++;
    }
    char tmp[64];
    size_t n = i - start;
    if (n >= sizeof tmp) {
        sj_fail(p, "number too long");
        return -1;
    }
    memcpy(tmp, p->s + start, n);
    tmp[n] = '\0';
    out->type = SJ_NUMBER;
    out->number = strtod(tmp, NULL);
    out->is_integer = integer;
    p->pos = i;
    return 0;
}

static int sj_match(sj_parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->pos + n <= p->len && memcmp(p->s + p->pos, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static int sj_grow(sj_parser *p, sj_value *v, size_t *cap, int with_keys) {
    if (v->count < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    sj_value *items = realloc(v->items, ncap * sizeof *items);
    if (items == NULL) {
        sj_fail(p, "out of memory");
        return -1;
    }
    v->items = items;
    if (with_keys) {
        char **keys = realloc(v->keys, ncap * sizeof *keys);
        if (keys == NULL) {
            sj_fail(p, "out of memory");
            return -1;
        }
        v->keys = keys;
    }
    *cap = ncap;
    return 0;
}

static int sj_parse_array(sj_parser *p, sj_value *out, int depth) {
    out->type = SJ_ARRAY;
    size_t cap = 0;
    p->pos++; /* [ */
    sj_skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        if (sj_grow(p, out, &cap, 0) != 0)
            return -1;
        sj_value *item = &out->items[out->count];
        memset(item, 0, sizeof *item);
        out->count++;
        if (sj_parse_value(p, item, depth + 1) != 0)
            return -1;
        sj_skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == ']') {
            p->pos++;
            return 0;
        }
        sj_fail(p, "expected ',' or ']' in array");
        return -1;
    }
}

static int sj_parse_object(sj_parser *p, sj_value *out, int depth) {
    out->type = SJ_OBJECT;
    size_t cap = 0;
    p->pos++; /* { */
    sj_skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return 0;
    }
    for (;;) {
        sj_skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != '"') {
            sj_fail(p, "expected a string key in object");
            return -1;
        }
        char *key = sj_parse_string(p);
        if (key == NULL)
            return -1;
        for (size_t i = 0; i < out->count; i++) {
            if (strcmp(out->keys[i], key) == 0) {
                sj_fail(p, "duplicate key \"%s\"", key);
                free(key);
                return -1;
            }
        }
        if (sj_grow(p, out, &cap, 1) != 0) {
            free(key);
            return -1;
        }
        sj_value *item = &out->items[out->count];
        memset(item, 0, sizeof *item);
        out->keys[out->count] = key;
        out->count++;
        sj_skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') {
            sj_fail(p, "expected ':' after key \"%s\"", key);
            return -1;
        }
        p->pos++;
        if (sj_parse_value(p, item, depth + 1) != 0)
            return -1;
        sj_skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == '}') {
            p->pos++;
            return 0;
        }
        sj_fail(p, "expected ',' or '}' in object");
        return -1;
    }
}

static int sj_parse_value(sj_parser *p, sj_value *out, int depth) {
    if (depth > SJ_MAX_DEPTH) {
        sj_fail(p, "nesting deeper than %d", SJ_MAX_DEPTH);
        return -1;
    }
    sj_skip_ws(p);
    out->line = p->line;
    if (p->pos >= p->len) {
        sj_fail(p, "unexpected end of input");
        return -1;
    }
    char c = p->s[p->pos];
    switch (c) {
    case '{': return sj_parse_object(p, out, depth);
    case '[': return sj_parse_array(p, out, depth);
    case '"':
        out->type = SJ_STRING;
        out->string = sj_parse_string(p);
        return out->string == NULL ? -1 : 0;
    case 't':
        if (sj_match(p, "true")) {
            out->type = SJ_BOOL;
            out->boolean = 1;
            return 0;
        }
        break;
    case 'f':
        if (sj_match(p, "false")) {
            out->type = SJ_BOOL;
            out->boolean = 0;
            return 0;
        }
        break;
    case 'n':
        if (sj_match(p, "null")) {
            out->type = SJ_NULL;
            return 0;
        }
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return sj_parse_number(p, out);
        break;
    }
    if (c == '/')
        sj_fail(p, "comments are not allowed in JSON");
    else
        sj_fail(p, "unexpected character '%c'", c);
    return -1;
}

sj_value *sj_parse(const char *text, size_t len, char *err, size_t errlen) {
    sj_parser p = {text, len, 0, 1, 0, err, errlen, 0};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    /* UTF-8 BOM */
    if (len >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB &&
        (unsigned char)text[2] == 0xBF)
        p.pos = 3;
    sj_value *root = calloc(1, sizeof *root);
    if (root == NULL) {
        sj_fail(&p, "out of memory");
        return NULL;
    }
    if (sj_parse_value(&p, root, 0) != 0) {
        sj_free(root);
        return NULL;
    }
    sj_skip_ws(&p);
    if (p.pos != p.len) {
        sj_fail(&p, "unexpected data after the JSON value");
        sj_free(root);
        return NULL;
    }
    return root;
}

const sj_value *sj_get(const sj_value *obj, const char *key) {
    if (obj == NULL || obj->type != SJ_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

const char *sj_type_name(sj_type t) {
    switch (t) {
    case SJ_NULL: return "null";
    case SJ_BOOL: return "boolean";
    case SJ_NUMBER: return "number";
    case SJ_STRING: return "string";
    case SJ_ARRAY: return "array";
    case SJ_OBJECT: return "object";
    }
    return "?";
}
