/* quant.c -- the CPU backend's weight storage formats, and its float32 GEMV.
 *
 * A weight is stored in one of five formats (backend.h, enum tg_dtype): float32, float16 and bfloat16
 * row by row (PyTorch's (out, in) layout), and two block formats in the spirit of llama.cpp's Q8_0 / Q4_0,
 * each block holding TG_QBLOCK = 32 consecutive input features of one row and a float16 scale d:
 *   int8: q in [-127, 127], w = d * q (d = max|w| / 127);   int4: q in [0, 15], w = d * (q - 8).
 * Int4 is symmetric with 32-feature blocks because that measured the lowest
 * error per stored bit among the variants tried (t(5)-distributed weights,
 * relative RMS error e, 2^bits * e lower is better):
 *   q4 sym /32: 4.50 bits, e 0.108 (2.44)   q4 sym /64: 4.25 bits, e 0.128 (2.44)
 *   q4 min+scale /32: 5.00 bits, e 0.090 (2.88)   q4 min+scale /64: 4.50, e 0.110 (2.49)
 * The block formats are kept in groups of 8 rows ("interleaved", as ggml's repack does), laid out for the
 * integer products of matmul.c: for group g (rows 8g..8g+7) and block b, one group block holds
 *   uint16 d[8]                       the 8 rows' scales, then
 *   int8:  16 chunks of 16 bytes      chunk s, byte 2c+i = q[row c][2s + i]          (272 bytes)
 *   int4:  4 vectors of 32 bytes      vector v, byte 4c+i = q[c][4v + i] | q[c][16 + 4v + i] << 4   (144 bytes)
 * and group g's blocks follow each other.  A last group of fewer than 8 rows is padded with zero rows.
 * So one load gives the same 2 (int8) or 4 (int4) features of 8 rows, what an integer multiply-add across
 * 8 output columns wants, and a decode step streams each group once.
 *
 * Kernels here: tg_store_rows (load time), tg_dequant_rows (embedding rows, any format) and tg_gemv for
 * float32 weights (the products of the other formats are in matmul.c).  The GEMV has a portable C version
 * and an AVX2 + FMA version chosen at run time from the CPU's feature bits, so an older CPU never meets an
 * illegal instruction; TGLLAVA_CPU_KERNELS=portable forces the portable one (the tests compare the two).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "backend.h"
#include "half.h"
#include "quant.h"

#if defined(__x86_64__) || defined(__i386__)
#define TG_X86 1
#include <immintrin.h>
#endif

#define PAR_MIN 32768 /* below this many weights a product runs on one thread */
size_t tg_cpu_row_bytes(int dtype, int64_t cols) {
    switch (dtype) {
    case TG_F32: return (size_t)cols * 4;
    case TG_F16:
    case TG_BF16: return (size_t)cols * 2;
    case TG_Q8: return (size_t)(cols / TG_QBLOCK) * (2 + TG_QBLOCK);
    case TG_Q4: return (size_t)(cols / TG_QBLOCK) * (2 + TG_QBLOCK / 2);
    default: return 0;
    }
}

static inline int is_block_format(int dtype) { return dtype == TG_Q8 || dtype == TG_Q4; }

size_t tg_cpu_weight_bytes(int dtype, int64_t rows, int64_t cols) {
    const int64_t stored = is_block_format(dtype) ? (rows + 7) / 8 * 8 : rows; /* whole groups of 8 rows */
    return tg_cpu_row_bytes(dtype, cols) * (size_t)stored;
}

/* ---- run-time kernel choice ---- */

static int use_avx2 = -1; /* -1 not decided yet */

static int decide_avx2(void) {
    const char *force = getenv("TGLLAVA_CPU_KERNELS");
    if (force && strcmp(force, "portable") == 0) return 0;
#ifdef TG_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

int tg_cpu_avx2(void) {
    if (use_avx2 < 0) use_avx2 = decide_avx2(); /* idempotent: a race writes the same value */
    return use_avx2;
}

const char *tg_cpu_kernels(void) { return tg_cpu_avx2() ? "avx2" : "portable"; }

/* ---- storage (load time) ---- */


/* the group block of (row, block b) in a block-format weight, and the row's slot c in it */
static inline uint8_t *group_block(int dtype, void *base, int64_t row, int64_t b, int64_t cols) {
    return (uint8_t *)base + ((size_t)(row / 8) * (size_t)(cols / TG_QBLOCK) + (size_t)b) * TG_GROUP_BYTES(dtype);
}

/* quantise 32 values to one block: q (int8: -127..127, int4: 0..15) and its float16 scale; returns 1 when
 * the scale overflows float16 (weights above ~8.3e6 for int8, ~5.2e5 for int4) */
static int quantize_block(int dtype, const float *v, int8_t *q, uint16_t *d_out) {
    float amax = 0.0f, mx = 0.0f; /* mx: the (first) value of largest magnitude, with its sign (int4: q = 0) */
    for (int j = 0; j < TG_QBLOCK; j++) amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax; /* vectorises */
    for (int j = 0; j < TG_QBLOCK; j++)
        if (fabsf(v[j]) == amax) {
            mx = v[j];
            break;
        }
    const float scale = dtype == TG_Q8 ? amax / 127.0f : mx / -8.0f;
    *d_out = tg_float_to_half(scale);
    const float d = tg_half_to_float(*d_out), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < TG_QBLOCK; j++) {
        int32_t t = tg_round_even(v[j] * id); /* |v * id| <= 127 (int8) or 8 (int4) + rounding */
        if (dtype == TG_Q8) q[j] = (int8_t)(t > 127 ? 127 : t < -127 ? -127 : t);
        else q[j] = (int8_t)(t + 8 > 15 ? 15 : t + 8 < 0 ? 0 : t + 8);
    }
    return isinf(d);
}

/* write one row's quantised block into its group block */
static void put_block(int dtype, uint8_t *g, int c, const int8_t *q, uint16_t d) {
    memcpy(g + 2 * c, &d, 2);
    uint8_t *data = g + 16;
    if (dtype == TG_Q8)
        for (int s = 0; s < TG_QBLOCK / 2; s++) memcpy(data + 16 * s + 2 * c, q + 2 * s, 2);
    else
        for (int v = 0; v < 4; v++)
            for (int i = 0; i < 4; i++)
                data[32 * v + 4 * c + i] = (uint8_t)(q[4 * v + i] | (q[16 + 4 * v + i] << 4));
}

/* read one row's block back: q and its scale */
static float get_block(int dtype, const uint8_t *g, int c, int8_t *q) {
    uint16_t d;
    memcpy(&d, g + 2 * c, 2);
    const uint8_t *data = g + 16;
    if (dtype == TG_Q8)
        for (int s = 0; s < TG_QBLOCK / 2; s++) memcpy(q + 2 * s, data + 16 * s + 2 * c, 2);
    else
        for (int v = 0; v < 4; v++)
            for (int i = 0; i < 4; i++) {
                const uint8_t byte = data[32 * v + 4 * c + i];
                q[4 * v + i] = (int8_t)(byte & 15);
                q[16 + 4 * v + i] = (int8_t)(byte >> 4);
            }
    return tg_half_to_float(d);
}

/* Store rows [row0, row0 + n) of a (?, cols) weight from float32; returns how many values (float16) or block
 * scales (int8/int4) lie outside the float16 range. */
int64_t tg_store_rows(int dtype, const float *x, void *base, int64_t row0, int64_t n, int64_t cols) {
    int64_t bad = 0;
    const size_t rb = tg_cpu_row_bytes(dtype, cols);
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n * cols > PAR_MIN)
    for (int64_t r = 0; r < n; r++) {
        const float *v = x + r * cols;
        const int64_t row = row0 + r;
        switch (dtype) {
        case TG_F32: memcpy((char *)base + (size_t)row * rb, v, rb); break;
        case TG_F16: {
            uint16_t *o = (uint16_t *)((char *)base + (size_t)row * rb);
            for (int64_t i = 0; i < cols; i++) {
                bad += fabsf(v[i]) > 65504.0f;
                o[i] = tg_float_to_half(v[i]);
            }
            break;
        }
        case TG_BF16: {
            uint16_t *o = (uint16_t *)((char *)base + (size_t)row * rb);
            for (int64_t i = 0; i < cols; i++) o[i] = tg_float_to_bf16(v[i]);
            break;
        }
        default:
            for (int64_t b = 0; b < cols / TG_QBLOCK; b++) {
                int8_t q[TG_QBLOCK];
                uint16_t d;
                bad += quantize_block(dtype, v + b * TG_QBLOCK, q, &d);
                put_block(dtype, group_block(dtype, base, row, b, cols), (int)(row % 8), q, d);
            }
        }
    }
    return bad;
}

/* out (n, K) float32 = rows [row0, row0 + n) of the stored (?, K) weight w (embedding rows) */
void tg_dequant_rows(int dtype, const void *w, int64_t row0, int64_t n, int64_t K, float *out) {
    const size_t rb = tg_cpu_row_bytes(dtype, K);
#pragma omp parallel for schedule(static) if (n * K > PAR_MIN)
    for (int64_t r = 0; r < n; r++) {
        const int64_t row = row0 + r;
        const uint16_t *h = (const uint16_t *)((const char *)w + (size_t)row * rb);
        float *o = out + r * K;
        switch (dtype) {
        case TG_F32: memcpy(o, (const char *)w + (size_t)row * rb, rb); break;
        case TG_F16:
            for (int64_t i = 0; i < K; i++) o[i] = tg_half_to_float(h[i]);
            break;
        case TG_BF16:
            for (int64_t i = 0; i < K; i++) o[i] = tg_bf16_to_float(h[i]);
            break;
        default:
            for (int64_t b = 0; b < K / TG_QBLOCK; b++) {
                int8_t q[TG_QBLOCK];
                const float d = get_block(dtype, group_block(dtype, (void *)w, row, b, K), (int)(row % 8), q);
                for (int j = 0; j < TG_QBLOCK; j++) o[b * TG_QBLOCK + j] = d * (float)(dtype == TG_Q8 ? q[j] : q[j] - 8);
            }
        }
    }
}

/* ---- float32 GEMV ---- */

static void gemv_portable(const float *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t n0,
                          int64_t n1, int accumulate) {
    for (int64_t n = n0; n < n1; n++) {
        const float *row = w + n * K;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float t[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= K; k += 8)
                for (int l = 0; l < 8; l++) t[l] += row[k + l] * xm[k + l];
            float s = ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
            for (; k < K; k++) s += row[k] * xm[k];
            y[m * N + n] = accumulate ? y[m * N + n] + s : s;
        }
    }
}

#ifdef TG_X86
#define AVX2_FN static inline __attribute__((target("avx2,fma,f16c"), always_inline))

/* rows [n0, n1) for a compile-time M and R (the loops unroll).  Even and odd 8-feature steps go to two
 * accumulators, so the sum's latency does not set the pace of a single row; every M sums in the same
 * order, so a row of a batch gets bitwise the result it gets alone */
AVX2_FN void avx2_gemv_m(const float *w, const float *x, float *y, const int M, const int R, int64_t N, int64_t K,
                         int64_t n0, int64_t n1, int accumulate) {
    const int64_t K16 = K / 16 * 16;
    for (int64_t n = n0; n + R <= n1; n += R) { /* R weight rows streamed together (R = 4 for one input row) */
        __m256 acc[8][4], acc2[8][4];
        for (int m = 0; m < M; m++)
            for (int r = 0; r < R; r++) acc[m][r] = acc2[m][r] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K16; k += 16)
            for (int r = 0; r < R; r++) {
                const float *row = w + (n + r) * K;
                const __m256 w0 = _mm256_loadu_ps(row + k), w1 = _mm256_loadu_ps(row + k + 8);
                for (int m = 0; m < M; m++) {
                    acc[m][r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), acc[m][r]);
                    acc2[m][r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k + 8), acc2[m][r]);
                }
            }
        for (int m = 0; m < M; m++)
            for (int r = 0; r < R; r++) {
                const float *row = w + (n + r) * K;
                float s = tg_avx2_hsum(_mm256_add_ps(acc[m][r], acc2[m][r]));
                for (int64_t k = K16; k < K; k++) s += row[k] * x[m * K + k];
                y[m * N + n + r] = accumulate ? y[m * N + n + r] + s : s;
            }
    }
}

/* rows [n0, n1): R at a time, the last few one by one (each row is summed the same way in both) */
AVX2_FN void avx2_gemv_rows(const float *w, const float *x, float *y, const int M, const int R, int64_t N, int64_t K,
                            int64_t n0, int64_t n1, int accumulate) {
    const int64_t whole = n0 + (n1 - n0) / R * R;
    avx2_gemv_m(w, x, y, M, R, N, K, n0, whole, accumulate);
    avx2_gemv_m(w, x, y, M, 1, N, K, whole, n1, accumulate);
}

__attribute__((target("avx2,fma,f16c"))) static void gemv_avx2(const float *w, const float *x, float *y, int64_t M,
                                                               int64_t N, int64_t K, int64_t n0, int64_t n1,
                                                               int accumulate) {
    switch (M) { /* one specialised copy per M */
    case 1: avx2_gemv_rows(w, x, y, 1, 4, N, K, n0, n1, accumulate); break;
    case 2: avx2_gemv_rows(w, x, y, 2, 2, N, K, n0, n1, accumulate); break;
    case 3: avx2_gemv_m(w, x, y, 3, 1, N, K, n0, n1, accumulate); break;
    case 4: avx2_gemv_m(w, x, y, 4, 1, N, K, n0, n1, accumulate); break;
    case 5: avx2_gemv_m(w, x, y, 5, 1, N, K, n0, n1, accumulate); break;
    case 6: avx2_gemv_m(w, x, y, 6, 1, N, K, n0, n1, accumulate); break;
    case 7: avx2_gemv_m(w, x, y, 7, 1, N, K, n0, n1, accumulate); break;
    default: avx2_gemv_m(w, x, y, 8, 1, N, K, n0, n1, accumulate); break;
    }
}
#endif

void tg_gemv(const float *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate) {
    const int fast = tg_cpu_avx2();
    const int64_t chunk = 16; /* output rows per work item: contiguous weight streams per thread */
    const int64_t items = (N + chunk - 1) / chunk;
    /* dynamic: a thread that loses its core to another process does not hold up the whole product (each row
     * is still summed by one thread in one order, so results do not depend on the schedule) */
#pragma omp parallel for schedule(dynamic, 4) if (N * K > PAR_MIN)
    for (int64_t it = 0; it < items; it++) {
        const int64_t n0 = it * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
        /* the input rows in groups of 8: the first group streams this chunk of weight rows from memory, the
         * next ones find it in the cache, and every row is summed exactly as it is alone */
        for (int64_t m0 = 0; m0 < M; m0 += 8) {
            const int64_t mg = M - m0 < 8 ? M - m0 : 8;
#ifdef TG_X86
            if (fast) {
                gemv_avx2(w, x + m0 * K, y + m0 * N, mg, N, K, n0, n1, accumulate);
                continue;
            }
#endif
            gemv_portable(w, x + m0 * K, y + m0 * N, mg, N, K, n0, n1, accumulate);
        }
    }
    (void)fast;
}
