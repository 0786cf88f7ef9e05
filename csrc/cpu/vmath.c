/* vmath.c -- the CPU backend's exponentials on whole rows: softmax rows and the sigmoid-shaped activations.
 *
 * e^x is computed by one rule on every path: 0 below -87.3, x clamped to 88 (2^n stays finite; NaN passes), n = nearest integer of
 * x * log2(e), r = x - n ln2 in two steps (Cody-Waite), e^r = 1 + r + r^2 P(r) with Cephes' degree-5
 * polynomial, times 2^n built in the exponent bits -- within 2 ulp of expf.  The AVX2 kernel does these
 * operations on 8 lanes, the portable code on one value with fmaf, so both give the same bits.
 * The activations are written as x * sigmoid(a(x)) = x / (1 + e^(-a(x))):
 *   SiLU            a = x
 *   QuickGELU       a = 1.702 x
 *   tanh GELU       a = 2 sqrt(2/pi) (x + 0.044715 x^3)    (0.5 x (1 + tanh(u)) = x sigmoid(2u))
 * Sums (softmax) use 8 float32 lanes, element j in lane j % 8, then the pairwise order of tg_avx2_hsum.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "quant.h"
#include "vmath.h"

#if defined(__x86_64__) || defined(__i386__)
#define TG_X86 1
#include <immintrin.h>
#endif

#define EXP_HI 88.0f
#define EXP_LO -87.3365447504f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f
#define GELU_A 1.5957691216057308f /* 2 sqrt(2 / pi) */
#define GELU_B 0.044715f
#define QUICK_A 1.702f

static inline float exp1(float x) {
    if (x != x) return x;
    if (x < EXP_LO) return 0.0f;
    x = x > EXP_HI ? EXP_HI : x;
    const float n = nearbyintf(x * LOG2E);
    float r = fmaf(n, -LN2_HI, x);
    r = fmaf(n, -LN2_LO, r);
    float p = fmaf(P0, r, P1);
    p = fmaf(p, r, P2);
    p = fmaf(p, r, P3);
    p = fmaf(p, r, P4);
    p = fmaf(p, r, P5);
    const float e = fmaf(p, r * r, r + 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return e * scale;
}

static inline float minus_arg(float x, int act) { /* -a(x) */
    switch (act) {
    case TG_ACT_QUICK_GELU: return -QUICK_A * x;
    case TG_ACT_GELU_TANH: return -GELU_A * (x + GELU_B * x * x * x);
    default: return -x;
    }
}

static inline float sigmoid_act1(float x, int act) { return x / (1.0f + exp1(minus_arg(x, act))); }

#ifdef TG_X86
#define AVX2_FN static inline __attribute__((target("avx2,fma,f16c"), always_inline))

AVX2_FN __m256 exp8(__m256 x) {
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ); /* -> 0 at the end */
    /* min/max return their second operand when one is NaN: NaN stays NaN */
    x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(P0), r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    const __m256 e = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)));
}

AVX2_FN __m256 sigmoid_act8(__m256 x, const int act) {
    __m256 a;
    if (act == TG_ACT_QUICK_GELU) a = _mm256_mul_ps(_mm256_set1_ps(-QUICK_A), x);
    else if (act == TG_ACT_GELU_TANH) {
        const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_B), x), x), x);
        a = _mm256_mul_ps(_mm256_set1_ps(-GELU_A), _mm256_add_ps(x, x3));
    } else a = _mm256_sub_ps(_mm256_setzero_ps(), x);
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(a)));
}

static __attribute__((target("avx2,fma,f16c"))) void exp_shift_avx2(float *x, int64_t n, float shift) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(shift))));
    for (; i < n; i++) x[i] = exp1(x[i] - shift);
}

static __attribute__((target("avx2,fma,f16c"))) void act_avx2(float *x, int64_t n, int act) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, sigmoid_act8(_mm256_loadu_ps(x + i), act));
    for (; i < n; i++) x[i] = sigmoid_act1(x[i], act);
}

static __attribute__((target("avx2,fma,f16c"))) void silu_mul_avx2(const float *g, const float *u, float *o, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(sigmoid_act8(_mm256_loadu_ps(g + i), TG_ACT_SILU), _mm256_loadu_ps(u + i)));
    for (; i < n; i++) o[i] = sigmoid_act1(g[i], TG_ACT_SILU) * u[i];
}
#endif

void tg_exp_shift(float *x, int64_t n, float shift) {
#ifdef TG_X86
    if (tg_cpu_avx2()) {
        exp_shift_avx2(x, n, shift);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) x[i] = exp1(x[i] - shift);
}

int tg_sigmoid_act(float *x, int64_t n, int act) {
    if (act != TG_ACT_SILU && act != TG_ACT_QUICK_GELU && act != TG_ACT_GELU_TANH) return 0;
#ifdef TG_X86
    if (tg_cpu_avx2()) {
        act_avx2(x, n, act);
        return 1;
    }
#endif
    for (int64_t i = 0; i < n; i++) x[i] = sigmoid_act1(x[i], act);
    return 1;
}

void tg_silu_mul_row(const float *g, const float *u, float *o, int64_t n) {
#ifdef TG_X86
    if (tg_cpu_avx2()) {
        silu_mul_avx2(g, u, o, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) o[i] = sigmoid_act1(g[i], TG_ACT_SILU) * u[i];
}

float tg_lanes_sum(const float *x, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += x[i];
    return tg_lanes8_sum(acc);
}
