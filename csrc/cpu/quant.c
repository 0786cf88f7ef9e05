/* quant.c -- the CPU backend's weight storage formats and their kernels.
 *
 * A weight is stored row by row (PyTorch's (out, in) layout) in one of five
 * formats (backend.h, enum tg_dtype): float32, float16, bfloat16, and two
 * block formats in the spirit of llama.cpp's Q8_0 / Q4_0, each block holding
 * TG_QBLOCK = 32 consecutive input features and a float16 scale:
 *   q8 block (34 bytes): d, int8 q[32];            w = d * q
 *   q4 block (18 bytes): d, byte j = q[j] | q[j+16] << 4;   w = d * (q - 8)
 * Int4 is symmetric with 32-feature blocks because that measured the lowest
 * error per stored bit among the variants tried (t(5)-distributed weights,
 * relative RMS error e, 2^bits * e lower is better):
 *   q4 sym /32: 4.50 bits, e 0.108 (2.44)   q4 sym /64: 4.25 bits, e 0.128 (2.44)
 *   q4 min+scale /32: 5.00 bits, e 0.090 (2.88)   q4 min+scale /64: 4.50, e 0.110 (2.49)
 * Activations and sums stay float32: the kernels widen weights to float32 in
 * registers and never quantise x.
 *
 * Kernels: tg_gemv (few rows, decoding: every weight row is read from memory
 * once for all M inputs, taken 8 at a time while a chunk of 16 weight rows
 * stays in the cache; threads split the output rows) and tg_dequant_rows (panels
 * for sgemm, embedding rows).  Each has a portable C version and an AVX2 +
 * FMA + F16C version chosen at run time from the CPU's feature bits, so an
 * older CPU never meets an illegal instruction; TGLLAVA_CPU_KERNELS=portable
 * forces the portable one (the tests compare the two).
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

typedef struct {
    uint16_t d;
    int8_t q[TG_QBLOCK];
} q8_block;
typedef struct {
    uint16_t d;
    uint8_t q[TG_QBLOCK / 2];
} q4_block;

size_t tg_cpu_row_bytes(int dtype, int64_t cols) {
    switch (dtype) {
    case TG_F32: return (size_t)cols * 4;
    case TG_F16:
    case TG_BF16: return (size_t)cols * 2;
    case TG_Q8: return (size_t)(cols / TG_QBLOCK) * sizeof(q8_block);
    case TG_Q4: return (size_t)(cols / TG_QBLOCK) * sizeof(q4_block);
    default: return 0;
    }
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

static int avx2(void) {
    if (use_avx2 < 0) use_avx2 = decide_avx2(); /* idempotent: a race writes the same value */
    return use_avx2;
}

const char *tg_cpu_kernels(void) { return avx2() ? "avx2" : "portable"; }

/* ---- quantisation (load time) ---- */

/* round to nearest even for |x| < 2^22 without a libm call (the adds are not reassociated: no -ffast-math) */
static inline int32_t round_even(float x) { return (int32_t)((x + 12582912.0f) - 12582912.0f); }

/* Store one row of cols floats; returns the number of values out of float16 range (F16 only). */
int64_t tg_quantize_row(int dtype, const float *x, void *dst, int64_t cols) {
    int64_t bad = 0;
    switch (dtype) {
    case TG_F32: memcpy(dst, x, (size_t)cols * 4); break;
    case TG_F16: {
        uint16_t *o = dst;
        for (int64_t i = 0; i < cols; i++) {
            bad += fabsf(x[i]) > 65504.0f;
            o[i] = tg_float_to_half(x[i]);
        }
        break;
    }
    case TG_BF16: {
        uint16_t *o = dst;
        for (int64_t i = 0; i < cols; i++) o[i] = tg_float_to_bf16(x[i]);
        break;
    }
    case TG_Q8: {
        q8_block *b = dst;
        for (int64_t k = 0; k < cols / TG_QBLOCK; k++) {
            const float *v = x + k * TG_QBLOCK;
            float amax = 0.0f;
            for (int j = 0; j < TG_QBLOCK; j++) amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
            b[k].d = tg_float_to_half(amax / 127.0f);
            float d = tg_half_to_float(b[k].d), id = d > 0.0f ? 1.0f / d : 0.0f;
            for (int j = 0; j < TG_QBLOCK; j++) {
                int32_t q = round_even(v[j] * id); /* |v * id| <= 127 + rounding */
                b[k].q[j] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
            }
        }
        break;
    }
    case TG_Q4: {
        q4_block *b = dst;
        for (int64_t k = 0; k < cols / TG_QBLOCK; k++) {
            const float *v = x + k * TG_QBLOCK;
            float amax = 0.0f, mx = 0.0f; /* mx: the (first) value of largest magnitude, with its sign: q = 0 */
            for (int j = 0; j < TG_QBLOCK; j++) amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax; /* vectorises */
            for (int j = 0; j < TG_QBLOCK; j++)
                if (fabsf(v[j]) == amax) {
                    mx = v[j];
                    break;
                }
            b[k].d = tg_float_to_half(mx / -8.0f);
            float d = tg_half_to_float(b[k].d), id = d != 0.0f ? 1.0f / d : 0.0f;
            uint8_t q[TG_QBLOCK];
            for (int j = 0; j < TG_QBLOCK; j++) {
                int32_t t = round_even(v[j] * id) + 8; /* |v * id| <= 8 + rounding */
                q[j] = (uint8_t)(t > 15 ? 15 : t < 0 ? 0 : t);
            }
            for (int j = 0; j < TG_QBLOCK / 2; j++) b[k].q[j] = (uint8_t)(q[j] | (q[j + TG_QBLOCK / 2] << 4));
        }
        break;
    }
    }
    return bad;
}

/* ---- portable kernels ---- */

/* the 32 float32 values of block k of a stored row (any format) and the scale they carry */
static inline float decode_block(int dtype, const void *row, int64_t k, float *w) {
    switch (dtype) {
    case TG_F32: memcpy(w, (const float *)row + k * TG_QBLOCK, TG_QBLOCK * 4); return 1.0f;
    case TG_F16: {
        const uint16_t *s = (const uint16_t *)row + k * TG_QBLOCK;
        for (int j = 0; j < TG_QBLOCK; j++) w[j] = tg_half_to_float(s[j]);
        return 1.0f;
    }
    case TG_BF16: {
        const uint16_t *s = (const uint16_t *)row + k * TG_QBLOCK;
        for (int j = 0; j < TG_QBLOCK; j++) w[j] = tg_bf16_to_float(s[j]);
        return 1.0f;
    }
    case TG_Q8: {
        const q8_block *b = (const q8_block *)row + k;
        for (int j = 0; j < TG_QBLOCK; j++) w[j] = (float)b->q[j];
        return tg_half_to_float(b->d);
    }
    default: {
        const q4_block *b = (const q4_block *)row + k;
        for (int j = 0; j < TG_QBLOCK / 2; j++) {
            w[j] = (float)((b->q[j] & 15) - 8);
            w[j + TG_QBLOCK / 2] = (float)((b->q[j] >> 4) - 8);
        }
        return tg_half_to_float(b->d);
    }
    }
}

/* element i of a 16/32-bit row (the tail after the last whole block) */
static inline float row_elem(int dtype, const void *row, int64_t i) {
    if (dtype == TG_F32) return ((const float *)row)[i];
    if (dtype == TG_F16) return tg_half_to_float(((const uint16_t *)row)[i]);
    return tg_bf16_to_float(((const uint16_t *)row)[i]);
}

static void dequant_row_portable(int dtype, const void *row, int64_t K, float *out) {
    const int64_t nb = K / TG_QBLOCK;
    float w[TG_QBLOCK];
    for (int64_t k = 0; k < nb; k++) {
        float d = decode_block(dtype, row, k, w);
        for (int j = 0; j < TG_QBLOCK; j++) out[k * TG_QBLOCK + j] = w[j] * d;
    }
    for (int64_t i = nb * TG_QBLOCK; i < K; i++) out[i] = row_elem(dtype, row, i);
}

static void gemv_portable(int dtype, const char *w, size_t rb, const float *x, float *y, int64_t M, int64_t N,
                          int64_t K, int64_t n0, int64_t n1, int accumulate) {
    const int64_t nb = K / TG_QBLOCK;
    float wb[TG_QBLOCK];
    for (int64_t n = n0; n < n1; n++) {
        const char *row = w + (size_t)n * rb;
        float acc[8] = {0};
        for (int64_t k = 0; k < nb; k++) {
            float d = decode_block(dtype, row, k, wb);
            for (int64_t m = 0; m < M; m++) {
                const float *xm = x + m * K + k * TG_QBLOCK;
                float t[4] = {0};
                for (int j = 0; j < TG_QBLOCK; j += 4)
                    for (int l = 0; l < 4; l++) t[l] += wb[j + l] * xm[j + l];
                acc[m] += d * ((t[0] + t[1]) + (t[2] + t[3]));
            }
        }
        for (int64_t m = 0; m < M; m++) {
            float s = acc[m];
            for (int64_t i = nb * TG_QBLOCK; i < K; i++) s += row_elem(dtype, row, i) * x[m * K + i];
            y[m * N + n] = accumulate ? y[m * N + n] + s : s;
        }
    }
}

/* ---- AVX2 + FMA + F16C kernels ---- */
#ifdef TG_X86
#define AVX2_FN static inline __attribute__((target("avx2,fma,f16c"), always_inline))

/* block k of a row as four vectors of 8 floats (unscaled) and the block scale */
AVX2_FN float avx2_block(int dtype, const void *row, int64_t k, __m256 *w) {
    switch (dtype) {
    case TG_F32: {
        const float *p = (const float *)row + k * TG_QBLOCK;
        for (int j = 0; j < 4; j++) w[j] = _mm256_loadu_ps(p + 8 * j);
        return 1.0f;
    }
    case TG_F16: {
        const uint16_t *p = (const uint16_t *)row + k * TG_QBLOCK;
        for (int j = 0; j < 4; j++) w[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8 * j)));
        return 1.0f;
    }
    case TG_BF16: {
        const uint16_t *p = (const uint16_t *)row + k * TG_QBLOCK;
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8 * j))), 16));
        return 1.0f;
    }
    case TG_Q8: {
        const q8_block *b = (const q8_block *)row + k;
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + 8 * j))));
        return _cvtsh_ss(b->d);
    }
    default: {
        const q4_block *b = (const q4_block *)row + k;
        const __m128i v = _mm_loadu_si128((const __m128i *)b->q), low = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, low), eight);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low), eight);
        w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
        w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
        return _cvtsh_ss(b->d);
    }
    }
}

AVX2_FN float avx2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[m] += d * <block, x_m block> for the 32 weights of one block */
AVX2_FN void avx2_block_dot(const __m256 *wv, __m256 d, const float *x, int64_t K, int64_t k, const int M, __m256 *acc) {
    for (int m = 0; m < M; m++) {
        const float *xm = x + (int64_t)m * K + k * TG_QBLOCK;
        __m256 t0 = _mm256_mul_ps(wv[0], _mm256_loadu_ps(xm));
        __m256 t1 = _mm256_mul_ps(wv[2], _mm256_loadu_ps(xm + 16));
        t0 = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xm + 8), t0);
        t1 = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xm + 24), t1);
        acc[m] = _mm256_fmadd_ps(d, _mm256_add_ps(t0, t1), acc[m]);
    }
}

/* rows [n0, n1) for a compile-time M (the m loops unroll).  Even and odd blocks go to two accumulators, so
 * the sum's latency does not set the pace of a single row; every M sums in the same order, so a row of a
 * batch gets bitwise the result it gets alone */
AVX2_FN void avx2_gemv_m(int dtype, const char *w, size_t rb, const float *x, float *y, const int M, int64_t N,
                         int64_t K, int64_t n0, int64_t n1, int accumulate) {
    const int64_t nb = K / TG_QBLOCK;
    for (int64_t n = n0; n < n1; n++) {
        const char *row = w + (size_t)n * rb;
        __m256 acc[8], acc2[8];
        for (int m = 0; m < M; m++) acc[m] = acc2[m] = _mm256_setzero_ps();
        int64_t k = 0;
        const size_t bb = rb / (size_t)(nb ? nb : 1); /* bytes per block; prefetching 16 blocks ahead measured
                                                        1.5x (int8) and 1.2x (int4) on this machine's decode GEMV */
        for (; k + 2 <= nb; k += 2) {
            __m256 wv[4];
            _mm_prefetch(row + (size_t)(k + 16) * bb, _MM_HINT_T0);
            _mm_prefetch(row + (size_t)(k + 16) * bb + 64, _MM_HINT_T0);
            __m256 d = _mm256_set1_ps(avx2_block(dtype, row, k, wv));
            avx2_block_dot(wv, d, x, K, k, M, acc);
            d = _mm256_set1_ps(avx2_block(dtype, row, k + 1, wv));
            avx2_block_dot(wv, d, x, K, k + 1, M, acc2);
        }
        if (k < nb) {
            __m256 wv[4];
            const __m256 d = _mm256_set1_ps(avx2_block(dtype, row, k, wv));
            avx2_block_dot(wv, d, x, K, k, M, acc);
        }
        for (int m = 0; m < M; m++) acc[m] = _mm256_add_ps(acc[m], acc2[m]);
        for (int m = 0; m < M; m++) {
            float s = avx2_hsum(acc[m]);
            for (int64_t i = nb * TG_QBLOCK; i < K; i++) s += row_elem(dtype, row, i) * x[(int64_t)m * K + i];
            y[(int64_t)m * N + n] = accumulate ? y[(int64_t)m * N + n] + s : s;
        }
    }
}

/* one specialised copy per (format, M): the format switch inside avx2_block folds away */
#define GEMV_FOR_M(dt)                                                                                             \
    switch (M) {                                                                                                   \
    case 1: avx2_gemv_m(dt, w, rb, x, y, 1, N, K, n0, n1, accumulate); break;                                      \
    case 2: avx2_gemv_m(dt, w, rb, x, y, 2, N, K, n0, n1, accumulate); break;                                      \
    case 3: avx2_gemv_m(dt, w, rb, x, y, 3, N, K, n0, n1, accumulate); break;                                      \
    case 4: avx2_gemv_m(dt, w, rb, x, y, 4, N, K, n0, n1, accumulate); break;                                      \
    case 5: avx2_gemv_m(dt, w, rb, x, y, 5, N, K, n0, n1, accumulate); break;                                      \
    case 6: avx2_gemv_m(dt, w, rb, x, y, 6, N, K, n0, n1, accumulate); break;                                      \
    case 7: avx2_gemv_m(dt, w, rb, x, y, 7, N, K, n0, n1, accumulate); break;                                      \
    default: avx2_gemv_m(dt, w, rb, x, y, 8, N, K, n0, n1, accumulate); break;                                     \
    }

__attribute__((target("avx2,fma,f16c"))) static void gemv_avx2(int dtype, const char *w, size_t rb, const float *x,
                                                               float *y, int64_t M, int64_t N, int64_t K, int64_t n0,
                                                               int64_t n1, int accumulate) {
    switch (dtype) {
    case TG_F32: GEMV_FOR_M(TG_F32); break;
    case TG_F16: GEMV_FOR_M(TG_F16); break;
    case TG_BF16: GEMV_FOR_M(TG_BF16); break;
    case TG_Q8: GEMV_FOR_M(TG_Q8); break;
    default: GEMV_FOR_M(TG_Q4); break;
    }
}

__attribute__((target("avx2,fma,f16c"))) static void dequant_row_avx2(int dtype, const void *row, int64_t K,
                                                                      float *out) {
    const int64_t nb = K / TG_QBLOCK;
    for (int64_t k = 0; k < nb; k++) {
        __m256 wv[4];
        const __m256 d = _mm256_set1_ps(avx2_block(dtype, row, k, wv));
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(out + k * TG_QBLOCK + 8 * j, _mm256_mul_ps(wv[j], d));
    }
    for (int64_t i = nb * TG_QBLOCK; i < K; i++) out[i] = row_elem(dtype, row, i);
}
#endif

/* ---- entry points ---- */

void tg_dequant_rows(int dtype, const void *w, int64_t row0, int64_t n, int64_t K, float *out) {
    const size_t rb = tg_cpu_row_bytes(dtype, K);
    const int fast = avx2();
#pragma omp parallel for schedule(static) if (n * K > PAR_MIN)
    for (int64_t r = 0; r < n; r++) {
        const char *row = (const char *)w + (size_t)(row0 + r) * rb;
#ifdef TG_X86
        if (fast) {
            dequant_row_avx2(dtype, row, K, out + r * K);
            continue;
        }
#endif
        dequant_row_portable(dtype, row, K, out + r * K);
    }
    (void)fast;
}

void tg_gemv(int dtype, const void *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate) {
    const size_t rb = tg_cpu_row_bytes(dtype, K);
    const int fast = avx2();
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
                gemv_avx2(dtype, w, rb, x + m0 * K, y + m0 * N, mg, N, K, n0, n1, accumulate);
                continue;
            }
#endif
            gemv_portable(dtype, w, rb, x + m0 * K, y + m0 * N, mg, N, K, n0, n1, accumulate);
        }
    }
    (void)fast;
}
