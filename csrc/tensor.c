/* tensor.c -- the chunked bump arena of tensor.h. */
#include "tensor.h"

#include <stdio.h>
#include <string.h>

void tg_arena_init(tg_arena *a, tg_backend *be) {
    memset(a, 0, sizeof *a);
    a->be = be;
}

void tg_arena_reset(tg_arena *a) {
    for (int i = 0; i < a->n; i++) a->used[i] = 0;
}

void tg_arena_free(tg_arena *a) {
    for (int i = 0; i < a->n; i++) a->be->release(a->be, a->base[i]);
    a->n = 0;
}

float *tg_arena_floats(tg_arena *a, size_t n) {
    size_t bytes = (n * 4 + 255) / 256 * 256;
    if (bytes == 0) bytes = 256;
    for (int i = 0; i < a->n; i++)
        if (a->cap[i] - a->used[i] >= bytes) {
            char *p = a->base[i] + a->used[i];
            a->used[i] += bytes;
            return (float *)p;
        }
    if (a->n == TG_ARENA_MAX_CHUNKS) {
        snprintf(a->be->err, sizeof a->be->err, "arena: too many chunks");
        return NULL;
    }
    size_t cap = a->n ? a->cap[a->n - 1] * 2 : ((size_t)64 << 20);
    if (cap < bytes) cap = bytes;
    char *p = a->be->alloc(a->be, cap);
    if (!p) return NULL;
    a->base[a->n] = p;
    a->cap[a->n] = cap;
    a->used[a->n] = bytes;
    a->n++;
    return (float *)p;
}

void tg_arena_save(const tg_arena *a, tg_arena_mark *mk) {
    for (int i = 0; i < TG_ARENA_MAX_CHUNKS; i++) mk->used[i] = i < a->n ? a->used[i] : 0;
}

void tg_arena_restore(tg_arena *a, const tg_arena_mark *mk) {
    for (int i = 0; i < a->n; i++) a->used[i] = mk->used[i];
}
