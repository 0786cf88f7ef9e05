/* tensor.h -- the per-forward scratch arena.
 *
 * Activations of a forward are bump-allocated from chunks of backend memory.
 * tg_arena_reset() makes every chunk reusable; a chunk is only allocated
 * when a forward needs more than any before it, so once shapes settle (the
 * decode loop) nothing is allocated at all.
 */
#ifndef TG_TENSOR_H
#define TG_TENSOR_H

#include <stddef.h>

#include "backend.h"

#define TG_ARENA_MAX_CHUNKS 48

typedef struct tg_arena {
    tg_backend *be;
    char *base[TG_ARENA_MAX_CHUNKS];
    size_t cap[TG_ARENA_MAX_CHUNKS];
    size_t used[TG_ARENA_MAX_CHUNKS];
    int n;
} tg_arena;

void tg_arena_init(tg_arena *a, tg_backend *be);
void tg_arena_reset(tg_arena *a);
void tg_arena_free(tg_arena *a);
/* n floats (or n 4-byte ints) of backend memory, 256-byte aligned; NULL + be->err on failure */
float *tg_arena_floats(tg_arena *a, size_t n);
/* remember how much is in use, and later give back everything allocated since */
typedef struct tg_arena_mark {
    size_t used[TG_ARENA_MAX_CHUNKS];
} tg_arena_mark;
void tg_arena_save(const tg_arena *a, tg_arena_mark *mk);
void tg_arena_restore(tg_arena *a, const tg_arena_mark *mk);

#endif
