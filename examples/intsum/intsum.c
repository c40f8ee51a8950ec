/*
 * intsum.c - the integer-sum compute function of the Scailable tutorial
 * ("Create your own WASM", 2020), re-implemented in one file for wasmq.
 *
 * ABI (see DESIGN.md, "The ABI"):
 *   _start()              -> runs main(), which does nothing and returns 0
 *   malloc_buffer(len)    -> pointer where the runtime writes the input
 *                            (the runtime asks for len(data) + 1 and writes a
 *                            trailing NUL, so the input is also a C string)
 *   pred()                -> computes; 0 on success, 1 on failure
 *   get_out_len()         -> length of the output in bytes
 *   get_out_loc()         -> pointer to the output
 *   free_buffer(ptr)      -> frees the input or the output buffer
 *
 * pred() keeps only the characters "0123456789,-" of the input and adds up
 * the integers that remain, so '{"input": [[1,2,3,4,5,6,7,8,9,10]]}' gives
 * '{"output": [55]}'. A '-' directly before a digit is a minus sign; any other
 * ',' or '-' just separates numbers. No input (or no digits) sums to 0.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define EXPORT(name) __attribute__((export_name(name), used))

static char *in_loc = NULL;
static size_t in_cap = 0;      /* bytes malloc_buffer handed out for the input */
static char *out_loc = NULL;
static int32_t out_len = 0;

int main(void) { return EXIT_SUCCESS; }

EXPORT("malloc_buffer")
char *malloc_buffer(int32_t length) {
    if (length < 0) return NULL;
    in_loc = malloc(length > 0 ? (size_t)length : 1);
    in_cap = in_loc ? (size_t)length : 0;
    return in_loc;
}

EXPORT("free_buffer")
void free_buffer(char *p) {
    if (p == NULL) return;
    if (p == in_loc) { in_loc = NULL; in_cap = 0; }
    if (p == out_loc) { out_loc = NULL; out_len = 0; }
    free(p);
}

/* Keep only digits, ',' and '-' (in place); stop at NUL or at the end of the
 * buffer, whichever comes first. Returns the cleaned length. */
static size_t clean(char *s, size_t cap) {
    size_t w = 0;
    for (size_t r = 0; r < cap && s[r] != '\0'; r++) {
        char c = s[r];
        if ((c >= '0' && c <= '9') || c == ',' || c == '-') s[w++] = c;
    }
    return w;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Sum the integers in a cleaned string. Unsigned arithmetic: wraps, no UB. */
static int64_t sum(const char *s, size_t n) {
    uint64_t total = 0;
    size_t i = 0;
    while (i < n) {
        int neg = 0;
        if (s[i] == '-' && i + 1 < n && is_digit(s[i + 1])) { neg = 1; i++; }
        if (!is_digit(s[i])) { i++; continue; }
        uint64_t v = 0;
        while (i < n && is_digit(s[i])) v = v * 10 + (uint64_t)(s[i++] - '0');
        total += neg ? (uint64_t)0 - v : v;
    }
    return (int64_t)total;
}

/* Write the decimal form of v at dst (room for 21 bytes); return its length. */
static size_t fmt_i64(int64_t v, char *dst) {
    char tmp[21];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    size_t len = 0;
    if (v < 0) dst[len++] = '-';
    while (n) dst[len++] = tmp[--n];
    return len;
}

EXPORT("pred")
int pred(void) {
    static const char head[] = "{\"output\": [";
    static const char tail[] = "]}";
    int64_t total = 0;
    if (in_loc != NULL) total = sum(in_loc, clean(in_loc, in_cap));

    if (out_loc != NULL) { free(out_loc); out_loc = NULL; out_len = 0; }
    char *out = malloc(sizeof head - 1 + 21 + sizeof tail);
    if (out == NULL) return EXIT_FAILURE;
    size_t n = 0;
    for (size_t i = 0; i < sizeof head - 1; i++) out[n++] = head[i];
    n += fmt_i64(total, out + n);
    for (size_t i = 0; i < sizeof tail; i++) out[n++] = tail[i]; /* + NUL */
    out_loc = out;
    out_len = (int32_t)(n - 1);
    return EXIT_SUCCESS;
}

EXPORT("get_out_len")
int32_t get_out_len(void) { return out_len; }

EXPORT("get_out_loc")
char *get_out_loc(void) { return out_loc; }
