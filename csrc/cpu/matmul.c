/* matmul.c -- the CPU backend's products with compact weights (float16, bfloat16, int8, int4), any M.
 *
 * Activation rule (backend.h): before a product the input rows are put into the weight's own precision,
 *   bfloat16 weights: activations rounded to bfloat16 (nearest even; NaN stays NaN),
 *   float16 weights:  activations rounded to float16 (nearest even), saturating at +-65504,
 *   int8/int4 weights: activations quantised per 32-feature block as llama.cpp's q8_0 does
 *                      (d = max|x| / 127 in float32, q = round-to-even(x * (1/d)) in [-127, 127]),
 * and products accumulate in float32.  The 16-bit formats are then multiplied with widening FMAs, the
 * block formats with integer dot products (AVX2 maddubs: 32 multiply-adds per instruction) whose exact
 * integer sums are scaled by d_w * d_x per block.  A block whose activations are not finite gives NaN.
 *
 * Batch invariance by construction: every output element y[m][n] is computed by one fixed sequence of
 * operations that depends on K alone -- eight float32 lanes, lane l taking the features l, l+8, ...
 * (16-bit formats) or the 4-feature groups l of each block, block after block (block formats), then the
 * same pairwise sum of the lanes; block formats: one float32 sum per element, y = fma(block integer sum,
 * d_w * d_x, y) block after block -- whatever M is, whichever tile the element falls in, and whichever
 * thread computes it (threads split the output columns, never K).  So a row of a batch is bitwise that
 * row alone, for every M: a prefill of several requests, a decode step of many sequences and a single
 * run agree exactly.
 *
 * Tiles: MR input rows x NR weight rows share their loads (each weight vector widened or unpacked once
 * for MR rows, each activation vector loaded once for NR weights); a single input row (decoding) takes
 * 8 weight rows at a time, so eight independent sums keep the FMA units busy while the weights stream.
 * The block formats are stored in groups of 8 rows (quant.c), so their products run across output
 * columns: one vector holds the 8 columns of a group, its integer multiply-adds take 2 (int8) or 4 (int4)
 * features of all 8 rows against the same broadcast activations, and each column's block sum lands in its
 * own lane -- no horizontal sums, and the scale d_w * d_x is applied once per block for 8 columns.
 * Kernels: AVX2 + FMA + F16C, chosen at run time (quant.c's tg_cpu_kernels), and portable C that
 * computes the same values (up to float rounding) on any CPU.
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

#define CHUNK 24          /* weight rows per work item: a multiple of the tile widths 8 and 3 */
#define PAR_MIN 32768     /* below this many weights times rows a product runs on one thread */
#define F16_MAX 65504.0f


/* ---- activations in the weight's precision ---- */

/* 16-bit formats: activation rows padded with zeros to a multiple of 16 features; for bfloat16 each 16
 * features are stored evens first, then odds ([x0 x2 .. x14 x1 x3 .. x15]), the order in which one 32-byte
 * load of 16 bfloat16 weights widens fastest (a shift gives the evens, a mask the odds) */
static inline int64_t padded16(int64_t K) { return (K + 15) / 16 * 16; }
/* rows of prepared activations are 16 floats longer than padded16: with a row length of a
 * multiple of 4 KB (K = 1024, 2048, ...) the rows a tile reads would all share one L1 set */
static inline int64_t stride16(int64_t K) { return padded16(K) + 16; }
static inline int64_t slot16(int bf, int64_t k) { return bf ? (k & ~(int64_t)15) + (k & 1) * 8 + (k & 15) / 2 : k; }

size_t tg_matmul_scratch_bytes(int dtype, int64_t M, int64_t K) {
    if (dtype == TG_F16 || dtype == TG_BF16) return (size_t)M * (size_t)stride16(K) * sizeof(float);
    if (dtype == TG_Q8) return (size_t)M * (size_t)(K / TG_QBLOCK) * sizeof(tg_xq8);
    if (dtype == TG_Q4) return (size_t)M * (size_t)(K / TG_QBLOCK) * sizeof(tg_xq4);
    return 0;
}

static inline float round_bf16(float x) { return tg_bf16_to_float(tg_float_to_bf16(x)); }
static inline float round_f16(float x) {
    x = x > F16_MAX ? F16_MAX : x < -F16_MAX ? -F16_MAX : x; /* NaN passes through */
    return tg_half_to_float(tg_float_to_half(x));
}

/* one block of 32 activations -> d and q (q8_0's rule); returns d (NaN when a value is not finite) */
static float quantize_x(const float *v, int32_t *q) {
    float amax = 0.0f, probe = 0.0f;
    for (int j = 0; j < TG_QBLOCK; j++) {
        amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
        probe += v[j] * 0.0f; /* NaN when any value is not finite */
    }
    const float d = amax / 127.0f + probe, id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < TG_QBLOCK; j++) {
        const int32_t t = d > 0.0f ? tg_round_even(v[j] * id) : 0; /* |v * id| <= 127 + rounding */
        q[j] = t > 127 ? 127 : t < -127 ? -127 : t;
    }
    return d;
}

static void quantize_xblock(int dtype, const float *v, void *out) {
    int32_t q[TG_QBLOCK], sum = 0;
    const float d = quantize_x(v, q);
    if (dtype == TG_Q8) {
        tg_xq8 *o = out;
        o->d = d;
        for (int j = 0; j < TG_QBLOCK; j++) o->q[j] = (int16_t)q[j];
        return;
    }
    tg_xq4 *o = out;
    for (int j = 0; j < TG_QBLOCK; j++) {
        o->q[j] = (int8_t)q[j];
        sum += q[j];
    }
    o->d = d;
    o->corr = 8 * sum;
}

static void prepare_portable(int dtype, const float *x, void *dst, int64_t M, int64_t K) {
    if (dtype == TG_Q8 || dtype == TG_Q4) {
        const int64_t nb = K / TG_QBLOCK;
#pragma omp parallel for schedule(static) if (M * K > PAR_MIN)
        for (int64_t m = 0; m < M; m++)
            for (int64_t b = 0; b < nb; b++)
                quantize_xblock(dtype, x + m * K + b * TG_QBLOCK,
                              dtype == TG_Q8 ? (void *)((tg_xq8 *)dst + m * nb + b) : (void *)((tg_xq4 *)dst + m * nb + b));
        return;
    }
    const int64_t Kp = padded16(K);
#pragma omp parallel for schedule(static) if (M * K > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        float *o = (float *)dst + m * stride16(K);
        const int bf = dtype == TG_BF16;
        for (int64_t k = 0; k < Kp; k++) {
            const float v = k < K ? x[m * K + k] : 0.0f;
            o[slot16(bf, k)] = bf ? round_bf16(v) : round_f16(v);
        }
    }
}

/* ---- portable kernels: the same lanes and order, in plain C ---- */

/* lane l takes, per 16 features, the weights of slot l then slot l + 8 (slot16) */
static float dot16_portable(int dtype, const float *x, const uint16_t *w, int64_t K) {
    const int bf = dtype == TG_BF16;
    float acc[8] = {0};
    for (int64_t j = 0; j < padded16(K); j += 16)
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 8; l++) {
                const int64_t k = bf ? j + 2 * l + h : j + 8 * h + l;
                const float wv = k >= K ? 0.0f : bf ? tg_bf16_to_float(w[k]) : tg_half_to_float(w[k]);
                acc[l] += x[j + 8 * h + l] * wv;
            }
    return tg_lanes8_sum(acc);
}

/* element (m, n) of a block-format product: one float32 sum, fma(block integer sum, d_w * d_x) per block */
static float dotq_portable(int dtype, const void *x, const uint8_t *w, int64_t n, int64_t nb) {
    const size_t gb = TG_GROUP_BYTES(dtype);
    const int c = (int)(n % 8);
    const uint8_t *g = w + (size_t)(n / 8) * (size_t)nb * gb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++, g += gb) {
        uint16_t dh;
        memcpy(&dh, g + 2 * c, 2);
        const uint8_t *data = g + 16;
        int32_t isum = 0;
        float dx;
        if (dtype == TG_Q8) {
            const tg_xq8 *xb = (const tg_xq8 *)x + b;
            for (int j = 0; j < TG_QBLOCK; j++) isum += (int8_t)data[16 * (j / 2) + 2 * c + j % 2] * xb->q[j];
            dx = xb->d;
        } else {
            const tg_xq4 *xb = (const tg_xq4 *)x + b;
            for (int v = 0; v < 4; v++)
                for (int i = 0; i < 4; i++) {
                    const uint8_t byte = data[32 * v + 4 * c + i];
                    isum += (byte & 15) * xb->q[4 * v + i] + (byte >> 4) * xb->q[16 + 4 * v + i];
                }
            isum -= xb->corr;
            dx = xb->d;
        }
        acc = fmaf((float)isum, tg_half_to_float(dh) * dx, acc);
    }
    return acc;
}

static void cols_portable(int dtype, const void *w, const void *xp, float *y, int64_t M, int64_t N, int64_t K,
                          int64_t n0, int64_t n1, int accumulate) {
    const size_t rb = tg_cpu_row_bytes(dtype, K);
    const int64_t nb = K / TG_QBLOCK;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = n0; n < n1; n++) {
            const char *row = (const char *)w + (size_t)n * rb; /* 16-bit formats: row by row */
            const float s = dtype == TG_Q8   ? dotq_portable(dtype, (const tg_xq8 *)xp + m * nb, w, n, nb)
                            : dtype == TG_Q4 ? dotq_portable(dtype, (const tg_xq4 *)xp + m * nb, w, n, nb)
                                             : dot16_portable(dtype, (const float *)xp + m * stride16(K), (const uint16_t *)row, K);
            y[m * N + n] = accumulate ? y[m * N + n] + s : s;
        }
}

/* ---- AVX2 + FMA + F16C kernels ---- */
#ifdef TG_X86
#define AVX2_INLINE static inline __attribute__((target("avx2,fma,f16c"), always_inline))
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

static AVX2_FN void prepare_avx2(int dtype, const float *x, void *dst, int64_t M, int64_t K) {
    if (dtype == TG_Q8 || dtype == TG_Q4) { /* as quantize_xblock, 32 values at a time */
        const int64_t nb = K / TG_QBLOCK;
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
#pragma omp parallel for schedule(static) if (M * K > PAR_MIN)
        for (int64_t m = 0; m < M; m++)
            for (int64_t b = 0; b < nb; b++) {
                const float *v = x + m * K + b * TG_QBLOCK;
                __m256 xv[4], amax = _mm256_setzero_ps(), probe = _mm256_setzero_ps();
                for (int j = 0; j < 4; j++) {
                    xv[j] = _mm256_loadu_ps(v + 8 * j);
                    amax = _mm256_max_ps(_mm256_and_ps(xv[j], absmask), amax); /* a NaN is dropped here ... */
                    probe = _mm256_add_ps(probe, _mm256_mul_ps(xv[j], _mm256_setzero_ps())); /* ... and kept here */
                }
                __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
                h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                h = _mm_max_ss(h, _mm_movehdup_ps(h));
                const float d = _mm_cvtss_f32(h) / 127.0f + tg_avx2_hsum(probe), id = d > 0.0f ? 1.0f / d : 0.0f;
                const __m256 idv = _mm256_set1_ps(id), lim = _mm256_set1_ps(127.0f);
                __m256i qi[4];
                for (int j = 0; j < 4; j++) {
                    __m256 t = _mm256_round_ps(_mm256_mul_ps(xv[j], idv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    t = _mm256_max_ps(_mm256_min_ps(t, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
                    qi[j] = _mm256_cvtps_epi32(t);
                }
                if (!(d > 0.0f)) qi[0] = qi[1] = qi[2] = qi[3] = _mm256_setzero_si256();
                if (dtype == TG_Q8) { /* 32 int32 -> 32 int16 in order (packs work per 128-bit lane) */
                    tg_xq8 *o = (tg_xq8 *)dst + m * nb + b;
                    for (int j = 0; j < 2; j++) {
                        const __m256i p16 = _mm256_packs_epi32(qi[2 * j], qi[2 * j + 1]);
                        _mm256_storeu_si256((__m256i *)(o->q + 16 * j), _mm256_permute4x64_epi64(p16, 0xd8));
                    }
                    o->d = d;
                    continue;
                }
                tg_xq4 *o = (tg_xq4 *)dst + m * nb + b; /* 32 int32 -> 32 int8 in order, and their sum */
                const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
                __m256i p8 = _mm256_packs_epi16(p16a, p16b);
                p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256((__m256i *)o->q, p8);
                const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
                __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
                s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
                s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
                o->d = d;
                o->corr = 8 * _mm_cvtsi128_si32(s);
            }
        return;
    }
    const int64_t Kp = padded16(K), K16 = K / 16 * 16;
    const int bf = dtype == TG_BF16;
#pragma omp parallel for schedule(static) if (M * K > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        float *o = (float *)dst + m * stride16(K);
        for (int64_t k = 0; k < K16; k += 16) {
            __m256 v[2] = {_mm256_loadu_ps(xr + k), _mm256_loadu_ps(xr + k + 8)};
            for (int h = 0; h < 2; h++) {
                if (bf) { /* nearest even on the upper 16 bits; NaN made quiet so it cannot round to inf */
                    __m256i b = _mm256_castps_si256(v[h]);
                    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v[h], v[h], _CMP_UNORD_Q));
                    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
                    __m256i r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd);
                    r = _mm256_blendv_epi8(r, _mm256_or_si256(b, _mm256_set1_epi32(0x400000)), nan);
                    v[h] = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)));
                } else { /* min/max keep a NaN in their second operand */
                    v[h] = _mm256_max_ps(_mm256_set1_ps(-F16_MAX), _mm256_min_ps(_mm256_set1_ps(F16_MAX), v[h]));
                    v[h] = _mm256_cvtph_ps(_mm256_cvtps_ph(v[h], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                }
            }
            if (bf) { /* evens, then odds */
                const __m256 a = _mm256_shuffle_ps(v[0], v[1], 0x88), b = _mm256_shuffle_ps(v[0], v[1], 0xdd);
                v[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(a), 0xd8));
                v[1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(b), 0xd8));
            }
            _mm256_storeu_ps(o + k, v[0]);
            _mm256_storeu_ps(o + k + 8, v[1]);
        }
        for (int64_t k = K16; k < Kp; k++) {
            const float v = k < K ? xr[k] : 0.0f;
            o[slot16(bf, k)] = bf ? round_bf16(v) : round_f16(v);
        }
    }
}

/* 8 of 16 weights at feature k of a 16-bit row widened to float32: half 0 gets slots 0-7, half 1 slots 8-15
 * (slot16: bfloat16 evens, odds: a shift or a mask of the same 32 bytes) */
AVX2_INLINE __m256 widen_half(const int bf, const uint16_t *row, int64_t k, const int half) {
    const uint16_t *p = row + k;
    if (!bf) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8 * half)));
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return _mm256_castsi256_ps(half ? _mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)) : _mm256_slli_epi32(v, 16));
}

/* The sums of MR rows of x (stride xs, zero-padded, slot16 order) with NR rows of w (stride K) over features
 * [k0, k1): the 8-lane accumulators come from state (rows ss apart; zeros when k0 = 0) and go back to it.
 * Lane l adds slot l, then slot l + 8, of every 16 features; where the sum is cut into feature blocks does not
 * change a single operation, so blocking for the cache keeps every element's value. */
AVX2_INLINE void tile16(const int bf, const float *x, int64_t xs, const uint16_t *w, int64_t K, int64_t k0, int64_t k1,
                        __m256 *state, int64_t ss, const int MR, const int NR) {
    __m256 acc[4][8];
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) acc[m][n] = k0 ? state[m * ss + n] : _mm256_setzero_ps();
    const int64_t K16 = K / 16 * 16, kend = k1 < K16 ? k1 : K16;
    for (int64_t k = k0; k < kend; k += 16)
        for (int half = 0; half < 2; half++) {
            __m256 wv[8];
            for (int n = 0; n < NR; n++) wv[n] = widen_half(bf, w + n * K, k, half);
            for (int m = 0; m < MR; m++) {
                const __m256 xv = _mm256_loadu_ps(x + m * xs + k + 8 * half);
                for (int n = 0; n < NR; n++) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
            }
        }
    if (K16 < K && k1 > K16) { /* the rows' tails, read into zeros */
        uint16_t tail[8][16] = {{0}};
        for (int n = 0; n < NR; n++) memcpy(tail[n], w + n * K + K16, (size_t)(K - K16) * 2);
        for (int half = 0; half < 2; half++)
            for (int m = 0; m < MR; m++) {
                const __m256 xv = _mm256_loadu_ps(x + m * xs + K16 + 8 * half);
                for (int n = 0; n < NR; n++) acc[m][n] = _mm256_fmadd_ps(xv, widen_half(bf, tail[n], 0, half), acc[m][n]);
            }
    }
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) state[m * ss + n] = acc[m][n];
}

/* rows [m0, m0 + MR) x columns [n0, n1) of a 16-bit product: NR columns at a time (single columns at the
 * end), features in blocks of KBLOCK when MR rows share the weights, so the block of x stays in L1 while
 * every column of the chunk uses it; then each element's 8 lanes are summed (tg_avx2_hsum) into y */
#define KBLOCK 256
AVX2_INLINE void strip16(const int bf, const float *xp, const uint16_t *w, float *y, int64_t N, int64_t K,
                         int64_t m0, int64_t n0, int64_t n1, const int MR, const int NR, int accumulate) {
    const int64_t Kp = padded16(K), xs = stride16(K), kb = MR >= 3 ? KBLOCK : Kp;
    __m256 state[4 * CHUNK];
    const float *x = xp + m0 * xs;
    for (int64_t k0 = 0; k0 < Kp; k0 += kb) {
        const int64_t k1 = k0 + kb < Kp ? k0 + kb : Kp;
        int64_t n = n0;
        for (; n + NR <= n1; n += NR) tile16(bf, x, xs, w + n * K, K, k0, k1, state + (n - n0), CHUNK, MR, NR);
        for (; n < n1; n++) tile16(bf, x, xs, w + n * K, K, k0, k1, state + (n - n0), CHUNK, MR, 1);
    }
    for (int m = 0; m < MR; m++)
        for (int64_t n = n0; n < n1; n++) {
            float *o = y + (m0 + m) * N + n;
            const float v = tg_avx2_hsum(state[m * CHUNK + (n - n0)]);
            *o = accumulate ? *o + v : v;
        }
}

/* MR input rows x NG groups of 8 weight rows (columns n0 .. n0 + 8 NG), int8 or int4, over all blocks;
 * each column is one lane of acc[m][g]: acc = fma(integer block sum, d_w * d_x, acc), block after block */
AVX2_INLINE void tile_groups(const int q4, const void *x, int64_t nb, const uint8_t *w, size_t gstride, float *y,
                             int64_t ldy, int64_t n0, int64_t ncols, const int MR, const int NG, int accumulate) {
    const size_t gb = q4 ? TG_GROUP_BYTES(TG_Q4) : TG_GROUP_BYTES(TG_Q8);
    __m256 acc[4][4];
    for (int m = 0; m < MR; m++)
        for (int g = 0; g < NG; g++) acc[m][g] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[4];
        for (int g = 0; g < NG; g++) blk[g] = w + (size_t)g * gstride + (size_t)b * gb;
        __m256i isum[4][4];
        for (int m = 0; m < MR; m++)
            for (int g = 0; g < NG; g++) isum[m][g] = _mm256_setzero_si256();
        if (q4) { /* 4 features of 8 rows per byte vector (low nibbles), 4 more in the high nibbles */
            for (int v = 0; v < 4; v++) {
                __m256i lo[4], hi[4];
                for (int g = 0; g < NG; g++) {
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(blk[g] + 16 + 32 * v));
                    lo[g] = _mm256_and_si256(wv, low);
                    hi[g] = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low);
                }
                for (int m = 0; m < MR; m++) {
                    const int8_t *xq = ((const tg_xq4 *)x + m * nb + b)->q;
                    int32_t a4, b4;
                    memcpy(&a4, xq + 4 * v, 4);
                    memcpy(&b4, xq + 16 + 4 * v, 4);
                    const __m256i xa = _mm256_set1_epi32(a4), xb = _mm256_set1_epi32(b4);
                    /* q in 0..15 times |x| <= 127: a pair sums to <= 3810, eight of them fit int16 */
                    for (int g = 0; g < NG; g++)
                        isum[m][g] = _mm256_add_epi16(isum[m][g], _mm256_add_epi16(_mm256_maddubs_epi16(lo[g], xa),
                                                                                    _mm256_maddubs_epi16(hi[g], xb)));
                }
            }
            for (int m = 0; m < MR; m++) {
                const __m256i corr = _mm256_set1_epi32(((const tg_xq4 *)x + m * nb + b)->corr);
                for (int g = 0; g < NG; g++) isum[m][g] = _mm256_sub_epi32(_mm256_madd_epi16(isum[m][g], ones), corr);
            }
        } else { /* 2 features of 8 rows per 16 bytes, widened to int16 */
            for (int s = 0; s < TG_QBLOCK / 2; s += 2) {
                __m256i w0[4], w1[4];
                for (int g = 0; g < NG; g++) {
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(blk[g] + 16 + 16 * s));
                    w0[g] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
                    w1[g] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
                }
                for (int m = 0; m < MR; m++) {
                    const int16_t *xq = ((const tg_xq8 *)x + m * nb + b)->q;
                    int32_t a2, b2;
                    memcpy(&a2, xq + 2 * s, 4);
                    memcpy(&b2, xq + 2 * s + 2, 4);
                    const __m256i xa = _mm256_set1_epi32(a2), xb = _mm256_set1_epi32(b2);
                    for (int g = 0; g < NG; g++)
                        isum[m][g] = _mm256_add_epi32(isum[m][g], _mm256_add_epi32(_mm256_madd_epi16(w0[g], xa),
                                                                                    _mm256_madd_epi16(w1[g], xb)));
                }
            }
        }
        __m256 dw[4];
        for (int g = 0; g < NG; g++) dw[g] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk[g]));
        for (int m = 0; m < MR; m++) {
            const __m256 dx = _mm256_set1_ps(q4 ? ((const tg_xq4 *)x + m * nb + b)->d : ((const tg_xq8 *)x + m * nb + b)->d);
            for (int g = 0; g < NG; g++)
                acc[m][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m][g]), _mm256_mul_ps(dw[g], dx), acc[m][g]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int g = 0; g < NG; g++) {
            float out[8];
            _mm256_storeu_ps(out, acc[m][g]);
            const int64_t c0 = 8 * g, cn = ncols - c0 < 8 ? ncols - c0 : 8;
            float *o = y + m * ldy + n0 + c0;
            for (int64_t c = 0; c < cn; c++) o[c] = accumulate ? o[c] + out[c] : out[c];
        }
}

/* columns [n0, n1) (n0 a multiple of 8) of a block-format product, all M rows */
AVX2_INLINE void cols_groups(const int q4, const void *w, const void *xp, float *y, int64_t M, int64_t N, int64_t K,
                             int64_t n0, int64_t n1, int accumulate) {
    const int64_t nb = K / TG_QBLOCK;
    const size_t gstride = (size_t)nb * (q4 ? TG_GROUP_BYTES(TG_Q4) : TG_GROUP_BYTES(TG_Q8)), xs = q4 ? sizeof(tg_xq4) : sizeof(tg_xq8);
    const uint8_t *wg = (const uint8_t *)w + (size_t)(n0 / 8) * gstride;
#define GROUPS(MR, NG) tile_groups(q4, (const char *)xp + (size_t)(m0 * nb) * xs, nb, wg + (size_t)((n - n0) / 8) * gstride, \
                                   gstride, y + m0 * N, N, n, n1 - n, MR, NG, accumulate)
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4)
        for (int64_t n = n0; n < n1; n += 8) GROUPS(4, 1);
    for (; m0 < M; m0++) /* decoding: one row, up to 3 groups (24 weight rows) at a time */
        for (int64_t n = n0; n < n1; n += 24) {
            if (n1 - n > 16) GROUPS(1, 3);
            else if (n1 - n > 8) GROUPS(1, 2);
            else GROUPS(1, 1);
        }
#undef GROUPS
}

AVX2_INLINE void cols16(const int bf, const void *w, const void *xp, float *y, int64_t M, int64_t N, int64_t K,
                        int64_t n0, int64_t n1, int accumulate) {
    const uint16_t *wh = w;
    const float *x = xp;
    int64_t m0 = 0;
    if (bf) /* 3 x 3 tiles: 9 sums, the weights and the widening mask fit in the 16 registers */
        for (; m0 + 3 <= M; m0 += 3) strip16(1, x, wh, y, N, K, m0, n0, n1, 3, 3, accumulate);
    else /* 4 x 3 tiles: 12 sums */
        for (; m0 + 4 <= M; m0 += 4) strip16(0, x, wh, y, N, K, m0, n0, n1, 4, 3, accumulate);
    switch (M - m0) {
    case 0: break;
    case 1: strip16(bf, x, wh, y, N, K, m0, n0, n1, 1, 8, accumulate); break; /* decoding: 8 weight rows at once */
    case 2: strip16(bf, x, wh, y, N, K, m0, n0, n1, 2, 4, accumulate); break;
    default: strip16(bf, x, wh, y, N, K, m0, n0, n1, 3, 4, accumulate); break;
    }
}

static AVX2_FN void cols_avx2(int dtype, const void *w, const void *xp, float *y, int64_t M, int64_t N, int64_t K,
                              int64_t n0, int64_t n1, int accumulate) {
    switch (dtype) { /* one specialised copy per format */
    case TG_F16: cols16(0, w, xp, y, M, N, K, n0, n1, accumulate); break;
    case TG_BF16: cols16(1, w, xp, y, M, N, K, n0, n1, accumulate); break;
    case TG_Q8: cols_groups(0, w, xp, y, M, N, K, n0, n1, accumulate); break;
    default: cols_groups(1, w, xp, y, M, N, K, n0, n1, accumulate); break;
    }
}
#endif

/* ---- entry point ---- */

void tg_matmul(int dtype, const void *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate,
               void *scratch) {
    const int fast = tg_cpu_avx2();
#ifdef TG_X86
    if (fast) prepare_avx2(dtype, x, scratch, M, K);
    else
#endif
        prepare_portable(dtype, x, scratch, M, K);
    const int64_t items = (N + CHUNK - 1) / CHUNK;
    /* dynamic: a thread that loses its core to another process does not hold up the product (each output
     * is computed by one thread in one fixed order, so the schedule never changes a value) */
#pragma omp parallel for schedule(dynamic, 1) if (M * N * K > PAR_MIN)
    for (int64_t it = 0; it < items; it++) {
        const int64_t n0 = it * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
#ifdef TG_X86
        if (fast) {
            cols_avx2(dtype, w, scratch, y, M, N, K, n0, n1, accumulate);
            continue;
        }
#endif
        cols_portable(dtype, w, scratch, y, M, N, K, n0, n1, accumulate);
    }
    (void)fast;
}
