/* quant.h -- weight storage formats of the CPU backend and their kernels (quant.c). */
#ifndef TG_CPU_QUANT_H
#define TG_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* bytes of one group block of a block-format weight: 8 float16 scales, then the 8 rows' 32 features (quant.c) */
#define TG_GROUP_BYTES(dtype) ((dtype) == TG_Q8 ? 16 + 8 * TG_QBLOCK : 16 + 4 * TG_QBLOCK)

/* round to nearest even for |x| < 2^22 without a libm call (the adds are not reassociated: no -ffast-math) */
static inline int32_t tg_round_even(float x) { return (int32_t)((x + 12582912.0f) - 12582912.0f); }

/* the sum of 8 float32 lanes in the fixed pairwise order of tg_avx2_hsum, in plain C */
static inline float tg_lanes8_sum(const float *a) {
    const float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
/* the sum of 8 lanes in one fixed pairwise order ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) */
static inline __attribute__((target("avx2,fma,f16c"), always_inline)) float tg_avx2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* bytes of a (rows, cols) weight in dtype (block formats: whole groups of 8 rows, quant.c) */
size_t tg_cpu_weight_bytes(int dtype, int64_t rows, int64_t cols);
/* Store rows [row0, row0 + n) of a (?, cols) weight at base from float32 (n, cols); returns how many values
 * (float16) or block scales (int8/int4) lie outside the float16 range. */
int64_t tg_store_rows(int dtype, const float *x, void *base, int64_t row0, int64_t n, int64_t cols);
/* out (n, K) float32 = rows [row0, row0 + n) of the stored (?, K) weight w */
void tg_dequant_rows(int dtype, const void *w, int64_t row0, int64_t n, int64_t K, float *out);
/* y (M, N) (+)= x (M, K) @ w^T, w float32 (N, K); threads split the N rows.  Every row of x is summed in the
 * same order whatever M is (a row of a batch is bitwise the row alone); meant for the few rows of decoding
 * (up to TG_CPU_EXACT_ROWS, backend.h), where it reads each weight once for all of them. */
void tg_gemv(const float *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate);
/* the CPU kernels in use: 1 for AVX2 + FMA + F16C (tg_cpu_kernels() == "avx2"), 0 for portable C */
int tg_cpu_avx2(void);

/* ---- products with compact weights (matmul.c) ---- */

/* 32 activations quantised as llama.cpp's q8_0 does (float32 scale): value = d * q.  int8 products take
 * q as int16; int4 products take q as int8 and corr = 8 * sum(q), what the weights' offset of 8 costs */
typedef struct {
    float d;
    int16_t q[32];
} tg_xq8;
typedef struct {
    float d;
    int32_t corr;
    int8_t q[32];
} tg_xq4;
/* scratch bytes tg_matmul needs for x (M, K) in dtype's activation precision */
size_t tg_matmul_scratch_bytes(int dtype, int64_t M, int64_t K);
/* y (M, N) (+)= x (M, K) @ w^T for w stored (N, K) in F16, BF16, Q8 or Q4, any M, with the activation rule of
 * backend.h; every element is bitwise independent of M, of the other rows and of the thread count */
void tg_matmul(int dtype, const void *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate,
               void *scratch);

#endif
